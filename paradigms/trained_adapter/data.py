"""Caption training data and frozen-encoder features for the adapter paradigm.

The run's vision encoder is frozen, so its features — or, for Frozen's trained encoder tail, the
frozen front's activations — are computed once per image (keyed by image id) and reused for every
training step; the training set's features are also stored next to the adapter
checkpoint so an interrupted training resumes without re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from pydantic import Field
from safetensors.torch import load_file, save_file

from harness.atomic import atomic_path
from harness.config import Strict, stable_hash


@dataclass(frozen=True)
class CaptionPair:
    """One training example: an image (by stable id, loaded lazily) and one human caption."""

    image_id: str
    load_image: Callable[[], Image.Image]
    caption: str


class TrainData(Strict):
    """Which captioned images the connector is trained on (a dataset loader + split + options)."""

    loader: str = "world"
    split: str = "train"
    options: dict[str, Any] = Field(default_factory=lambda: {"task": "caption"})
    max_images: int | None = Field(64, ge=1)
    captions_per_image: int = Field(5, ge=1)


def load_caption_pairs(spec: TrainData) -> list[CaptionPair]:
    """Pairs from the task layer's dataset loader (``tasks.datasets``)."""
    from tasks.datasets import load_dataset

    ds = load_dataset(spec.loader, spec.split, dict(spec.options))
    pairs: list[CaptionPair] = []
    samples = ds.samples[: spec.max_images] if spec.max_images else ds.samples
    for s in samples:
        for ref in tuple(s.references)[: spec.captions_per_image]:
            pairs.append(CaptionPair(f"{ds.name}/{s.sample_id}", s.load_image, ref))
    if not pairs:
        raise ValueError(f"dataset {spec.loader}/{spec.split} has no captioned samples to train on")
    return pairs


def data_identity(pairs: Sequence[CaptionPair]) -> str:
    """A hash of exactly what is trained on (image ids and captions, in order)."""
    return stable_hash([(p.image_id, p.caption) for p in pairs])


def encode_images(
    encoder: Any,
    items: Mapping[str, Callable[[], Image.Image]],
    *,
    cache_file: Path | None = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Features ``[C, H, W]`` (float16 on CPU) for each image id, reusing ``cache_file`` when complete."""
    if cache_file is not None and cache_file.exists():
        cached = load_file(str(cache_file))
        if set(cached) >= set(items):
            return {k: cached[k] for k in items}
    out: dict[str, torch.Tensor] = {}
    ids = list(items)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        feats = encoder.features([items[i]().convert("RGB") for i in chunk])
        for i, f in zip(chunk, feats):
            out[i] = f.detach().to("cpu", torch.float16).clone()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:  # ranks may write at once
            save_file(out, str(tmp))
    return out
