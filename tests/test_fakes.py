"""The shared test doubles stay faithful to what they stand in for, and stay test tooling."""

from __future__ import annotations

import inspect
import re

from harness.config import repo_root
from harness.models.llm import LanguageModel
from tests.fakes import FakeLLM


def _public(cls: type) -> dict[str, inspect.Signature | None]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in ("load",):  # load: how a real model is built, not used by paradigms
            continue
        out[name] = inspect.signature(member) if inspect.isfunction(member) else None
    return out


def test_fake_llm_has_the_llm_backbone_interface():
    """Every public method of LanguageModel exists on FakeLLM with the same parameters, so a paradigm
    tested against the fake calls what the real backbone offers (and the fake follows when it changes)."""
    real, fake = _public(LanguageModel), _public(FakeLLM)
    missing = sorted(set(real) - set(fake))
    assert not missing, f"FakeLLM lacks {missing}"
    for name, sig in real.items():
        if sig is not None:
            assert [(p.name, p.kind) for p in sig.parameters.values()] == [
                (p.name, p.kind) for p in fake[name].parameters.values()], name
    for attr in ("fingerprint", "name", "engine"):  # instance attributes every caller reads
        assert hasattr(FakeLLM(), attr)


def test_no_product_code_imports_the_test_tooling():
    """Fakes and test helpers cannot be reached from the product (no config can select them)."""
    root = repo_root()
    pattern = re.compile(r"^\s*(from|import)\s+tests(\.|\s|$)", re.M)
    offenders = [str(p.relative_to(root)) for d in ("harness", "paradigms", "tasks") for p in (root / d).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert not offenders, offenders
