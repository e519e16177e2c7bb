"""Image -> text converters: what the text-conversion paradigm (PICa, PromptCap) puts in the prompt.

Each converter turns one kind of vision-model output into plain text. Offline they read the shared
:class:`~harness.models.tools.ToolBox` (object detector, ImageNet classifier, OCR, face detector);
:class:`ExpertConverter` reads one of the run's configured experts (``models.experts``: captioner,
VQA, DETR, OWL-ViT, the oracle, ...), the very instances the tool agents call;
:class:`CaptionModelConverter` is the older inline captioner spec, on the captioner expert's code. A
converter exposes its output twice: as separate *facts* (one detection, one label, one OCR line —
PromptCap's offline approximation ranks these against the question) and as one rendered string.

:class:`ConversionCache` computes a converter's output once per ``(settings, image_id)`` and reuses
it across tasks, shots and variants that share the cache.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, Sequence, Union

from PIL import Image
from pydantic import BaseModel, Field

from harness.config import Strict
from harness.experts.base import Fact
from harness.experts.captioner import Captioner, strip_prompt
from harness.experts.captioner import CaptionerSpec as _ExpertCaptionerSpec
from harness.models.packaged import ModelUnavailable
from harness.models.tools import describe_position

__all__ = ["Fact", "strip_prompt", "ModelUnavailable"]  # re-exported: their old home


# --------------------------------------------------------------------------- settings
class ObjectsSpec(Strict):
    """Object detections: label, and (optionally) a coarse position such as ``left`` or ``top right``."""

    kind: Literal["objects"] = "objects"
    min_score: float = Field(0.5, ge=0, le=1)
    max_items: int = Field(10, ge=1)
    positions: bool = True


class TagsSpec(Strict):
    """ImageNet classification labels (PICa's "tags")."""

    kind: Literal["tags"] = "tags"
    top_k: int = Field(5, ge=1)
    min_score: float = Field(0.05, ge=0, le=1)


class OcrSpec(Strict):
    """Text read in the image, one quoted string per recognised line."""

    kind: Literal["ocr"] = "ocr"
    min_score: float = Field(0.5, ge=0, le=1)
    max_lines: int = Field(5, ge=1)


class FacesSpec(Strict):
    """Number of faces; omitted when zero unless ``include_zero``."""

    kind: Literal["faces"] = "faces"
    include_zero: bool = False


class CaptionerSpec(Strict):
    """A hub or local image captioner (BLIP, GIT, ...); nothing like it ships in a reachable package registry."""

    kind: Literal["captioner"] = "captioner"
    model: str
    revision: str | None = None
    max_new_tokens: int = Field(30, ge=1)
    device: str = "cpu"


class ExpertConverterSpec(Strict):
    """One of the run's configured experts (``models.experts``) by name; no name: every configured
    expert that describes a whole image (captioner, oracle, detector, classifier, OCR, open-vocabulary
    detector with configured queries), in configured order. A VQA expert is used only when named; it
    is asked the sample's question."""

    kind: Literal["expert"] = "expert"
    name: str | None = None


ConverterSpec = Annotated[
    Union[ObjectsSpec, TagsSpec, OcrSpec, FacesSpec, CaptionerSpec, ExpertConverterSpec], Field(discriminator="kind")
]
DEFAULT_CONVERTERS: tuple[ConverterSpec, ...] = (ObjectsSpec(), TagsSpec(), OcrSpec(), FacesSpec())


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Conversion:
    """A converter's output for one image, with how it was obtained (for the trace and the cost)."""

    text: str
    facts: tuple[Fact, ...]
    tool_calls: int = 0
    seconds: float = 0.0


class ToolRunner(Protocol):
    def run(self, tool_name: str, image_id: str, image: Image.Image, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------- helpers
def render_facts(facts: Sequence[Fact]) -> str:
    """``Objects: dog (left), person. Scene tags: golden retriever.``

    Consecutive facts with the same label share one heading; the facts' order is kept exactly
    (PromptCap's offline variant orders them by relevance).
    """
    runs: list[tuple[str, list[str]]] = []
    for f in facts:
        if runs and runs[-1][0] == f.label:
            runs[-1][1].append(f.text)
        else:
            runs.append((f.label, [f.text]))
    return " ".join(f"{label}: {', '.join(texts)}." for label, texts in runs)


# --------------------------------------------------------------------------- converters
class Converter(ABC):
    """Turns an image into facts; ``key`` identifies its settings in caches."""

    spec: BaseModel
    is_caption: bool = False  # its facts are captions (PromptCap keeps them whole, unranked)
    oracle: bool = False  # its facts depend on the sample's withheld references

    @property
    def key(self) -> str:
        return self.spec.model_dump_json()

    @abstractmethod
    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        """Facts about the image (``question`` only matters to question-aware converters)."""

    def question_aware(self) -> bool:
        return False


class ObjectsConverter(Converter):
    """Reads the shared detector's cached output (its own threshold, 0.4) and filters it further."""

    def __init__(self, spec: ObjectsSpec, tools: ToolRunner) -> None:
        self.spec, self.tools = spec, tools

    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        kw = {"score_threshold": self.spec.min_score} if self.spec.min_score < 0.4 else {}
        out = self.tools.run("object_detector", image_id, image, **kw)
        dets = [d for d in out.items if d.score >= self.spec.min_score][: self.spec.max_items]
        return tuple(
            Fact("Objects", f"{d.label} ({describe_position(d.box)})" if self.spec.positions else d.label, d.score)
            for d in dets
        )


class TagsConverter(Converter):
    """ImageNet labels from the shared classifier (default top 5 above 0.05, like the tool's own)."""

    def __init__(self, spec: TagsSpec, tools: ToolRunner) -> None:
        self.spec, self.tools = spec, tools

    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        kw: dict[str, Any] = {}
        if self.spec.top_k > 5 or self.spec.min_score < 0.05:
            kw = {"top_k": self.spec.top_k, "min_score": self.spec.min_score}
        out = self.tools.run("image_classifier", image_id, image, **kw)
        items = [c for c in out.items if c.score >= self.spec.min_score][: self.spec.top_k]
        return tuple(Fact("Scene tags", c.label, c.score) for c in items)


class OcrConverter(Converter):
    def __init__(self, spec: OcrSpec, tools: ToolRunner) -> None:
        self.spec, self.tools = spec, tools

    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        kw = {"min_score": self.spec.min_score} if self.spec.min_score < 0.5 else {}
        out = self.tools.run("text_reader", image_id, image, **kw)
        lines = [t for t in out.items if t.score >= self.spec.min_score][: self.spec.max_lines]
        return tuple(Fact("Text in image", f"'{t.text}'", t.score, phrase=f"the text '{t.text}'") for t in lines)


class FacesConverter(Converter):
    def __init__(self, spec: FacesSpec, tools: ToolRunner) -> None:
        self.spec, self.tools = spec, tools

    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        n = len(self.tools.run("face_detector", image_id, image).items)
        if n == 0 and not self.spec.include_zero:
            return ()
        return (Fact("Faces", str(n), phrase=f"{n} face{'' if n == 1 else 's'}"),)


PROMPTCAP_CAPTION_PROMPT = "please describe this image according to the given question: {question}"


class CaptionModelConverter(Converter):
    """A real captioner (hub id or local folder), loaded on first use.

    ``facts(question=...)`` with a non-empty question asks the captioner PromptCap's question-aware
    prompt; captioners that take no text prompt (plain BLIP/GIT) are then conditioned on it as a prefix.
    """

    is_caption = True

    def __init__(self, spec: CaptionerSpec, prompt_template: str = "") -> None:
        self.spec = spec
        self.prompt_template = prompt_template
        # The same loading and decoding code as the "captioner" expert (harness/experts/captioner.py).
        self._expert = Captioner(_ExpertCaptionerSpec(
            model=spec.model, revision=spec.revision, max_new_tokens=spec.max_new_tokens, device=spec.device
        ))

    @property
    def key(self) -> str:
        return self.spec.model_dump_json() + "|" + self.prompt_template

    def question_aware(self) -> bool:
        return "{question}" in self.prompt_template

    def caption(self, image: Image.Image, prompt: str = "") -> str:
        try:
            return self._expert.caption(image, prompt)
        except ModelUnavailable as exc:
            raise ModelUnavailable(
                f"{exc} No captioner ships offline; or use the tool converters (objects, tags, ocr, faces)."
            ) from exc

    def facts(self, image_id: str, image: Image.Image, question: str = "") -> tuple[Fact, ...]:
        prompt = self.prompt_template.format(question=question) if self.prompt_template else ""
        text = self.caption(image, prompt)
        return (Fact("Caption", text),) if text else ()


class ExpertConverter(Converter):
    """Facts from one configured expert of the run's :class:`~harness.experts.ExpertRegistry`.

    A captioner is asked ``prompt_template`` (PromptCap's question-aware prompt) when the variant
    has one; a VQA expert is asked the sample's question; an oracle drops the sample's withheld
    references (:mod:`harness.experts.reference_captions`).
    """

    def __init__(self, spec: ExpertConverterSpec, registry: Any, name: str, prompt_template: str = "") -> None:
        self.spec, self.registry, self.name = spec, registry, name
        self.expert = registry.get(name)
        self.prompt_template = prompt_template if self.expert.kind == "captioner" else ""
        self.is_caption = self.expert.kind in ("captioner", "reference_captions")
        self.oracle = bool(self.expert.oracle)

    @property
    def key(self) -> str:
        return f"expert:{self.name}:{self.expert.fingerprint()}|{self.prompt_template}"

    def question_aware(self) -> bool:
        return self.expert.kind == "vqa" or "{question}" in self.prompt_template

    def facts(self, image_id: str, image: Image.Image, question: str = "", withheld: Sequence[str] = ()) -> tuple[Fact, ...]:
        if self.expert.kind == "vqa":
            if not question:
                return ()  # captioning: no question to ask
            query = question
        else:
            query = self.prompt_template.format(question=question) if self.prompt_template else ""
        return self.registry.run(self.name, image, query, withheld=withheld).facts


#: expert kinds a nameless ``{kind: expert}`` converter uses (each describes the whole image).
IMAGE_LEVEL_KINDS = ("captioner", "reference_captions", "detector", "classifier", "ocr", "open_vocab_detector")


def build_converters(spec: BaseModel, tools: ToolRunner | None, *, caption_prompt: str = "",
                     experts: Any = None) -> list[Converter]:
    """The converter(s) a spec describes: one, or for a nameless ``expert`` spec one per configured expert."""
    if isinstance(spec, ExpertConverterSpec):
        if experts is None or not len(experts):
            raise ValueError("converter {kind: expert} needs experts configured under models.experts")
        if spec.name is not None:
            if spec.name not in experts:
                raise ValueError(f"converter names no configured expert {spec.name!r}; configured: {list(experts.names)}")
            return [ExpertConverter(spec, experts, experts.get(spec.name).name, caption_prompt)]
        chosen = [e for e in experts if e.kind in IMAGE_LEVEL_KINDS
                  and (e.kind != "open_vocab_detector" or getattr(e.spec, "queries", ()))]
        if not chosen:
            raise ValueError(f"no configured expert describes a whole image; kinds that do: {IMAGE_LEVEL_KINDS}")
        return [ExpertConverter(spec, experts, e.name, caption_prompt) for e in chosen]
    return [build_converter(spec, tools, caption_prompt=caption_prompt)]


def build_converter(spec: BaseModel, tools: ToolRunner | None, *, caption_prompt: str = "") -> Converter:
    """The converter a spec describes; ``tools`` is only touched when a tool converter runs."""
    if isinstance(spec, CaptionerSpec):
        return CaptionModelConverter(spec, caption_prompt)
    table: dict[type, type[Converter]] = {
        ObjectsSpec: ObjectsConverter, TagsSpec: TagsConverter, OcrSpec: OcrConverter, FacesSpec: FacesConverter
    }
    for cls, conv in table.items():
        if isinstance(spec, cls):
            if tools is None:
                raise ValueError(f"converter {spec.kind!r} needs the tool box")
            return conv(spec, tools)  # type: ignore[abstract]
    raise TypeError(f"unknown converter spec {type(spec).__name__}")


# --------------------------------------------------------------------------- cache + composite
@dataclass
class ConversionCache:
    """Converter outputs keyed by (converter settings, image id[, question]); owned by whoever shares it."""

    entries: dict[tuple[str, str, str], Conversion] = field(default_factory=dict)

    def get(
        self, conv: Converter, image_id: str, image: Image.Image, question: str = "", withheld: Sequence[str] = ()
    ) -> Conversion:
        q = question if conv.question_aware() else ""
        w = "\x1f".join(withheld) if conv.oracle else ""
        k = (conv.key, image_id, q + ("\x1e" + w if w else ""))
        hit = self.entries.get(k)
        if hit is not None:
            return Conversion(hit.text, hit.facts, tool_calls=0, seconds=0.0)
        t0 = time.perf_counter()
        facts = conv.facts(image_id, image, q, withheld) if conv.oracle else conv.facts(image_id, image, q)
        res = Conversion(render_facts(facts), facts, 1, time.perf_counter() - t0)
        self.entries[k] = res
        return res


class CompositeConverter:
    """Several converters joined into one context string, in the configured order."""

    def __init__(self, converters: Sequence[Converter], cache: ConversionCache) -> None:
        self.converters = list(converters)
        self.cache = cache

    def convert(
        self, image_id: str, image: Image.Image | None, question: str = "", withheld: Sequence[str] = ()
    ) -> Conversion:
        if image is None:
            raise ValueError(f"image {image_id!r} is missing")
        parts = [self.cache.get(c, image_id, image, question, withheld) for c in self.converters]
        facts = tuple(f for p in parts for f in p.facts)
        return Conversion(
            " ".join(p.text for p in parts if p.text),
            facts,
            sum(p.tool_calls for p in parts),
            sum(p.seconds for p in parts),
        )
