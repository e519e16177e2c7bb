"""``coco_captions``: COCO caption annotations, or a Karpathy-split JSON, plus an image folder.

Two formats:

- ``coco``: the official ``captions_<split>2014.json`` (``images[{id, file_name}]``,
  ``annotations[{image_id, caption}]``); the split is whichever file you point at.
- ``karpathy``: ``dataset_coco.json`` (also ``dataset_flickr30k.json``): ``images[{split,
  filename, filepath?, sentences[{raw}]}]``; the requested split is selected from the file.
  Karpathy's ``restval`` images count as ``train`` unless ``restval_in_train`` is false.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, safe_relative
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "restval")
LICENSE = "COCO annotations CC BY 4.0; images under their Flickr licenses (COCO terms of use)"


class CocoOptions(LoaderOptions):
    root: Path
    format: Literal["coco", "karpathy"] = "coco"
    annotations: str | None = None
    """Annotation file relative to ``root``; default ``annotations/captions_{split}2014.json`` or ``dataset_coco.json``."""
    images_dir: str | None = None
    """Image folder relative to ``root``; default ``{split}2014`` (coco) or ``root`` + each entry's ``filepath`` (karpathy)."""
    restval_in_train: bool = True
    dataset_name: str = "coco_captions"


def _coco_samples(split: str, o: CocoOptions) -> list[Sample]:
    ann_path = o.root / (o.annotations or "annotations/captions_{split}2014.json").replace("{split}", split)
    doc = read_json(ann_path, what="COCO caption annotations")
    require_keys(doc, ("images", "annotations"), what=str(ann_path))
    images_dir = o.root / (o.images_dir if o.images_dir is not None else "{split}2014").replace("{split}", split)
    files: dict[Any, str] = {}
    for k, img in enumerate(doc["images"]):
        require_keys(img, ("id", "file_name"), what=f"{ann_path}: images[{k}]")
        if img["id"] in files and files[img["id"]] != img["file_name"]:
            raise ValueError(
                f"{ann_path}: images[{k}] repeats id {img['id']!r} with another file "
                f"({files[img['id']]!r} vs {img['file_name']!r})"
            )
        files[img["id"]] = img["file_name"]
        safe_relative(img["file_name"], what=f"{ann_path}: images[{k}]")
    captions: dict[Any, list[str]] = {}
    for k, ann in enumerate(doc["annotations"]):
        require_keys(ann, ("image_id", "caption"), what=f"{ann_path}: annotations[{k}]")
        if ann["image_id"] not in files:
            raise ValueError(f"{ann_path}: annotations[{k}] refers to unknown image_id {ann['image_id']!r}")
        captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    uncaptioned = len(files) - len(captions)
    if uncaptioned:
        log.warning("%s: %d image(s) have no caption and are left out", ann_path, uncaptioned)
    samples = []
    for image_id in sorted(captions, key=lambda i: (0, i, "") if isinstance(i, int) else (1, 0, str(i))):
        path = images_dir / files[image_id]
        samples.append(
            Sample(
                f"{o.dataset_name}/{image_id}",
                str(path),
                lazy_file_image(path),
                references=tuple(captions[image_id]),
                meta={"image_id": f"{o.dataset_name}/{image_id}", "coco_image_id": image_id},
            )
        )
    return samples


def _karpathy_samples(split: str, o: CocoOptions) -> list[Sample]:
    ann_path = o.root / (o.annotations or "dataset_coco.json")
    doc = read_json(ann_path, what="Karpathy split file")
    require_keys(doc, ("images",), what=str(ann_path))
    wanted = {split, "restval"} if (split == "train" and o.restval_in_train) else {split}
    samples = []
    for k, img in enumerate(doc["images"]):
        where = f"{ann_path}: images[{k}]"
        require_keys(img, ("split", "filename", "sentences"), what=where)
        if img["split"] not in wanted:
            continue
        rel = safe_relative(img["filename"], what=where)
        if o.images_dir is not None:
            folder = o.root / o.images_dir
        elif img.get("filepath"):
            folder = o.root / safe_relative(img["filepath"], what=where)
        else:
            folder = o.root
        refs = tuple(s["raw"].strip() for s in img["sentences"])
        if not refs:
            raise ValueError(f"{where}: no sentences")
        ident = img.get("cocoid", img.get("imgid", img["filename"]))
        path = folder / rel
        samples.append(
            Sample(
                f"{o.dataset_name}/{ident}",
                str(path),
                lazy_file_image(path),
                references=refs,
                meta={"image_id": f"{o.dataset_name}/{ident}", "karpathy_split": img["split"]},
            )
        )
    return samples


@register_loader(
    "coco_captions",
    options=CocoOptions,
    splits=SPLITS,
    description="COCO captions (official JSON or Karpathy split JSON) + image folder",
)
def load_coco_captions(split: str, options: CocoOptions) -> Dataset:
    if split == "restval" and options.format != "karpathy":
        raise ValueError("split 'restval' exists only in the Karpathy format (format='karpathy')")
    build = _karpathy_samples if options.format == "karpathy" else _coco_samples
    samples = build(split, options)
    missing = sum(not Path(s.image_ref).is_file() for s in samples)
    if missing:
        log.warning("%s %s: %d of %d images are missing; those samples will fail", options.dataset_name, split, missing, len(samples))
    return Dataset(
        name=options.dataset_name,
        split=split,
        source=f"{options.root} ({options.format} format)",
        samples=tuple(samples),
        license=LICENSE,
    )
