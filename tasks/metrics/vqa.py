"""VQA accuracy exactly as the official evaluation (GT-Vision-Lab/VQA ``vqaEval.py``) computes it.

Per question: strip newlines/tabs/outer spaces from the prediction and the human answers; *only if
the human answers are not all identical* normalise both (see :mod:`tasks.metrics.vqa_normalize`);
then accuracy = mean over the leave-one-out subsets of the human answers of
``min(1, #matches in the subset / 3)``. ``overall`` is the mean over questions, in percent.

Two modes, differing only in that unanimity branch:

- ``"evalai"`` (default): the prediction is normalised first, always — as MMF's
  ``EvalAIAnswerProcessor`` ("similar to Eval AI") and lmms-eval do. Without it a model answering
  "Yes" or "Black." scores 0 on every question whose ten annotators all wrote "yes"/"black".
- ``"vqaeval"``: byte-for-byte the repository script — the prediction is normalised only when the
  human answers disagree.

Human answers are treated identically in both modes (normalised only when they disagree), as the
official code does. An empty prediction is compared like any other in both modes: it matches the
humans who left the answer empty (or whose answer normalises to empty, e.g. "the" when they
disagree), exactly as the official script counts it. ``mmbench run`` passes ``empty="wrong"``
because there an empty string is what a failed sample leaves, and failures count as wrong. Nothing here mutates its inputs, so scoring twice gives the same number (the
official script normalises its loaded annotations in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Collection, Literal, Mapping, Sequence

import numpy as np

from tasks.base import Sample
from tasks.metrics.bootstrap import DEFAULT_N_BOOT, bootstrap_indices, counts_from_indices, percentile_ci
from tasks.metrics.result import MetricReport
from tasks.metrics.vqa_normalize import clean_whitespace, normalize_answer, process_digit_article, process_punctuation

VQAMode = Literal["evalai", "vqaeval"]
VQA_MODES: tuple[str, ...] = ("evalai", "vqaeval")
#: How an empty (whitespace-only) prediction is scored: "official" compares it as the official
#: script does; "wrong" scores it 0 (a failed sample, as ``mmbench run`` records failures).
EmptyRule = Literal["official", "wrong"]
EMPTY_RULES: tuple[str, ...] = ("official", "wrong")


def vqa_accuracy(prediction: str, gt_answers: Sequence[str], mode: VQAMode = "evalai") -> float:
    """Official VQA accuracy (0–1) of one prediction against the human answers of one question."""
    if mode not in VQA_MODES:
        raise ValueError(f"mode must be one of {VQA_MODES}, got {mode!r}")
    if len(gt_answers) < 2:
        raise ValueError("VQA accuracy needs at least 2 human answers (it averages over leave-one-out subsets); "
                         "use exact_match for single-answer datasets")
    gts = [clean_whitespace(a) for a in gt_answers]
    res = normalize_answer(prediction) if mode == "evalai" else clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        res = process_digit_article(process_punctuation(res))
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == res)
        total += min(1.0, matches / 3)
    return total / len(gts)


@dataclass(frozen=True)
class VQAItem:
    """One question's human answers and the official type labels (when the annotations carry them)."""

    answers: tuple[str, ...]
    answer_type: str | None = None
    question_type: str | None = None


def _item(value: Any) -> VQAItem:
    if isinstance(value, VQAItem):
        return value
    if isinstance(value, Sample):
        return VQAItem(tuple(value.answers), value.meta.get("answer_type"), value.meta.get("question_type"))
    if isinstance(value, Mapping):
        answers = tuple(a["answer"] if isinstance(a, Mapping) else a for a in value["answers"])
        return VQAItem(answers, value.get("answer_type"), value.get("question_type"))
    if isinstance(value, str):
        raise TypeError("human answers must be a list of strings, not one string")
    return VQAItem(tuple(value))


def official_round(percent: float) -> str:
    """``round(x, 2)`` as the official (Python 2) script prints it: half away from zero on the exact float."""
    return str(Decimal(percent).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _group_ci(scores: np.ndarray, masks: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    if n_boot <= 0:
        return {}
    n = scores.size
    idx = bootstrap_indices(n, n_boot, seed)
    reps: dict[str, list[np.ndarray]] = {k: [] for k in masks}
    for start in range(0, n_boot, 200):
        w = counts_from_indices(idx[start:start + 200], n)
        for key, mask in masks.items():
            denom = w @ mask
            with np.errstate(invalid="ignore", divide="ignore"):
                reps[key].append((w @ (scores * mask)) / denom)
    return {k: percentile_ci(np.concatenate(v)) for k, v in reps.items()}


def score_vqa(samples_or_mapping: Sequence[Sample] | Sequence[Any] | Mapping[Any, Any],
              predictions: Sequence[str] | Mapping[Any, str], *, mode: VQAMode = "evalai",
              empty: EmptyRule = "official", failed: Collection[Any] = (), n_boot: int = DEFAULT_N_BOOT,
              seed: int = 0) -> MetricReport:
    """Official VQA accuracy over a set of questions, with bootstrap CIs and per-question scores.

    Accepts samples (``Sample.answers``; ``meta["answer_type"]``/``meta["question_type"]`` if present)
    with predictions in the same order, or a mapping ``question_id -> answers`` (a list of strings,
    or an official annotation dict) with predictions keyed the same way. An empty prediction is
    scored as the official script scores it (``empty="official"``) or as a failure, 0
    (``empty="wrong"``). Questions in ``failed`` (keys of the mapping, or indices into the
    sequence) had no answer at all and score 0. Values are percent, unrounded: ``overall``, ``perAnswerType/<type>``
    and ``perQuestionType/<type>`` (official keys); ``per_sample["overall"]`` is in question order.
    """
    if isinstance(samples_or_mapping, Mapping):
        if not isinstance(predictions, Mapping):
            raise TypeError("with a mapping of questions, predictions must be a mapping with the same keys")
        keys = list(samples_or_mapping)
        missing = [k for k in keys if k not in predictions]
        extra = [k for k in predictions if k not in samples_or_mapping]
        if missing or extra:
            raise ValueError(f"predictions and questions differ: missing {missing[:5]} ({len(missing)}), "
                             f"unknown {extra[:5]} ({len(extra)}); pass failed samples as empty strings")
        items = [_item(samples_or_mapping[k]) for k in keys]
        preds = [predictions[k] for k in keys]
        no_answer = [k in failed for k in keys]
    else:
        if isinstance(predictions, Mapping):
            raise TypeError("with a sequence of samples, predictions must be a sequence in the same order")
        items = [_item(s) for s in samples_or_mapping]
        preds = list(predictions)
        if len(items) != len(preds):
            raise ValueError(f"{len(items)} questions but {len(preds)} predictions")
        no_answer = [k in failed for k in range(len(items))]
    if not items:
        raise ValueError("no questions to score")
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    for p in preds:
        if not isinstance(p, str):
            raise TypeError(f"predictions must be strings, got {type(p).__name__}")
    acc = np.array([0.0 if gone or (empty == "wrong" and not clean_whitespace(p)) else vqa_accuracy(p, it.answers, mode)
                    for p, it, gone in zip(preds, items, no_answer)])
    scores = 100.0 * acc
    masks: dict[str, np.ndarray] = {"overall": np.ones(len(items))}
    for prefix, attr in (("perAnswerType", "answer_type"), ("perQuestionType", "question_type")):
        labels = [getattr(it, attr) for it in items]
        for label in dict.fromkeys(lab for lab in labels if lab is not None):
            masks[f"{prefix}/{label}"] = np.array([lab == label for lab in labels], dtype=np.float64)
    values = {k: float((scores * m).sum() / m.sum()) for k, m in masks.items()}
    ci = _group_ci(scores, masks, n_boot, seed)
    info = {
        "mode": mode,
        "empty_prediction": ("as the official script (matches humans who left it empty)" if empty == "official"
                             else "a failed sample: scores 0"),
        "implementation": "official VQA evaluation (vqaEval.py) reimplemented; see tasks/metrics/vqa.py",
        "scale": "percent, unrounded (the official script prints round(x, 2))",
        "overall_official_rounded": official_round(values["overall"]),
        "ci": (f"percentile bootstrap 95%, {n_boot} resamples of questions, seed {seed}" if n_boot > 0 else "none"),
        "n_samples": str(len(items)),
        "n_empty_predictions": str(sum(1 for p in preds if not clean_whitespace(p))),
        "n_failed": str(sum(no_answer)),
    }
    return MetricReport(values=values, ci=ci, per_sample={"overall": scores.tolist()}, primary="overall", info=info)
