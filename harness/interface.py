"""The one contract every paradigm implements: ``answer(image, prompt, shots) -> Answer``.

The runner only ever calls :meth:`Paradigm.answer_batch`; ``answer`` is the single-sample
convenience form and is defined in terms of it, so the two cannot drift apart. Images are
identified by their content (:func:`image_id_of`) in both: paradigms cache per-image work (tool
outputs, conversions, encoder features) under that id.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from harness.backbones import Backbones
    from harness.models.llm import GenerationSettings
    from harness.training import TrainResult

TaskKind = Literal["caption", "vqa", "multiple_choice", "binding"]

#: The shared backbones a paradigm may declare in ``uses``: the keys of
#: :meth:`harness.backbones.Backbones.fingerprints`, whose values enter the paradigm's cache keys.
BACKBONE_NAMES: tuple[str, ...] = ("llm", "text_embedder", "tools", "scorer", "vision_encoder")


def image_id_of(img: Image.Image) -> str:
    """Content id of a decoded image: equal pixels -> equal id, whatever file it came from."""
    h = hashlib.sha1()
    h.update(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Shot:
    """One in-context demonstration: an image, the prompt it was asked with and the expected answer.

    ``image_id`` identifies the image for per-image caches; left empty (``""``) it is computed from
    the image's content (:func:`image_id_of`), so two different images never share one.
    """

    sample_id: str
    image_id: str
    image: Image.Image | None
    prompt: str
    answer: str
    question: str = ""  # the raw question (empty for captioning); ``prompt`` is the rendered template
    choices: tuple[str, ...] = ()  # the demonstration's options (multiple choice)
    meta: Mapping[str, Any] = field(default_factory=dict)  # the dataset's extra fields (e.g. ScienceQA hint, lecture)

    def __post_init__(self) -> None:
        if not self.image_id and self.image is not None:
            object.__setattr__(self, "image_id", image_id_of(self.image))


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


#: The failure counters of :class:`Answer` (fields) and their types.
COUNTERS: Mapping[str, type] = MappingProxyType({"parse_errors": int, "budget_exhausted": bool, "tool_failures": int})


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
    # Failure counters, summed per unit into the report's failure columns (harness/unit_result.py).
    parse_errors: int = 0
    """Outputs not in the expected format (an agent's malformed action, an unparsed option letter)."""
    tool_failures: int = 0
    """Tool calls that raised (the agent was shown the failure instead of the tool's output)."""
    budget_exhausted: bool = False
    """An agent ran out of steps or tokens and was made to answer."""

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
    def from_exception(cls, exc: BaseException, *, about: str = "", **trace: Any) -> "Answer":
        """A failed sample from ``exc``, transient or deterministic by :func:`harness.failures.is_transient`;
        ``about`` names what failed (the reason reads ``"<about>: <exception>"``)."""
        from harness.failures import describe, is_transient

        reason = f"{about}: {describe(exc)}" if about else describe(exc)
        return cls(text="", error=reason, trace=dict(trace), transient=is_transient(exc))

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
            "parse_errors": self.parse_errors,
            "tool_failures": self.tool_failures,
            "budget_exhausted": self.budget_exhausted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Answer":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        trace = d.get("trace")
        if isinstance(trace, dict):  # cached before the counters were fields, they sat in the trace
            for name, kind in COUNTERS.items():
                if name not in kw and trace.get(name) is not None:
                    kw[name] = kind(trace[name])
        return cls(**kw)


@dataclass(frozen=True)
class TrainingRecord:
    """What a paradigm's one-time training produced: logged to MLflow as a nested run and summarised
    by ``mmbench train`` (harness/training_run.py)."""

    result: "TrainResult"
    checkpoint: Path | None
    stage1: "TrainResult | None" = None  # a first training stage run before ``result`` (BLIP-2's stage 1)
    stage1_checkpoint: Path | None = None


class Paradigm(ABC):
    """Base class of every paradigm variant.

    Subclasses set ``family`` (one of :data:`harness.registry.FAMILIES`) and ``variant``, declare a
    strict pydantic ``Options`` model (validated before any compute) and ``uses``, and implement
    ``answer_batch``; :func:`harness.registry.register_paradigm` checks all of it at import.
    They receive the run's shared :class:`~harness.backbones.Backbones` and must not load their own
    copies of the LLM, scorer or tools.
    """

    family: ClassVar[str]
    variant: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type]  # a harness.config.Strict subclass (pydantic, extra="forbid")
    #: Which shared backbones (:data:`BACKBONE_NAMES`) this variant reads; only their fingerprints
    #: enter its cache keys. No default: every registered variant declares it in its own body.
    uses: ClassVar[tuple[str, ...]]
    #: Whether ``prepare`` trains something that ``mmbench train`` may run on its own (a connector).
    has_training_step: ClassVar[bool] = False
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
        #: The folder of what ``prepare`` trained or converted (set by paradigms that train); with
        #: several processes rank 0 sends it to the others (harness/distributed.py).
        self.checkpoint_dir: Path | None = None

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

    def training_record(self) -> TrainingRecord | None:
        """What ``prepare`` trained or loaded (loss curve, checkpoint), None if it trains nothing.

        Read after ``prepare`` to log the training; trained paradigms override it. Default: None.
        """
        return None

    @abstractmethod
    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer several samples at once. Must return one Answer per request, in order.

        A sample that fails for a reason of its own comes back as ``Answer.failed(reason)``. If the
        batch as a whole raises, the runner answers its samples one by one (``harness.chunking``), so
        only the failing sample fails; raise :class:`RetryableFailure` only when no sample can be
        answered (an endpoint down).
        """

    def answer(
        self,
        image: Image.Image | None,
        prompt: str,
        shots: Sequence[Shot] = (),
        *,
        kind: TaskKind = "vqa",
        choices: Sequence[str] = (),
        image_id: str | None = None,
        question: str = "",
        max_new_tokens: int = 16,
    ) -> Answer:
        """Answer one sample. ``image_id`` defaults to the image's content id (as the runner's), so
        per-image caches never hand one image's results to another; shots built with an empty
        ``image_id`` get theirs the same way (:class:`Shot`)."""
        if image_id is None:
            image_id = image_id_of(image) if image is not None else "no-image"
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
