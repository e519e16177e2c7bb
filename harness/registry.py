"""Name -> implementation tables for paradigms and tasks, filled at import time.

Adding a paradigm variant is one module with a class decorated by :func:`register_paradigm`
(listed in ``paradigms/__init__.py``); adding a task is one YAML file in ``tasks/specs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from harness.interface import Paradigm

P = TypeVar("P", bound="type[Paradigm]")

_PARADIGMS: dict[str, "type[Paradigm]"] = {}

FAMILIES: tuple[str, ...] = ("tool_agent", "text_conversion", "guided_decoding", "trained_adapter")


def register_paradigm(cls: P) -> P:
    """Class decorator: make ``family/variant`` available to configs and the CLI."""
    if cls.family not in FAMILIES:
        raise ValueError(f"paradigm family {cls.family!r} is not one of {FAMILIES}")
    key = f"{cls.family}/{cls.variant}"
    if key in _PARADIGMS and _PARADIGMS[key] is not cls:
        raise ValueError(f"paradigm {key!r} registered twice")
    _PARADIGMS[key] = cls
    return cls


def paradigms() -> dict[str, "type[Paradigm]"]:
    """All registered paradigm variants (imports the built-in ones on first call)."""
    import paradigms as _builtin  # noqa: F401  (registers on import)

    return dict(sorted(_PARADIGMS.items()))


def get_paradigm(name: str) -> "type[Paradigm]":
    table = paradigms()
    if name not in table:
        raise KeyError(f"unknown paradigm {name!r}; choices: {', '.join(table)}")
    return table[name]


Factory = Callable[..., object]
