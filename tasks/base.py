"""Data types shared by datasets, tasks and metrics.

A *dataset loader* turns a source (an embedded suite, a local folder in a standard format, a hub
dataset) into :class:`Dataset` objects of :class:`Sample`. A *task* (one YAML file in
``tasks/specs``) says which dataset and split to evaluate, how to phrase the prompt and which
metric scores it. Images are loaded lazily through ``Sample.load_image`` so that a corrupt or
missing file fails only its own sample.
"""

from __future__ import annotations

import hashlib
import json
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

    Content digests (the cache keys are built from these, never from ``sample_id`` alone):
    - :meth:`image_digest` hashes the image *file's bytes* when ``load_image`` has a ``digest()``
      method (file-backed loaders: :func:`tasks.datasets._common.lazy_file_image`), else the
      decoded pixels; a missing or unreadable image gets a digest naming why, so fixing it
      changes the key. Loaders need do nothing beyond using ``lazy_file_image`` for files.
    - :meth:`annotation_digest` hashes the sample's own annotation content (question, references,
      answers, choices, answer index, and the episode's annotation digests), so fixing one
      sample's annotation changes only that sample's key.
    Both are computed once per sample object and then remembered.
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
    _digests: dict[str, str] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def image_digest(self) -> str:
        """Digest of the image's content (file bytes, else pixels), or of why it cannot be read."""
        if "image" not in self._digests:
            self._digests["image"] = _image_digest(self.load_image)
        return self._digests["image"]

    def annotation_digest(self) -> str:
        """Digest of this sample's annotation content (not its id, not its image)."""
        if "annotation" not in self._digests:
            content = {
                "question": self.question,
                "references": list(self.references),
                "answers": list(self.answers),
                "choices": list(self.choices),
                "answer_index": self.answer_index,
                "episode": [[e.sample_id, e.annotation_digest()] for e in self.episode],
            }
            blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            self._digests["annotation"] = hashlib.sha256(blob.encode()).hexdigest()[:20]
        return self._digests["annotation"]

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


def _image_digest(load_image: Callable[[], Image.Image]) -> str:
    digest = getattr(load_image, "digest", None)
    try:
        if callable(digest):
            return str(digest())
        img = load_image()
    except Exception as exc:  # noqa: BLE001 - the sample fails later with this reason; the key says so
        return "unreadable:" + hashlib.sha256(f"{type(exc).__name__}: {exc}".encode()).hexdigest()[:12]
    h = hashlib.sha256(f"pixels:{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:20]


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
