"""``scienceqa``: ScienceQA's release folder (``problems.json``, ``pid_splits.json``, ``images/``).

``problems.json`` maps a problem id to ``{question, choices, answer (index), hint, image
("image.png" or null), lecture, solution, split, subject, grade ("grade1".."grade12"), topic,
category, skill, task}``; ``pid_splits.json`` lists the ids of each split; an image lies at
``images/{split}/{pid}/image.png``. By default only questions with an image are loaded (the
IMG subset most multimodal papers report); ``questions: all`` loads every question, and a
text-only question then carries a blank white canvas as its image with ``meta["has_image"]``
false (the ScienceQA method gives such a question no image caption, as the paper does).

``meta`` keeps what the ScienceQA method and its breakdowns need: hint, lecture, solution,
subject, grade, and the context flags of the authors' scorer (has_text / has_image / no_context).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from tasks.base import Dataset, Sample
from tasks.datasets._common import lazy_file_image, read_json, require_keys, warn_missing_images
from tasks.datasets._registry import LoaderOptions, register_loader

log = logging.getLogger(__name__)
LICENSE = "ScienceQA CC BY-NC-SA 4.0"
FIELDS = ("question", "choices", "answer", "hint", "image", "lecture", "solution", "subject", "grade")


class ScienceQAOptions(LoaderOptions):
    root: Path
    questions: Literal["image", "all"] = "image"
    """``image``: the questions with an image (IMG subset); ``all``: every question of the split."""
    dataset_name: str = "scienceqa"


def _blank() -> Image.Image:
    return Image.new("RGB", (224, 224), (255, 255, 255))


def context_flags(hint: str, has_image: bool) -> dict[str, bool]:
    """The context columns of the authors' scorer: TXT, IMG and NO (no context at all)."""
    has_text = bool(hint.strip())
    return {"has_text": has_text, "has_image": has_image, "no_context": not has_text and not has_image}


@register_loader(
    "scienceqa",
    options=ScienceQAOptions,
    splits=("train", "val", "test", "minival", "minitrain", "trainval"),
    description="ScienceQA release (problems.json + pid_splits.json + images/{split}/{pid}/image.png)",
)
def load_scienceqa(split: str, o: ScienceQAOptions) -> Dataset:
    problems = read_json(o.root / "problems.json", what="ScienceQA problems.json")
    splits = read_json(o.root / "pid_splits.json", what="ScienceQA pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise ValueError(f"{o.root}: problems.json and pid_splits.json must be JSON objects")
    if split not in splits:
        raise ValueError(f"{o.root / 'pid_splits.json'} has no split {split!r}; it has {sorted(splits)}")
    samples: list[Sample] = []
    for pid in splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(f"pid_splits.json lists {pid!r} under {split!r} but problems.json has no such problem")
        p = problems[pid]
        require_keys(p, FIELDS, what=f"problems.json[{pid!r}]")
        has_image = bool(p["image"])
        if not has_image and o.questions == "image":
            continue
        choices = tuple(str(c) for c in p["choices"])
        idx = int(p["answer"])
        if not 0 <= idx < len(choices):
            raise ValueError(f"problems.json[{pid!r}]: answer {idx} outside {len(choices)} choices")
        if has_image:
            # the release stores images under the problem's own split folder (trainval/mini* are unions)
            path = o.root / "images" / str(p.get("split", split)) / pid / str(p["image"])
            ref, load = str(path), lazy_file_image(path)
        else:
            ref, load = f"no-image:{o.dataset_name}/{pid}", functools.partial(_blank)
        hint = str(p.get("hint") or "")
        meta: dict[str, Any] = {
            "image_id": f"{o.dataset_name}/{pid}",
            "hint": hint,
            "lecture": str(p.get("lecture") or ""),
            "solution": str(p.get("solution") or ""),
            "subject": str(p["subject"]),
            "grade": str(p["grade"]),
            **{k: str(p.get(k) or "") for k in ("topic", "category", "skill")},
            **context_flags(hint, has_image),
        }
        samples.append(Sample(f"{o.dataset_name}/{pid}", ref, load, question=str(p["question"]), choices=choices, answer_index=idx, meta=meta))
    warn_missing_images(log, o.dataset_name, split, (s.image_ref for s in samples if s.meta["has_image"]))
    return Dataset(o.dataset_name, split, f"{o.root} (problems.json, {o.questions} questions)", tuple(samples), LICENSE)
