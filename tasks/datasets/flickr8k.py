"""``flickr8k``: the Kaggle Flickr8k layout — ``captions.txt`` (CSV ``image,caption``) beside ``images/``.

The split is by image, from a hash of the file name salted with ``split_seed``: stable across
machines, independent of the CSV's row order, and an image's five captions never straddle two
splits. Images named in the CSV but absent on disk stay in the dataset (their sample fails when
its image is loaded, and the runner records that sample as failed); their number is logged.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pydantic import Field, model_validator

from tasks.base import Dataset, Sample
from tasks.datasets._common import hash_split, lazy_file_image, safe_relative
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
LICENSE = "Flickr8k (Hodosh, Young, Hockenmaier 2013): research use only; images remain their owners'"


class Flickr8kOptions(LoaderOptions):
    root: Path
    images_dir: str = "images"
    captions_file: str = "captions.txt"
    val_fraction: float = Field(0.125, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.125, gt=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> "Flickr8kOptions":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some images for train")
        return self


def read_caption_csv(path: Path) -> list[tuple[int, str, str]]:
    """Rows ``(line_number, image, caption)`` of an ``image,caption`` CSV, validated."""
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    rows: list[tuple[int, str, str]] = []
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV header 'image,caption', got {reader.fieldnames}")
        for row in reader:
            line = reader.line_num
            image, caption = (row.get("image") or "").strip(), (row.get("caption") or "").strip()
            safe_relative(image, what=f"{path}:{line}")
            if not caption:
                raise ValueError(f"{path}:{line}: empty caption for image {image!r}")
            rows.append((line, image, caption))
    return rows


def caption_text_corpus(root: str | Path, captions_file: str = "captions_text_only.txt") -> list[str]:
    """The captions of a caption-only CSV (same layout), e.g. for adapting a language model to caption style."""
    return [caption for _, _, caption in read_caption_csv(Path(root) / captions_file)]


@register_loader(
    "flickr8k",
    options=Flickr8kOptions,
    splits=SPLITS,
    description="Flickr8k in the Kaggle layout (captions.txt + images/), split by image hash",
)
def load_flickr8k(split: str, options: Flickr8kOptions) -> Dataset:
    root = options.root
    if not root.is_dir():
        raise FileNotFoundError(f"flickr8k root is not a directory: {root}")
    images = root / options.images_dir
    grouped: dict[str, list[str]] = {}
    for _, image, caption in read_caption_csv(root / options.captions_file):
        grouped.setdefault(image, []).append(caption)
    samples: list[Sample] = []
    missing = 0
    for image in sorted(grouped):
        which = hash_split(image, options.split_seed, options.val_fraction, options.test_fraction)
        if split != "all" and which != split:
            continue
        path = images / image
        exists = path.is_file()
        missing += not exists
        samples.append(
            Sample(
                f"flickr8k/{image}",
                str(path),
                lazy_file_image(path),
                references=tuple(grouped[image]),
                meta={"image_id": f"flickr8k/{image}", "split": which, "image_missing": not exists},
            )
        )
    if missing:
        log.warning("flickr8k %s: %d of %d images named in %s are missing under %s; those samples will fail",
                    split, missing, len(samples), options.captions_file, images)
    return Dataset(name="flickr8k", split=split, source=str(root), samples=tuple(samples), license=LICENSE)
