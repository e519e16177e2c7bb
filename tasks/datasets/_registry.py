"""The loader registry: name -> :class:`Loader`, filled at import time by :func:`register_loader`.

Every loader validates its options through its own pydantic model (``extra="forbid"``) before it
touches any file, so a typo in a task or config file stops the run with the offending key and the
list of valid keys rather than being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.base import Dataset


class LoaderOptions(BaseModel):
    """Base of every loader's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Build = Callable[[str, Any], Dataset]


@dataclass(frozen=True)
class Loader:
    """A registered dataset loader; call it as ``loader(split, **options)``.

    ``splits`` is the closed set of split names the loader accepts, so a wrong split fails
    before any data is read.
    """

    name: str
    options_model: type[LoaderOptions]
    splits: tuple[str, ...]
    build: Build
    description: str = ""

    def parse_options(self, options: Mapping[str, Any]) -> LoaderOptions:
        """Validate ``options``; raise ``ValueError`` naming the bad keys and the valid ones."""
        valid = sorted(self.options_model.model_fields)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for dataset loader {self.name!r}; "
                f"valid options: {valid}"
            )
        try:
            return self.options_model(**dict(options))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}"
                for e in err.errors()
            )
            raise ValueError(
                f"invalid options for dataset loader {self.name!r}: {problems}; "
                f"valid options: {valid}"
            ) from None

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"dataset loader {self.name!r} has no split {split!r}; valid splits: {list(self.splits)}"
            )

    def __call__(self, split: str, **options: Any) -> Dataset:
        self.check_split(split)
        return self.build(split, self.parse_options(options))


LOADERS: dict[str, Loader] = {}


def register_loader(
    name: str, *, options: type[LoaderOptions], splits: tuple[str, ...], description: str = ""
) -> Callable[[Build], Build]:
    """Decorator: make ``build(split, parsed_options)`` available as ``LOADERS[name]``."""

    def wrap(build: Build) -> Build:
        if name in LOADERS:
            raise ValueError(f"dataset loader {name!r} registered twice")
        LOADERS[name] = Loader(name, options, tuple(splits), build, description)
        return build

    return wrap
