"""Multiple-choice accuracy (ScienceQA, A-OKVQA MC) and normalised exact match (fast binding).

Matching rule for a multiple-choice prediction (documented in ``docs/metrics.md``):

1. an ``int`` is a 0-based choice index;
2. a string is compared with every choice after light normalisation (case-folded, whitespace
   collapsed, surrounding quotes and trailing ``.,;:!?`` removed); exactly one equal choice is the
   answer (two equal choices make it ambiguous: no answer);
3. otherwise an option letter as the task prompt renders them — ``B``, ``(B)``, ``B.``, ``B)``,
   ``B:`` — selects that choice, and ``(B) text``/``B. text`` does too when ``text`` is choice B;
4. anything else (including the empty prediction of a failed sample) is wrong.

Extracting an answer from free text ("I think the answer is B because …") is the paradigm's job,
not the metric's: the metric never guesses.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from tasks.metrics.bootstrap import DEFAULT_N_BOOT, mean_ci
from tasks.metrics.result import MetricReport
from tasks.metrics.vqa_normalize import normalize_answer

_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LETTER_TEXT = re.compile(r"^\(?([A-Za-z])[).:]\s+(.+)$", re.DOTALL)
_TRAILING = ".,;:!?"
_QUOTES = "\"'`"


def _norm(text: str) -> str:
    t = " ".join(text.casefold().split())
    prev = None
    while t != prev:
        prev = t
        t = t.strip().strip(_QUOTES).rstrip(_TRAILING).strip()
    return t


def match_choice(prediction: str | int, choices: Sequence[str]) -> int | None:
    """Index of the choice a prediction designates, or None (see module docstring for the rule)."""
    if isinstance(prediction, bool):
        raise TypeError("a prediction must be a string or an int index, not a bool")
    if isinstance(prediction, (int, np.integer)):
        return int(prediction) if 0 <= prediction < len(choices) else None
    text = _norm(prediction)
    if not text:
        return None
    normed = [_norm(c) for c in choices]
    hits = [i for i, c in enumerate(normed) if c == text]
    if len(hits) == 1:
        return hits[0]
    if hits:
        return None
    raw = prediction.strip()
    m = _LETTER.match(raw)
    if m:
        k = ord(m.group(1).upper()) - ord("A")
        return k if k < len(choices) else None
    m = _LETTER_TEXT.match(raw)
    if m:
        k = ord(m.group(1).upper()) - ord("A")
        if k < len(choices) and _norm(m.group(2)) == normed[k]:
            return k
    return None


def _report(name: str, correct: np.ndarray, n_boot: int, seed: int, info: dict[str, str]) -> MetricReport:
    scores = 100.0 * correct.astype(np.float64)
    ci = {name: mean_ci(scores, n_boot=n_boot, seed=seed)} if n_boot > 0 else {}
    info = {**info, "scale": "percent",
            "ci": f"percentile bootstrap 95%, {n_boot} resamples of samples, seed {seed}" if n_boot > 0 else "none",
            "n_samples": str(scores.size)}
    return MetricReport(values={name: float(scores.mean())}, ci=ci, per_sample={name: scores.tolist()},
                        primary=name, info=info)


def score_choice(choices: Sequence[Sequence[str]], answer_index: Sequence[int],
                 predictions: Sequence[str | int], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> MetricReport:
    """Multiple-choice accuracy in percent, with bootstrap CI and per-sample 0/100 scores."""
    if not (len(choices) == len(answer_index) == len(predictions)):
        raise ValueError(f"lengths differ: {len(choices)} choice lists, {len(answer_index)} answers, "
                         f"{len(predictions)} predictions")
    if not predictions:
        raise ValueError("no samples to score")
    picked = []
    for ch, gold, pred in zip(choices, answer_index, predictions):
        if gold is None or not 0 <= gold < len(ch):
            raise ValueError(f"gold index {gold!r} is not a valid index into {len(ch)} choices")
        picked.append(match_choice(pred, ch))
    correct = np.array([p is not None and p == g for p, g in zip(picked, answer_index)])
    info = {"matching": "choice text (case/space/trailing punctuation-insensitive), else option letter; "
                        "see tasks/metrics/choice.py",
            "n_unmatched": str(sum(p is None for p in picked))}
    return _report("accuracy", correct, n_boot, seed, info)


def exact_match(prediction: str, gold: str | Sequence[str]) -> bool:
    """Normalised exact match (official VQA normaliser on both sides); an empty prediction never matches."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == normalize_answer(g) for g in golds)


def score_exact(golds: Sequence[str | Sequence[str]], predictions: Sequence[str], *,
                n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> MetricReport:
    """Exact-match accuracy in percent (e.g. the invented word of a fast-binding episode)."""
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} gold answers but {len(predictions)} predictions")
    if not predictions:
        raise ValueError("no samples to score")
    correct = np.array([exact_match(p, g) for p, g in zip(predictions, golds)])
    info = {"matching": "exact match after the official VQA answer normalisation (case, punctuation, articles, "
                        "number words); a gold given as a list accepts any of its entries"}
    return _report("exact_match", correct, n_boot, seed, info)
