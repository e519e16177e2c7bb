"""``vqa``: the official VQA JSON format (VQAv2, and OK-VQA which shares it) plus COCO images.

``questions`` holds ``{"questions": [{image_id, question, question_id}]}`` and ``annotations``
``{"annotations": [{question_id, answers: [{answer, ...}], ...}]}``; fields beyond
``question_id`` and ``answers`` (``image_id``, ``answer_type``, ``question_type``,
``multiple_choice_answer``) are used when present. Image files are named by a template, by default
the COCO ``COCO_{subtype}_{image_id:012d}.jpg`` with ``subtype`` taken from the questions file's
``data_subtype`` (e.g. ``val2014``). ``annotations: null`` loads questions without answers (test).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pydantic import field_validator

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, safe_relative
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "testdev")
LICENSE = "VQA annotations CC BY 4.0; COCO images under their Flickr licenses (COCO terms of use)"
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_ALLOWED_FIELDS = re.compile(r"^(subtype|split|image_id(:0?\d*d)?)$")


class VqaOptions(LoaderOptions):
    root: Path
    questions: str = "v2_OpenEnded_mscoco_{split}2014_questions.json"
    annotations: str | None = "v2_mscoco_{split}2014_annotations.json"
    images_dir: str = "{split}2014"
    image_template: str = "COCO_{subtype}_{image_id:012d}.jpg"
    subtype: str | None = None
    """Image subtype for the template; default: the questions file's ``data_subtype``, else ``{split}2014``."""
    dataset_name: str = "vqav2"

    @field_validator("image_template")
    @classmethod
    def _template(cls, v: str) -> str:
        bad = [f for f in _TEMPLATE_FIELD.findall(v) if not _ALLOWED_FIELDS.match(f)]
        if bad:
            raise ValueError(f"image_template may only use {{subtype}}, {{split}}, {{image_id}} / {{image_id:012d}}; got {bad}")
        return v


def _fill(template: str, split: str) -> str:
    return template.replace("{split}", split)


def _answers_by_question(path: Path) -> dict[Any, dict[str, Any]]:
    doc = read_json(path, what="VQA annotations")
    require_keys(doc, ("annotations",), what=str(path))
    out: dict[Any, dict[str, Any]] = {}
    for k, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{k}]"
        require_keys(ann, ("question_id", "answers"), what=where)
        for j, a in enumerate(ann["answers"]):
            require_keys(a, ("answer",), what=f"{where}.answers[{j}]")
        out[ann["question_id"]] = ann
    return out


@register_loader(
    "vqa",
    options=VqaOptions,
    splits=SPLITS,
    description="official VQA JSON (VQAv2 / OK-VQA) + COCO image folder",
)
def load_vqa(split: str, options: VqaOptions) -> Dataset:
    root = options.root
    q_path = root / _fill(options.questions, split)
    qdoc = read_json(q_path, what="VQA questions")
    require_keys(qdoc, ("questions",), what=str(q_path))
    subtype = options.subtype or qdoc.get("data_subtype") or f"{split}2014"
    images_dir = root / _fill(options.images_dir, split)
    anns = _answers_by_question(root / _fill(options.annotations, split)) if options.annotations else None
    samples: list[Sample] = []
    unanswered: list[Any] = []
    for k, q in enumerate(qdoc["questions"]):
        where = f"{q_path}: questions[{k}]"
        require_keys(q, ("image_id", "question", "question_id"), what=where)
        qid, image_id = q["question_id"], q["image_id"]
        name = options.image_template.format(subtype=subtype, split=split, image_id=int(image_id))
        path = images_dir / safe_relative(name, what=where)
        meta: dict[str, Any] = {"image_id": f"{options.dataset_name}-image/{image_id}", "question_id": qid, "coco_image_id": image_id}
        answers: tuple[str, ...] = ()
        if anns is not None:
            ann = anns.get(qid)
            if ann is None:
                unanswered.append(qid)
                continue
            if "image_id" in ann and ann["image_id"] != image_id:
                raise ValueError(f"{where}: question {qid} is on image {image_id} but its annotation says {ann['image_id']}")
            answers = tuple(str(a["answer"]) for a in ann["answers"])
            meta["answer_confidence"] = tuple(a.get("answer_confidence") for a in ann["answers"])
            for key in ("answer_type", "question_type", "multiple_choice_answer"):
                if key in ann:
                    meta[key] = ann[key]
        samples.append(Sample(f"{options.dataset_name}/{qid}", str(path), lazy_file_image(path), question=q["question"], answers=answers, meta=meta))
    if unanswered:
        raise ValueError(
            f"{len(unanswered)} question(s) in {q_path.name} have no annotation in {options.annotations} "
            f"(first: {unanswered[:5]}); pass annotations=null to load questions without answers"
        )
    present = {ref: Path(ref).is_file() for ref in {s.image_ref for s in samples}}
    missing = sum(not ok for ok in present.values())
    if missing:
        log.warning("%s %s: %d of %d images are missing; questions on them will fail", options.dataset_name, split, missing, len(present))
    return Dataset(
        name=options.dataset_name,
        split=split,
        source=f"{root} ({q_path.name}{', ' + _fill(options.annotations, split) if options.annotations else ''})",
        samples=tuple(samples),
        license=LICENSE,
    )
