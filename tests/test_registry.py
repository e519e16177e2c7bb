"""The paradigm registry checks each variant's contract when it registers (at import), naming the
class and what is wrong, so a malformed variant never reaches a run."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Sequence

import pytest
from pydantic import BaseModel

from harness import registry
from harness.config import Strict
from harness.interface import BACKBONE_NAMES, Answer, Paradigm, Request
from harness.registry import FAMILIES, RegistrationError, register_paradigm

#: The backbones each shipped variant reads. They enter every cache key (``{k: fps[k] for k in uses}``),
#: so a change here invalidates that variant's cached answers: change it only on purpose.
SHIPPED_USES = {
    "guided_decoding/magic": ("llm", "scorer"),
    "guided_decoding/zerocap": ("llm", "scorer"),
    "text_conversion/pica": ("llm", "tools"),
    "text_conversion/promptcap": ("llm", "tools", "text_embedder"),
    "text_conversion/scienceqa": ("llm", "tools"),
    "tool_agent/mm_react": ("llm", "tools", "scorer"),
    "tool_agent/visual_chatgpt": ("llm", "tools", "scorer"),
    "trained_adapter/blip2": ("llm", "vision_encoder"),
    "trained_adapter/blip2_pretrained": (),
    "trained_adapter/flamingo": ("llm", "vision_encoder"),
    "trained_adapter/flamingo_pretrained": (),
    "trained_adapter/frozen": ("llm", "vision_encoder"),
    "trained_adapter/frozen_fixed_encoder": ("llm", "vision_encoder"),
    "trained_adapter/palme": ("llm", "vision_encoder"),
    "trained_adapter/served_vlm": (),
    "trained_adapter/vlm_pretrained": (),
}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of the filled table, so variants registered by a test leave the real one as it was."""
    registry.paradigms()  # the built-ins register into the real table first
    table = dict(registry._PARADIGMS)
    monkeypatch.setattr(registry, "_PARADIGMS", table)
    return table


class _Opts(Strict):
    size: int = 1


def _variant(name: str = "ok", **attrs: Any) -> type:
    """A paradigm class built from ``attrs`` on top of a valid one (``attrs`` value None deletes it)."""
    body: dict[str, Any] = {"family": "text_conversion", "variant": name, "Options": _Opts, "uses": ("llm",),
                            "answer_batch": lambda self, requests: [Answer(text="") for _ in requests]}
    body.update(attrs)
    body = {k: v for k, v in body.items() if v is not None}
    return type(f"Variant_{name}", (Paradigm,), body)


def _problem(cls: type) -> str:
    with pytest.raises(RegistrationError) as info:
        register_paradigm(cls)
    msg = str(info.value)
    assert cls.__qualname__ in msg, msg  # the class is named
    return msg


def test_shipped_variants_pass_and_read_what_they_always_read() -> None:
    table = registry.paradigms()
    assert {name: cls.uses for name, cls in table.items()} == SHIPPED_USES
    for name, cls in table.items():
        assert registry.contract_problems(cls) == [], name


def test_backbone_names_are_the_fingerprinted_backbones() -> None:
    from harness.backbones import Backbones
    from harness.config import ModelsConfig

    assert set(Backbones(ModelsConfig()).fingerprints()) == set(BACKBONE_NAMES)


def test_a_valid_variant_registers_and_is_found(scratch_registry: dict[str, Any]) -> None:
    cls = register_paradigm(_variant("fine"))
    assert registry.get_paradigm("text_conversion/fine") is cls
    assert register_paradigm(cls) is cls  # importing a module twice is not an error


def test_missing_options_is_refused(scratch_registry: dict[str, Any]) -> None:
    assert "declares no Options" in _problem(_variant(Options=None))


def test_options_that_accept_unknown_keys_are_refused(scratch_registry: dict[str, Any]) -> None:
    class Lax(BaseModel):
        size: int = 1

    assert "accept unknown keys" in _problem(_variant(Options=Lax)) and "Lax" in _problem(_variant(Options=Lax))

    class Nested(BaseModel):  # strict outside, lax inside: a typo in train.{...} would pass
        steps: int = 1

    class Outer(Strict):
        train: Nested = Nested()
        more: tuple[Nested, ...] | None = None

    msg = _problem(_variant(Options=Outer))
    assert "Nested" in msg and "Outer" not in msg.split("accept unknown keys")[1]
    assert "not a pydantic model" in _problem(_variant(Options=dict))


def test_unknown_family_is_refused(scratch_registry: dict[str, Any]) -> None:
    msg = _problem(_variant(family="vision_only"))
    assert "'vision_only'" in msg and all(f in msg for f in FAMILIES)


def test_uses_must_be_declared_by_the_variant_itself(scratch_registry: dict[str, Any]) -> None:
    msg = _problem(_variant(uses=None))
    assert "does not declare uses" in msg and all(b in msg for b in BACKBONE_NAMES)
    # inheriting another class's ``uses`` is not declaring: a subclass may read something else
    base = _variant("base")
    child = type("Child", (base,), {"variant": "child"})
    assert "does not declare uses" in _problem(child)
    assert Paradigm.__dict__.get("uses") is None  # no default the base class would hand out


def test_uses_names_known_backbones_only(scratch_registry: dict[str, Any]) -> None:
    msg = _problem(_variant(uses=("llm", "clip")))
    assert "['clip']" in msg and "vision_encoder" in msg
    assert "tuple of backbone names" in _problem(_variant(uses=["llm"]))
    assert "twice" in _problem(_variant(uses=("llm", "llm")))
    register_paradigm(_variant("blind_to_all", uses=()))  # a variant with its own models reads none


def test_variant_name_and_answer_batch_are_required(scratch_registry: dict[str, Any]) -> None:
    assert "variant must be" in _problem(_variant(variant=None))
    assert "variant must be" in _problem(_variant(variant="a/b"))
    assert "does not implement answer_batch" in _problem(_variant(answer_batch=None))


def test_not_a_paradigm_and_twice_registered_names_are_refused(scratch_registry: dict[str, Any]) -> None:
    with pytest.raises(RegistrationError, match="not a subclass of harness.interface.Paradigm"):
        register_paradigm(type("Loose", (), {"family": "text_conversion", "variant": "loose"}))
    register_paradigm(_variant("taken"))
    with pytest.raises(RegistrationError, match="registered twice"):
        register_paradigm(_variant("taken"))


def test_a_malformed_variant_fails_when_its_module_is_imported(tmp_path, monkeypatch, scratch_registry) -> None:
    (tmp_path / "broken_variant.py").write_text(
        "from harness.interface import Answer, Paradigm\n"
        "from harness.registry import register_paradigm\n\n\n"
        "@register_paradigm\n"
        "class Broken(Paradigm):\n"
        "    family = 'text_conversion'\n"
        "    variant = 'broken'\n"
        "    uses = ('llm',)\n\n"
        "    def answer_batch(self, requests):\n"
        "        return [Answer(text='') for _ in requests]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_variant", raising=False)
    with pytest.raises(RegistrationError, match=r"broken_variant\.Broken .*declares no Options"):
        importlib.import_module("broken_variant")
    assert "text_conversion/broken" not in scratch_registry


def test_all_problems_are_reported_at_once(scratch_registry: dict[str, Any]) -> None:
    class Many(Paradigm):
        family = "poetry"

        def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
            return []

    msg = _problem(Many)
    for part in ("family 'poetry'", "variant must be", "declares no Options", "does not declare uses"):
        assert part in msg

