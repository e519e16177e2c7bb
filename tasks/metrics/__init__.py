"""Metrics: COCO caption metrics, official VQA accuracy, multiple choice, exact match, bootstrap.

Every scorer returns a :class:`~tasks.metrics.result.MetricReport` (a ``MetricResult`` with an
``info`` dict saying how the numbers were made) with bootstrap 95% CIs and per-sample scores for
paired tests. ``METRICS`` maps a task's metric family to ``fn(samples, predictions, *, n_boot,
seed)``; an empty prediction is a failed sample and always counts as wrong.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Protocol, Sequence

from tasks.base import MetricResult, Sample
from tasks.metrics.bootstrap import DEFAULT_N_BOOT, PairedResult, paired_bootstrap, paired_bootstrap_corpus
from tasks.metrics.caption import CAPTION_METRICS, corpus_metric, score_captions
from tasks.metrics.choice import exact_match, match_choice, score_choice, score_exact
from tasks.metrics.meteor import MeteorProcess
from tasks.metrics.result import MetricReport
from tasks.metrics.vqa import score_vqa, vqa_accuracy
from tasks.metrics.vqa_normalize import normalize_answer

__all__ = [
    "CAPTION_METRICS", "DEFAULT_N_BOOT", "METRICS", "MetricReport", "MeteorProcess", "PairedResult", "corpus_metric",
    "exact_match", "match_choice", "normalize_answer", "paired_bootstrap", "paired_bootstrap_corpus",
    "score_captions", "score_choice", "score_exact", "score_vqa", "vqa_accuracy",
]


class MetricFn(Protocol):
    """What a task's metric family resolves to."""

    def __call__(self, samples: Sequence[Sample], predictions: Sequence[str], *, n_boot: int = ...,
                 seed: int = ...) -> MetricResult: ...


def _check(samples: Sequence[Sample], predictions: Sequence[str]) -> None:
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")


def caption_metric(samples: Sequence[Sample], predictions: Sequence[str], *, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0, meteor_process: MeteorProcess | None = None) -> MetricResult:
    """COCO caption metrics; references from ``Sample.references`` (per-sample lists in sample order).

    A caller scoring many prediction sets passes one ``meteor_process`` to avoid a JVM start each time.
    """
    _check(samples, predictions)
    return score_captions({k: s.references for k, s in enumerate(samples)},
                          dict(enumerate(predictions)), n_boot=n_boot, seed=seed, meteor_process=meteor_process)


#: The VQA accuracy mode of ``mmbench run`` (recorded as the ``vqa_mode`` parameter of every VQA result).
RUN_VQA_MODE = "evalai"


def vqa_metric(samples: Sequence[Sample], predictions: Sequence[str], *, n_boot: int = DEFAULT_N_BOOT,
               seed: int = 0) -> MetricResult:
    """Official VQA accuracy (EvalAI mode, recorded in ``info["mode"]``); human answers from ``Sample.answers``.

    An empty prediction is a failed sample here (the runner passes "" for failures) and scores 0.
    """
    _check(samples, predictions)
    return score_vqa(samples, predictions, mode=RUN_VQA_MODE, empty="wrong", n_boot=n_boot, seed=seed)


def choice_metric(samples: Sequence[Sample], predictions: Sequence[str], *, n_boot: int = DEFAULT_N_BOOT,
                  seed: int = 0) -> MetricResult:
    """Multiple-choice accuracy from ``Sample.choices``/``Sample.answer_index``."""
    _check(samples, predictions)
    return score_choice([s.choices for s in samples], [s.answer_index for s in samples],  # type: ignore[misc]
                        predictions, n_boot=n_boot, seed=seed)


def exact_metric(samples: Sequence[Sample], predictions: Sequence[str], *, n_boot: int = DEFAULT_N_BOOT,
                 seed: int = 0) -> MetricResult:
    """Normalised exact match against ``Sample.answers[0]`` (the binding task's invented word)."""
    _check(samples, predictions)
    for s in samples:
        if not s.answers:
            raise ValueError(f"sample {s.sample_id!r} has no gold answer")
    return score_exact([s.answers[0] for s in samples], predictions, n_boot=n_boot, seed=seed)


METRICS: Mapping[str, MetricFn] = MappingProxyType({
    "caption": caption_metric,
    "vqa_accuracy": vqa_metric,
    "choice_accuracy": choice_metric,
    "exact_match": exact_metric,
})
