"""``vizwiz``: VizWiz-VQA's released annotations (``Annotations/{split}.json``) plus ``{split}/`` images.

Each file is a JSON list of ``{image, question, answers: [{answer, answer_confidence}] (10),
answer_type, answerable}``, one question per image (the image file name is the id). Unanswerable
questions keep their human answers (mostly "unanswerable"), as the official accuracy scores
them. The test file has no answers, so only train and val are offered here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, safe_relative, warn_missing_images
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)
LICENSE = "VizWiz: CC BY 4.0"


class VizWizOptions(LoaderOptions):
    root: Path
    annotations: str = "Annotations/{split}.json"
    images_dir: str = "{split}"
    dataset_name: str = "vizwiz"


@register_loader(
    "vizwiz",
    options=VizWizOptions,
    splits=("train", "val"),
    description="VizWiz-VQA release (Annotations/{split}.json) + {split}/ images",
)
def load_vizwiz(split: str, o: VizWizOptions) -> Dataset:
    path = o.root / o.annotations.replace("{split}", split)
    records = read_json(path, what="VizWiz annotations")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(records).__name__}")
    images = o.root / o.images_dir.replace("{split}", split)
    samples = []
    for k, r in enumerate(records):
        where = f"{path}: [{k}]"
        require_keys(r, ("image", "question", "answers"), what=where)
        for j, a in enumerate(r["answers"]):
            require_keys(a, ("answer",), what=f"{where}.answers[{j}]")
        name = safe_relative(r["image"], what=where)
        img = images / name
        meta = {"image_id": f"{o.dataset_name}/{r['image']}", "answerable": r.get("answerable"),
                "answer_type": r.get("answer_type"),
                "answer_confidence": tuple(a.get("answer_confidence") for a in r["answers"])}
        samples.append(Sample(f"{o.dataset_name}/{Path(r['image']).stem}", str(img), lazy_file_image(img),
                              question=r["question"], answers=tuple(str(a["answer"]) for a in r["answers"]), meta=meta))
    warn_missing_images(log, o.dataset_name, split, (s.image_ref for s in samples))
    return Dataset(o.dataset_name, split, f"{path}", tuple(samples), LICENSE)
