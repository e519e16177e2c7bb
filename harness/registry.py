"""Name -> implementation table for paradigm variants, filled at import time.

Adding a paradigm variant is one module with a class decorated by :func:`register_paradigm`
(imported by its family's package, ``paradigms/<family>/__init__.py``, or, outside the checkout,
named in ``MMBENCH_PARADIGM_MODULES``); adding a task is one YAML file (``tasks/spec.py``).
:func:`register_paradigm` checks the variant's contract when its module is imported, so a
malformed variant fails at import with its class named, never mid-run.
See docs/architecture.md, "Adding things".
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel

from harness.config import ConfigError
from harness.interface import BACKBONE_NAMES, Paradigm

P = TypeVar("P", bound="type[Paradigm]")

_PARADIGMS: dict[str, "type[Paradigm]"] = {}

#: The paradigm families, in display order. Each is the package ``paradigms/<family>``, which
#: ``paradigms/__init__.py`` imports (registering its variants); the CLI lists them from here.
FAMILIES: tuple[str, ...] = ("tool_agent", "text_conversion", "guided_decoding", "trained_adapter")
#: Environment variable naming modules (comma-separated, importable) whose variants register too.
MODULES_ENV = "MMBENCH_PARADIGM_MODULES"


class RegistrationError(TypeError):
    """A paradigm class does not meet the contract of :class:`~harness.interface.Paradigm`."""


def register_paradigm(cls: P) -> P:
    """Class decorator: check ``cls`` against the paradigm contract and make ``family/variant``
    available to configs and the CLI. Raises :class:`RegistrationError` naming the class."""
    problems = contract_problems(cls)
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
    if problems:
        raise RegistrationError(f"paradigm class {where} cannot be registered: " + "; ".join(problems))
    key = f"{cls.family}/{cls.variant}"
    if key in _PARADIGMS and _PARADIGMS[key] is not cls:
        other = _PARADIGMS[key]
        raise RegistrationError(f"paradigm {key!r} registered twice: by {other.__module__}.{other.__qualname__} "
                                f"and by {where}")
    _PARADIGMS[key] = cls
    return cls


def contract_problems(cls: Any) -> list[str]:
    """Everything wrong with ``cls`` as a paradigm variant (empty when it may register)."""
    if not (isinstance(cls, type) and issubclass(cls, Paradigm)):
        return ["it is not a subclass of harness.interface.Paradigm"]
    out: list[str] = []
    family = getattr(cls, "family", None)
    if family not in FAMILIES:
        out.append(f"family {family!r} is not one of {', '.join(FAMILIES)} (harness.registry.FAMILIES)")
    variant = getattr(cls, "variant", None)
    if not isinstance(variant, str) or not variant or "/" in variant or variant != variant.strip():
        out.append(f"variant must be a non-empty name without '/' (got {variant!r})")
    if "answer_batch" in getattr(cls, "__abstractmethods__", ()):
        out.append("it does not implement answer_batch(requests) -> list[Answer]")
    elif inspect.isabstract(cls):
        out.append(f"it leaves abstract methods unimplemented: {', '.join(sorted(cls.__abstractmethods__))}")
    options_problems = _options_problems(getattr(cls, "Options", None))
    out += options_problems
    out += _uses_problems(cls)
    if not options_problems:
        out += _speed_only_problems(cls)
    return out


def _speed_only_problems(cls: type[Paradigm]) -> list[str]:
    """``speed_only`` names leave the cache key: a misspelt one would silently keep its option in."""
    declared = cls.speed_only
    if not isinstance(declared, frozenset):
        return [f"speed_only must be a frozenset of option names, got {declared!r}"]
    unknown = sorted(declared - set(cls.Options.model_fields))
    if unknown:
        return [f"speed_only names {unknown}, which are not options of {cls.Options.__name__}; "
                f"options: {', '.join(cls.Options.model_fields)}"]
    return []


def _options_problems(options: Any) -> list[str]:
    if options is None:
        return ["it declares no Options (a harness.config.Strict subclass; an empty one if it has no settings)"]
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return [f"Options {options!r} is not a pydantic model (subclass harness.config.Strict)"]
    lax = [m.__qualname__ for m in _models_in(options) if m.model_config.get("extra") != "forbid"]
    if lax:
        return [f"Options accept unknown keys, so a typo'd option would be ignored: {', '.join(lax)} "
                "(subclass harness.config.Strict, or set model_config extra='forbid')"]
    return []


def _models_in(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every pydantic model reachable through its fields' annotations."""
    seen: list[type[BaseModel]] = []
    todo: list[Any] = [model]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t in seen:
                continue
            seen.append(t)
            todo += [f.annotation for f in t.model_fields.values()]
        elif get_origin(t) is not None:  # X | None, tuple[X, ...], Annotated[X, ...]
            todo += list(get_args(t))
    return seen


def _uses_problems(cls: type[Paradigm]) -> list[str]:
    if "uses" not in vars(cls):
        return [f"it does not declare uses in its own class body (the shared backbones it reads, any of "
                f"{', '.join(BACKBONE_NAMES)}; () for none)"]
    uses = cls.uses
    if not isinstance(uses, tuple) or not all(isinstance(u, str) for u in uses):
        return [f"uses must be a tuple of backbone names, got {uses!r}"]
    unknown = [u for u in uses if u not in BACKBONE_NAMES]
    if unknown:
        return [f"uses names unknown backbone(s) {unknown}; valid: {', '.join(BACKBONE_NAMES)}"]
    if len(set(uses)) != len(uses):
        return [f"uses lists a backbone twice: {uses!r}"]
    return []


def paradigms() -> dict[str, "type[Paradigm]"]:
    """All registered paradigm variants: the built-in ones, then those of the modules named in
    ``MMBENCH_PARADIGM_MODULES`` (imported on first call; importing registers)."""
    import paradigms as _builtin  # noqa: F401  (registers on import)

    for module in extra_modules():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the module itself imports something missing: its own traceback says what
            raise ConfigError(f"{MODULES_ENV} names {module!r}, which cannot be imported ({exc}); "
                              "give comma-separated dotted module names importable from PYTHONPATH") from None
    return dict(sorted(_PARADIGMS.items()))


def extra_modules() -> list[str]:
    """Module names from ``MMBENCH_PARADIGM_MODULES`` (comma-separated), variants outside the checkout."""
    return [m.strip() for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip()]


def get_paradigm(name: str) -> "type[Paradigm]":
    table = paradigms()
    if name not in table:
        raise KeyError(f"unknown paradigm {name!r}; choices: {', '.join(table)}")
    return table[name]
