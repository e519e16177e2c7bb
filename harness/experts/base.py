"""The vision-expert interface shared by the tool agents (as tools) and text conversion (as converters).

An *expert* turns an image (and, for some kinds, a text query) into text: a caption, an answer,
detections, OCR lines, labels. Each expert kind lives in one file of :mod:`harness.experts` with
its settings model (a ``kind`` literal, pydantic, strict) and its :class:`Expert` subclass; the
kind registers itself with :func:`register_kind`. A run configures its experts once
(``models.experts`` in the YAML) and every paradigm of the run reads the same instances through
one :class:`ExpertRegistry`, which caches outputs per expert fingerprint and *image content*.
Models load on first use, never at construction, so building the registry (and computing cache
keys) is free.
"""

from __future__ import annotations

import hashlib
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Sequence

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from harness.models.packaged import ModelUnavailable


class ExpertSpecBase(BaseModel):
    """Settings every expert shares: the agent-facing ``name`` and ``description`` (defaults per kind)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    name: str | None = Field(None, min_length=1, max_length=60)
    description: str | None = Field(None, min_length=10, max_length=400)


class HFExpertSpec(ExpertSpecBase):
    """An expert backed by a transformers checkpoint: a hub id or a local folder (remote code never runs)."""

    model: str = Field(min_length=1)
    revision: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Fact:
    """One statement about an image: ``label`` names its kind (``Objects``), ``text`` its content."""

    label: str
    text: str
    score: float | None = None
    phrase: str = ""  # how the fact reads in a sentence; what relevance ranking embeds

    @property
    def ranking_text(self) -> str:
        return self.phrase or self.text


@dataclass(frozen=True)
class ExpertResult:
    """What an expert says about one image: ``text`` is what an agent reads, ``facts`` what a converter writes.

    ``boxes`` (label, score, (x0, y0, x1, y1) in pixels) is kept for experts that localise, so
    MM-REACT's combined observation can print coordinates as its authors' service did.
    """

    text: str
    facts: tuple[Fact, ...] = ()
    boxes: tuple[tuple[str, float, tuple[int, int, int, int]], ...] = ()


class Expert(ABC):
    """One configured vision expert. Subclasses set ``kind``, the defaults and ``_run``."""

    kind: ClassVar[str]
    default_name: ClassVar[str]
    default_description: ClassVar[str]
    #: ``query`` is required (VQA question, open-vocabulary object names) rather than optional.
    needs_query: ClassVar[bool] = False
    #: what ``query`` means, for the agent's tool description and errors ("the question").
    query_meaning: ClassVar[str] = ""
    #: True only for the oracle: its output must never contain a sample's scored references.
    oracle: ClassVar[bool] = False

    def __init__(self, spec: ExpertSpecBase, tools: Callable[[], Any] | None = None) -> None:
        self.spec = spec
        self._tools = tools  # the run's packaged ToolBox, for experts that wrap a packaged model
        self._lock = threading.RLock()
        self._loaded: Any = None

    @property
    def name(self) -> str:
        return self.spec.name or self.default_name

    @property
    def description(self) -> str:
        return self.spec.description or self.default_description

    def fingerprint(self) -> str:
        """Identity of the expert's outputs for cache keys (settings + weights' identity); loads nothing."""
        return f"{self.kind}:{self.spec.model_dump_json(exclude={'name', 'description'})}"

    def model(self) -> Any:
        """The loaded model (first call loads it, under the expert's lock)."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def toolbox(self) -> Any:
        """The run's :class:`~harness.models.tools.ToolBox` (packaged experts share its models and cache)."""
        if self._tools is None:
            from harness.models.tools import ToolBox

            self._tools = (lambda box=ToolBox(): box)
        return self._tools()

    @abstractmethod
    def _load(self) -> Any:
        """Load weights/processors; raise :class:`ModelUnavailable` with a fix when impossible."""

    @abstractmethod
    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        """One uncached call."""

    def finalize(self, result: ExpertResult, withheld: Sequence[str]) -> ExpertResult:
        """Per-request view of a cached output (only the oracle uses ``withheld``)."""
        return result

    def __call__(self, image: Image.Image, query: str = "") -> ExpertResult:
        if self.needs_query and not query.strip():
            raise ValueError(f"{self.name} needs {self.query_meaning or 'a text query'}")
        with self._lock:  # models keep per-call state; one caller at a time per expert
            return self._run(image, query)


# ------------------------------------------------------------------------------ kinds

_KINDS: dict[str, tuple[type[ExpertSpecBase], type[Expert]]] = {}


def register_kind(spec_cls: type[ExpertSpecBase]) -> Callable[[type[Expert]], type[Expert]]:
    """Class decorator: ``@register_kind(MySpec)`` on the expert class of one kind file."""

    def deco(cls: type[Expert]) -> type[Expert]:
        kind = spec_cls.model_fields["kind"].default
        if kind in _KINDS:
            raise ValueError(f"expert kind {kind!r} registered twice")
        cls.kind = kind
        _KINDS[kind] = (spec_cls, cls)
        return cls

    return deco


def expert_kinds() -> dict[str, tuple[type[ExpertSpecBase], type[Expert]]]:
    return dict(_KINDS)


# ------------------------------------------------------------------------------ helpers


def image_content_key(image: Image.Image) -> str:
    """Content hash of decoded pixels: the per-image cache key (equal pixels -> equal key)."""
    h = hashlib.sha1()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:20]


def normalise_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: how withheld references are matched."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def load_hf(spec: HFExpertSpec, model_cls: Any, processor_cls: Any, what: str) -> tuple[Any, Any]:
    """``from_pretrained`` of a model and its processor, remote code off; a clear error when missing."""
    kw: dict[str, Any] = {"trust_remote_code": False}
    if spec.revision:
        kw["revision"] = spec.revision
    try:
        processor = processor_cls.from_pretrained(spec.model, **kw)
        model = model_cls.from_pretrained(spec.model, **kw).to(spec.device).eval()
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"{what} {spec.model!r} cannot be loaded ({type(exc).__name__}: {exc}). Without the model hub, "
            "point 'model' at a local folder holding the checkpoint."
        ) from exc
    return model, processor


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A pixel box clamped to the image."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        int(round(min(max(x0, 0), w))), int(round(min(max(y0, 0), h))),
        int(round(min(max(x1, 0), w))), int(round(min(max(y1, 0), h))),
    )  # fmt: skip


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int


class ExpertRegistry:
    """The run's configured experts by name, with one output cache keyed by image content.

    The key is (expert fingerprint, image content hash, query): two paradigms asking the same
    expert about the same pixels share one call, whatever id they know the image by.
    """

    def __init__(self, experts: Iterable[Expert] = ()) -> None:
        self._experts: dict[str, Expert] = {}
        for e in experts:
            low = e.name.lower()
            if low in self._experts:
                raise ValueError(f"two experts are named {e.name!r}; give one a different 'name'")
            self._experts[low] = e
        self._cache: dict[tuple[str, str, str], ExpertResult] = {}
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._experts.values())

    def __len__(self) -> int:
        return len(self._experts)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._experts

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._experts.values())

    def get(self, name: str) -> Expert:
        try:
            return self._experts[name.lower()]
        except KeyError:
            raise KeyError(f"no expert named {name!r}; configured: {list(self.names) or 'none'}") from None

    def of_kind(self, *kinds: str) -> list[Expert]:
        return [e for e in self._experts.values() if e.kind in kinds]

    def fingerprint(self) -> str:
        """Every expert's name and fingerprint in configured order ('' when none is configured)."""
        return "; ".join(f"{e.name}={e.fingerprint()}" for e in self._experts.values())

    def run(self, name: str, image: Image.Image, query: str = "", withheld: Sequence[str] = ()) -> ExpertResult:
        """One expert's output for ``image`` (cached); an oracle drops ``withheld`` texts (see reference_captions)."""
        expert = self.get(name)
        key = (expert.fingerprint(), image_content_key(image), query)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._hits += 1
        if hit is None:
            hit = expert(image, query)
            with self._lock:
                self._misses += 1
                hit = self._cache.setdefault(key, hit)
        return expert.finalize(hit, withheld)

    def any_loaded(self) -> bool:
        """Whether any expert has loaded its model (building the registry loads none)."""
        return any(e._loaded is not None for e in self)

    def cache_stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._cache))


class OracleLeak(RuntimeError):
    """Every text an oracle holds for an image is a reference the sample is scored against."""


def withhold(result: ExpertResult, withheld: Sequence[str], name: str) -> ExpertResult:
    """``result`` without facts equal (after :func:`normalise_text`) to a withheld text.

    Raises :class:`OracleLeak` when nothing would remain (e.g. the captioning task's own
    references as the caption source): the sample then fails with that reason instead of being
    silently answered with no context.
    """
    banned = {normalise_text(t) for t in withheld if t.strip()}
    if not banned:
        return result
    kept = tuple(f for f in result.facts if normalise_text(f.text) not in banned)
    if result.facts and not kept:
        raise OracleLeak(
            f"{name}: every caption of this image is one of the references the sample is scored against; "
            "name a caption source other than the task's own references"
        )
    if len(kept) == len(result.facts):
        return result
    return ExpertResult(render_lines(kept), kept, result.boxes)


def render_lines(facts: Sequence[Fact]) -> str:
    return "\n".join(f.text for f in facts)
