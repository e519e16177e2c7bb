"""The one contract every paradigm implements: ``answer(image, prompt, shots) -> Answer``.

The runner only ever calls :meth:`Paradigm.answer_batch`; ``answer`` is the single-sample
convenience form and is defined in terms of it, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from harness.backbones import Backbones
    from harness.models.llm import GenerationSettings

TaskKind = Literal["caption", "vqa", "multiple_choice", "binding"]
TASK_KINDS: tuple[str, ...] = ("caption", "vqa", "multiple_choice", "binding")


@dataclass(frozen=True)
class Shot:
    """One in-context demonstration: an image, the prompt it was asked with and the expected answer."""

    sample_id: str
    image_id: str
    image: Image.Image | None
    prompt: str
    answer: str
    question: str = ""  # the raw question (empty for captioning); ``prompt`` is the rendered template
    choices: tuple[str, ...] = ()  # the demonstration's options (multiple choice)
    meta: Mapping[str, Any] = field(default_factory=dict)  # the dataset's extra fields (e.g. ScienceQA hint, lecture)


@dataclass(frozen=True)
class Request:
    """Everything a paradigm may look at to answer one sample.

    ``image_id`` is a stable content identifier (used for per-image caches of tool outputs and
    embeddings); ``kind`` tells a paradigm which answer form is expected; ``choices`` is set for
    multiple-choice tasks, where the answer must be one of them.
    """

    sample_id: str
    image_id: str
    image: Image.Image | None
    prompt: str
    shots: tuple[Shot, ...] = ()
    kind: TaskKind = "vqa"
    choices: tuple[str, ...] = ()
    question: str = ""
    max_new_tokens: int = 16
    meta: Mapping[str, Any] = field(default_factory=dict)  # the dataset's extra fields (e.g. ScienceQA hint)
    #: the sample's scored references/answers: an oracle expert never shows them (harness/experts)
    withheld: tuple[str, ...] = ()


class RetryableFailure(RuntimeError):
    """No answer could be had for a reason outside the sample (an LLM endpoint down or refusing us
    after its retries). The runner caches nothing of the batch and stops the run with this message;
    answers of earlier batches stay cached, so the same command run again resumes."""


@dataclass
class Answer:
    """A paradigm's answer and what it cost. ``error`` set means the sample failed (scored as wrong)."""

    text: str
    latency_s: float = 0.0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    tool_calls: int = 0
    trainable_params: int = 0
    error: str | None = None
    trace: dict[str, Any] = field(default_factory=dict)
    transient: bool = False
    """Set with ``error`` when the failure may not repeat (out of memory, I/O error, timeout, server
    error after retries): the runner reports it and never caches it, so the next run retries it.
    Never stored (a cached answer is by definition not transient)."""

    @classmethod
    def failed(cls, reason: str, **trace: Any) -> "Answer":
        """A failed sample. Deterministic (undecodable image, overlong prompt: cached with its reason)
        unless called while handling an exception that :func:`harness.failures.is_transient` calls
        transient (out of memory, I/O, timeout), so a paradigm's ``except Exception: return
        Answer.failed(...)`` never caches an OOM."""
        import sys

        from harness.failures import is_transient

        handling = sys.exc_info()[1]
        transient = handling is not None and is_transient(handling)
        return cls(text="", error=reason, trace=dict(trace), transient=transient)

    @classmethod
    def from_exception(cls, exc: BaseException, **trace: Any) -> "Answer":
        """A failed sample from ``exc``, transient or deterministic by :func:`harness.failures.is_transient`."""
        from harness.failures import describe, is_transient

        return cls(text="", error=describe(exc), trace=dict(trace), transient=is_transient(exc))

    @classmethod
    def retryable(cls, reason: str, **trace: Any) -> "Answer":
        """A transient failure: scored as wrong in this run, not cached, retried by the next run."""
        return cls(text="", error=reason, trace=dict(trace), transient=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "latency_s": self.latency_s,
            "llm_tokens_in": self.llm_tokens_in,
            "llm_tokens_out": self.llm_tokens_out,
            "tool_calls": self.tool_calls,
            "trainable_params": self.trainable_params,
            "error": self.error,
            "trace": self.trace,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Answer":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Paradigm(ABC):
    """Base class of every paradigm variant.

    Subclasses set ``family`` (one of the four paradigms) and ``variant``, declare a pydantic
    ``Options`` model (validated before any compute), and implement ``answer_batch``.
    They receive the run's shared :class:`~harness.backbones.Backbones` and must not load their own
    copies of the LLM, scorer or tools.
    """

    family: ClassVar[str]
    variant: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type]  # a pydantic BaseModel subclass with extra="forbid"
    #: Which shared backbones this paradigm reads; only their fingerprints enter its cache keys.
    uses: ClassVar[tuple[str, ...]] = ("llm",)
    #: Options that change only speed or memory, never an answer (batch sizes whose batched answers
    #: a test shows equal to one-by-one answers): left out of the cache key, so changing them
    #: reuses cached answers.
    speed_only: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, backbones: "Backbones", options: Any, generation: "GenerationSettings") -> None:
        self.backbones = backbones
        self.options = options
        self.generation = generation
        # Whether one-time work in prepare() (training, adaptation) may draw progress bars; the
        # runner sets it from `mmbench run --no-progress`.
        self.progress = True

    @property
    def name(self) -> str:
        return f"{self.family}/{self.variant}"

    def fingerprint(self) -> dict[str, Any]:
        """What, besides the shared backbones, determines this paradigm's answers (for the cache key)."""
        return {"paradigm": self.name, "options": self.keyed_options()}

    def keyed_options(self) -> dict[str, Any]:
        """The options as they enter the cache key: all but the ``speed_only`` ones."""
        return {k: v for k, v in self.options.model_dump(mode="json").items() if k not in self.speed_only}

    def prepare(self) -> None:
        """One-off work before answering (training an adapter, adapting an LM); cached by the paradigm.

        Called by the runner only when some sample actually needs computing. Default: nothing.
        """

    @abstractmethod
    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer several samples at once. Must return one Answer per request, in order.

        A failure of one sample must come back as ``Answer.failed(reason)`` rather than raise.
        """

    def answer(
        self,
        image: Image.Image | None,
        prompt: str,
        shots: Sequence[Shot] = (),
        *,
        kind: TaskKind = "vqa",
        choices: Sequence[str] = (),
        image_id: str = "image",
        question: str = "",
        max_new_tokens: int = 16,
    ) -> Answer:
        req = Request(
            sample_id="single",
            image_id=image_id,
            image=image,
            prompt=prompt,
            shots=tuple(shots),
            kind=kind,
            choices=tuple(choices),
            question=question or prompt,
            max_new_tokens=max_new_tokens,
        )
        return self.answer_batch([req])[0]


class Timer:
    """Wall-clock timer used to fill ``Answer.latency_s`` (per-sample share of a batch)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
