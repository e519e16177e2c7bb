"""Dataset loaders: ``LOADERS[name](split, **options) -> Dataset``.

Importing this package registers every built-in loader (one module each). Use
:func:`load_dataset` from configs: it checks the loader name, the split and the options before
reading anything, and says what the valid choices are when one is wrong.
"""

from __future__ import annotations

from typing import Any, Mapping

from tasks.base import Dataset
from tasks.datasets._registry import LOADERS, Loader, LoaderOptions, register_loader

# built-in loaders register themselves on import
from tasks.datasets import aokvqa, coco, flickr8k, hub, karpathy, photos, scienceqa, textvqa, vizwiz, vqa, world  # noqa: E402,F401
from tasks.datasets.flickr8k import caption_text_corpus  # noqa: E402

__all__ = [
    "LOADERS",
    "Loader",
    "LoaderOptions",
    "caption_text_corpus",
    "get_loader",
    "load_dataset",
    "register_loader",
]


def get_loader(loader_name: str) -> Loader:
    """The registered loader, or ``ValueError`` listing the valid names."""
    if loader_name not in LOADERS:
        raise ValueError(f"unknown dataset loader {loader_name!r}; valid loaders: {sorted(LOADERS)}")
    return LOADERS[loader_name]


def load_dataset(loader_name: str, split: str, options: Mapping[str, Any] | None = None) -> Dataset:
    """Load ``split`` of a registered dataset with validated ``options``."""
    return get_loader(loader_name)(split, **dict(options or {}))
