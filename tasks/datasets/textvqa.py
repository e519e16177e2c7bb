"""``textvqa``: TextVQA's released JSON (``TextVQA_0.5.1_{split}.json``) plus its image folders.

The file is ``{"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [{question_id,
image_id, question, answers (10 strings), image_classes, ...}]}``. Train and val images both come
in the release's ``train_images/`` folder (``{image_id}.jpg``), which is the default
``images_dir``. The test file has no answers, so only train and val are offered here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, safe_relative, warn_missing_images
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)
LICENSE = "TextVQA annotations CC BY 4.0; Open Images images CC BY 2.0"


class TextVqaOptions(LoaderOptions):
    root: Path
    annotations: str = "TextVQA_0.5.1_{split}.json"
    images_dir: str = "train_images"
    dataset_name: str = "textvqa"


@register_loader(
    "textvqa",
    options=TextVqaOptions,
    splits=("train", "val"),
    description="TextVQA release (TextVQA_0.5.1_{split}.json) + train_images/",
)
def load_textvqa(split: str, o: TextVqaOptions) -> Dataset:
    path = o.root / o.annotations.replace("{split}", split)
    doc = read_json(path, what="TextVQA annotations")
    require_keys(doc, ("data",), what=str(path))
    images = o.root / o.images_dir.replace("{split}", split)
    samples = []
    for k, r in enumerate(doc["data"]):
        where = f"{path}: data[{k}]"
        require_keys(r, ("question_id", "image_id", "question", "answers"), what=where)
        img = images / safe_relative(f"{r['image_id']}.jpg", what=where)
        meta = {"image_id": f"{o.dataset_name}-image/{r['image_id']}", "question_id": r["question_id"],
                "image_classes": tuple(r.get("image_classes") or ())}
        samples.append(Sample(f"{o.dataset_name}/{r['question_id']}", str(img), lazy_file_image(img),
                              question=r["question"], answers=tuple(str(a) for a in r["answers"]), meta=meta))
    warn_missing_images(log, o.dataset_name, split, (s.image_ref for s in samples))
    return Dataset(o.dataset_name, split, f"{path}", tuple(samples), LICENSE)
