"""Scoring result files in the official formats (for ``mmbench score``).

- captions: a COCO caption annotation file (``{"images": [...], "annotations": [{"image_id",
  "caption", ...}]}``) and a COCO results file (``[{"image_id", "caption"}, ...]``);
- VQA: the official questions and annotations files and a results file
  (``[{"question_id", "answer"}, ...]``).

Consistency checks follow the official loaders: a result for an unknown id, or two results for one
id, is an error. Ids without a result are an error too unless ``missing`` says otherwise:
``"empty"`` scores them as failed (empty prediction), ``"skip"`` (captions only) evaluates only the
images that have results, as the COCO caption example does with ``params['image_id']``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from tasks.metrics.bootstrap import DEFAULT_N_BOOT
from tasks.metrics.caption import score_captions
from tasks.metrics.meteor import MeteorProcess
from tasks.metrics.result import MetricReport
from tasks.metrics.vqa import VQAItem, VQAMode, score_vqa

Missing = Literal["error", "empty", "skip"]


def _load(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({exc})") from None


def _records(doc: Any, path: str | Path, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """``doc[key]`` as a list of objects each holding ``fields``, or a ValueError naming the file and entry."""
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list (the official format); "
                         f"got {type(doc).__name__}" + (f" with keys {sorted(doc)[:5]}" if isinstance(doc, dict) else ""))
    for k, rec in enumerate(doc[key]):
        if not isinstance(rec, dict) or any(f not in rec for f in fields):
            raise ValueError(f"{path}: {key}[{k}] must be an object with {', '.join(map(repr, fields))}; got {rec!r:.120}")
    return doc[key]


def _results(path: str | Path, id_key: str, text_key: str) -> dict[Any, str]:
    data = _load(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: results must be a JSON list of objects")
    out: dict[Any, str] = {}
    for k, row in enumerate(data):
        if not isinstance(row, dict) or id_key not in row or text_key not in row:
            raise ValueError(f"{path}: entry {k} lacks {id_key!r} or {text_key!r}")
        if not isinstance(row[text_key], str):
            raise ValueError(f"{path}: entry {k}: {text_key!r} must be a string")
        if row[id_key] in out:
            raise ValueError(f"{path}: two results for {id_key} {row[id_key]!r}")
        out[row[id_key]] = row[text_key]
    return out


def _reconcile(ids: list[Any], results: dict[Any, str], missing: Missing, what: str) -> tuple[list[Any], dict[Any, str]]:
    known = set(ids)
    unknown = [i for i in results if i not in known]
    if unknown:
        raise ValueError(f"results contain {len(unknown)} {what}s not in the annotations (e.g. {unknown[:5]})")
    absent = [i for i in ids if i not in results]
    if absent and missing == "error":
        raise ValueError(f"{len(absent)} {what}s have no result (e.g. {absent[:5]}); pass --missing empty to "
                         "score them as failed" + (" or --missing skip to evaluate only result ids" if what == "image" else ""))
    if missing == "skip":
        ids = [i for i in ids if i in results]
    return ids, {i: results.get(i, "") for i in ids}


def score_coco_results(annotations_path: str | Path, results_path: str | Path, *, missing: Missing = "error",
                       n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                       meteor_process: MeteorProcess | None = None) -> MetricReport:
    """COCO caption metrics of a results file against a COCO caption annotation file.

    Images listed in ``images`` without any caption annotation cannot be scored and are ignored.
    ``meteor_process`` lets a caller scoring several files reuse one METEOR JVM.
    """
    ann = _load(annotations_path)
    refs: dict[Any, list[str]] = defaultdict(list)
    for a in _records(ann, annotations_path, "annotations", ("image_id", "caption")):
        refs[a["image_id"]].append(str(a["caption"]))
    if not refs:
        raise ValueError(f"{annotations_path}: no caption annotations")
    try:
        ids, preds = _reconcile(list(refs), _results(results_path, "image_id", "caption"), missing, "image")
    except ValueError as exc:
        raise ValueError(f"{results_path}: {exc}" if str(results_path) not in str(exc) else str(exc)) from None
    return score_captions({i: refs[i] for i in ids}, preds, n_boot=n_boot, seed=seed, meteor_process=meteor_process)


def score_vqa_results(questions_path: str | Path, annotations_path: str | Path, results_path: str | Path, *,
                      mode: VQAMode = "vqaeval", missing: Literal["error", "empty"] = "error",
                      n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> MetricReport:
    """Official VQA accuracy (percent) of a results file, with per-answer/question-type breakdowns.

    Defaults to what the official ``vqaEval.py`` computes on these files (``mode="vqaeval"``, an
    empty answer compared like any other); a question with no result (``missing="empty"``) is a
    failure and scores 0 — the official loader would refuse the file.
    """
    if missing not in ("error", "empty"):
        raise ValueError("missing must be 'error' or 'empty' for VQA (the official loader requires every question)")
    questions = _load(questions_path)
    annotations = _load(annotations_path)
    q_ids = {q["question_id"] for q in _records(questions, questions_path, "questions", ("question_id",))}
    items: dict[Any, VQAItem] = {}
    for k, a in enumerate(_records(annotations, annotations_path, "annotations", ("question_id", "answers"))):
        qid = a["question_id"]
        if qid not in q_ids:
            raise ValueError(f"{annotations_path}: annotation for question {qid!r} has no entry in {questions_path}")
        answers = a["answers"]
        if not isinstance(answers, list) or not all(isinstance(x, dict) and "answer" in x for x in answers):
            raise ValueError(f"{annotations_path}: annotations[{k}].answers must be a list of objects like "
                             f'{{"answer": "yes", "answer_id": 1}} (the official format); got {answers!r:.120}')
        items[qid] = VQAItem(tuple(str(x["answer"]) for x in answers), a.get("answer_type"), a.get("question_type"))
    if not items:
        raise ValueError(f"{annotations_path}: no annotations")
    try:
        results = _results(results_path, "question_id", "answer")
        ids, preds = _reconcile(list(items), results, missing, "question")
    except ValueError as exc:
        raise ValueError(f"{results_path}: {exc}" if str(results_path) not in str(exc) else str(exc)) from None
    absent = {i for i in ids if i not in results}  # scored as failures (0), not as empty answers
    return score_vqa({i: items[i] for i in ids}, preds, mode=mode, failed=absent, n_boot=n_boot, seed=seed)
