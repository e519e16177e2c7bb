"""``aokvqa``: A-OKVQA's released files (``aokvqa_v1p0_{split}.json``) plus COCO 2017 images.

Each file is a JSON list of ``{question_id, image_id, question, choices, correct_choice_idx,
direct_answers (10 strings), difficult_direct_answer, rationales}``; the test file has no
``correct_choice_idx`` / ``direct_answers`` / ``rationales`` and cannot be scored here. Images are
``{split}2017/{image_id:012d}.jpg`` under ``root`` (COCO 2017 layout; override ``images_dir``).
``task: vqa`` gives the direct-answer task (VQA accuracy over the 10 answers), ``task:
multiple_choice`` the 4-way choice. Rationales go to ``meta``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, warn_missing_images
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)
LICENSE = "A-OKVQA annotations Apache-2.0; COCO images under their Flickr licenses (COCO terms of use)"


class AokvqaOptions(LoaderOptions):
    root: Path
    task: Literal["vqa", "multiple_choice"] = "vqa"
    annotations: str = "aokvqa_v1p0_{split}.json"
    images_dir: str = "{split}2017"
    dataset_name: str = "aokvqa"


@register_loader(
    "aokvqa",
    options=AokvqaOptions,
    splits=("train", "val"),
    description="A-OKVQA release (aokvqa_v1p0_{split}.json) + COCO 2017 images; direct answer or multiple choice",
)
def load_aokvqa(split: str, o: AokvqaOptions) -> Dataset:
    path = o.root / o.annotations.replace("{split}", split)
    records = read_json(path, what="A-OKVQA annotations")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(records).__name__}")
    images = o.root / o.images_dir.replace("{split}", split)
    samples: list[Sample] = []
    for k, r in enumerate(records):
        where = f"{path}: [{k}]"
        require_keys(r, ("question_id", "image_id", "question", "choices", "correct_choice_idx", "direct_answers"), what=where)
        choices = tuple(str(c) for c in r["choices"])
        idx = int(r["correct_choice_idx"])
        if not 0 <= idx < len(choices):
            raise ValueError(f"{where}: correct_choice_idx {idx} outside {len(choices)} choices")
        img = images / f"{int(r['image_id']):012d}.jpg"
        meta: dict[str, Any] = {
            "image_id": f"coco2017/{r['image_id']}",
            "question_id": r["question_id"],
            "rationales": tuple(r.get("rationales") or ()),
            "difficult_direct_answer": bool(r.get("difficult_direct_answer", False)),
        }
        fields: dict[str, Any] = (
            {"answers": tuple(str(a) for a in r["direct_answers"])}
            if o.task == "vqa"
            else {"choices": choices, "answer_index": idx}
        )
        samples.append(Sample(f"{o.dataset_name}/{r['question_id']}", str(img), lazy_file_image(img), question=r["question"], meta=meta, **fields))
    warn_missing_images(log, o.dataset_name, split, (s.image_ref for s in samples))
    return Dataset(o.dataset_name, split, f"{path} ({o.task})", tuple(samples), LICENSE)
