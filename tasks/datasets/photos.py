"""``photos``: real photographs shipped inside installed wheels, with annotations written for mmbench.

The images come from scikit-image's bundled sample data (and scikit-learn's two sample photos when
scikit-learn is installed), so the suite runs offline on real photographs. Nothing ships human
captions or VQA answers for them, so the mmbench developers wrote them after looking at each
image: ``photos_annotations.json`` (5 captions per image, 3-5 questions with 10 answers each).

Splits are by image so that a support (``train``) image is never a test image:
``train`` is a fixed set of 7 images used as the in-context support set, ``test`` the remaining
images, ``all`` every image (zero-shot evaluation only; shot selection excludes the query's own
image anyway).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from tasks.base import Dataset, Sample
from tasks.datasets._common import ImageLoadError
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)

ANNOTATIONS = Path(__file__).with_name("photos_annotations.json")
SPLITS = ("train", "test", "all")


class PhotosOptions(LoaderOptions):
    task: Literal["caption", "vqa"] = "caption"


def _to_rgb(array: np.ndarray) -> Image.Image:
    """Grey, boolean, float or RGBA arrays -> an RGB PIL image."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 4:
        return Image.fromarray(arr, "RGBA").convert("RGB")
    return Image.fromarray(arr).convert("RGB")


def _skimage_image(function: str, index: int | None) -> Image.Image:
    import skimage.data

    if function not in skimage.data.__all__:
        raise ImageLoadError(f"skimage.data has no image {function!r}")
    try:
        result: Any = getattr(skimage.data, function)()
    except Exception as err:  # some images are fetched at run time and fail offline
        raise ImageLoadError(f"skimage.data.{function}() failed: {err}") from err
    if index is not None:
        result = result[index]
    return _to_rgb(result)


def _sklearn_image(file: str) -> Image.Image:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as err:
        raise ImageLoadError(f"scikit-learn is not installed, cannot load {file}") from err
    return _to_rgb(load_sample_image(file))


def _sklearn_available() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def read_annotations() -> tuple[dict[str, Any], ...]:
    """The image entries of ``photos_annotations.json`` (validated on first read)."""
    with ANNOTATIONS.open("r", encoding="utf-8") as fh:
        doc = json.load(fh)
    entries = tuple(doc["images"])
    for e in entries:
        if e["split"] not in ("train", "test"):
            raise ValueError(f"photos entry {e['id']!r} has bad split {e['split']!r}")
        if len(e["captions"]) != 5:
            raise ValueError(f"photos entry {e['id']!r} must have 5 captions")
        for q in e["questions"]:
            if len(q["answers"]) != 10:
                raise ValueError(f"photos entry {e['id']!r}: question {q['question']!r} needs 10 answers")
    return entries


def _loader_for(entry: dict[str, Any]):
    if entry["source"] == "skimage":
        return functools.partial(_skimage_image, entry["function"], entry.get("index"))
    if entry["source"] == "sklearn":
        return functools.partial(_sklearn_image, entry["file"])
    raise ValueError(f"photos entry {entry['id']!r} has unknown source {entry['source']!r}")


def _image_ref(entry: dict[str, Any]) -> str:
    if entry["source"] == "skimage":
        suffix = f"[{entry['index']}]" if entry.get("index") is not None else ""
        return f"skimage.data.{entry['function']}(){suffix}"
    return f"sklearn.datasets.load_sample_image({entry['file']!r})"


def _samples(entry: dict[str, Any], task: str) -> list[Sample]:
    load = _loader_for(entry)
    ref = _image_ref(entry)
    base_meta = {"image_id": f"photos/{entry['id']}", "license": entry["license"], "credit": entry["credit"]}
    if task == "caption":
        return [Sample(f"photos/{entry['id']}", ref, load, references=tuple(entry["captions"]), meta=base_meta)]
    return [
        Sample(
            f"photos/{entry['id']}/q{i}",
            ref,
            load,
            question=q["question"],
            answers=tuple(q["answers"]),
            meta={**base_meta, "answer_type": q["answer_type"], "question_index": i},
        )
        for i, q in enumerate(entry["questions"])
    ]


@register_loader(
    "photos",
    options=PhotosOptions,
    splits=SPLITS,
    description="real photographs from scikit-image/scikit-learn wheels, annotations written for mmbench",
)
def load_photos(split: str, options: PhotosOptions) -> Dataset:
    has_sklearn = _sklearn_available()
    samples: list[Sample] = []
    skipped: list[str] = []
    for entry in read_annotations():
        if split != "all" and entry["split"] != split:
            continue
        if entry["source"] == "sklearn" and not has_sklearn:
            skipped.append(entry["id"])
            continue
        samples.extend(_samples(entry, options.task))
    if skipped:
        log.info("photos: scikit-learn not installed, %d image(s) left out: %s", len(skipped), skipped)
    source = (
        f"scikit-image {_version('scikit-image')} (skimage.data)"
        + (f" + scikit-learn {_version('scikit-learn')} (load_sample_image)" if has_sklearn else "")
        + f"; annotations {ANNOTATIONS.name} (written for mmbench)"
    )
    return Dataset(
        name=f"photos/{options.task}",
        split=split,
        source=source,
        samples=tuple(samples),
        license="annotations Apache-2.0 (mmbench); images per sample (meta['license']): CC0 / public domain / CC BY 2.0",
    )
