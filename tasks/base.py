"""Data types shared by datasets, tasks and metrics.

A *dataset loader* turns a source (an embedded suite, a local folder in a standard format, a hub
dataset) into :class:`Dataset` objects of :class:`Sample`. A *task* (one YAML file in
``tasks/specs``) says which dataset and split to evaluate, how to phrase the prompt and which
metric scores it. Images are loaded lazily through ``Sample.load_image`` so that a corrupt or
missing file fails only its own sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One evaluation item.

    - captioning: ``references`` holds the human captions.
    - VQA: ``question`` and ``answers`` (the 10 human answers of VQAv2, or however many exist).
    - multiple choice: ``question``, ``choices`` and ``answer_index``.
    - binding (Frozen-style fast concept binding): ``episode`` holds the support samples whose
      ``answers[0]`` is the invented word; ``answers`` holds the query's correct word.
    ``image_ref`` says where the image comes from (a path or a generator reference) for provenance.
    """

    sample_id: str
    image_ref: str
    load_image: Callable[[], Image.Image] = field(compare=False, repr=False, hash=False)
    question: str = ""
    references: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    episode: tuple["Sample", ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def gold_text(self) -> str:
        """The single answer used when this sample serves as an in-context demonstration."""
        if self.choices and self.answer_index is not None:
            return self.choices[self.answer_index]
        if self.answers:
            return majority_answer(self.answers)
        if self.references:
            return self.references[0]
        return ""


def majority_answer(answers: Sequence[str]) -> str:
    """Most frequent answer (ties: first seen) — the usual demonstration answer for VQA shots."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a])


@dataclass(frozen=True)
class Dataset:
    """A split of a dataset with where it came from (reported in the run's parameters)."""

    name: str
    split: str
    source: str
    samples: tuple[Sample, ...]
    license: str = ""

    def __len__(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class MetricResult:
    """Metric values with their bootstrap 95% CIs.

    ``per_sample`` holds a per-sample score per metric where one exists (used for the paired
    bootstrap test between paradigms). ``unavailable`` maps a metric name to the reason it could
    not be computed (e.g. SPICE without its CoreNLP jars) — such a metric is never reported as 0.
    """

    values: Mapping[str, float]
    ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    per_sample: Mapping[str, Sequence[float]] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    primary: str = ""
