"""The tools a tool-using agent may call, as the agent sees them: name, one-line description, typed inputs.

The agent's LLM only ever *names* a tool and writes its input as text. That text is parsed into a
typed pydantic model (:class:`ImageInput` / :class:`ImageQueryInput`) and checked against this
registry before anything runs, so no LLM output is ever executed. Each tool wraps a shared
backbone: the :class:`~harness.models.tools.ToolBox` experts (their outputs are cached per image
there) or the run's image–text scorer, whose name is printed with every answer it gives so a
tag-embedding scorer is never mistaken for CLIP.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from PIL import Image
from pydantic import Field, ValidationError

from harness.config import Strict

if TYPE_CHECKING:  # pragma: no cover
    from harness.backbones import Backbones

IMAGE_PATH_RE = r"image/[0-9a-f]{8}\.png"


def image_path(image_id: str) -> str:
    """The file name an agent uses for an image (Visual ChatGPT style), stable across runs."""
    return f"image/{hashlib.sha1(image_id.encode()).hexdigest()[:8]}.png"


class ImageInput(Strict):
    """Input of a tool that looks at one image."""

    image: str = Field(pattern=f"^{IMAGE_PATH_RE}$")


class ImageQueryInput(ImageInput):
    """Input of a tool that checks an image against a short text (e.g. 'a red car')."""

    query: str = Field(min_length=1, max_length=200)


class ToolInputError(ValueError):
    """The agent named an unknown tool or wrote input that does not fit the tool's arguments."""


@dataclass(frozen=True)
class ImageRef:
    """An image the agent may refer to by ``path``; ``image_id`` keys the tool caches."""

    path: str
    image_id: str
    image: Image.Image
    withheld: tuple[str, ...] = ()  # the sample's scored references: an oracle expert never shows them


ToolFn = Callable[[ImageRef, ImageInput], str]


@dataclass(frozen=True)
class AgentTool:
    """One callable tool. ``request`` is the natural-language request MM-REACT's watchword uses;
    ``keywords`` route such a request to this tool."""

    name: str
    description: str
    args: type[ImageInput]
    fn: ToolFn
    request: str
    keywords: tuple[str, ...]

    @property
    def takes_query(self) -> bool:
        return issubclass(self.args, ImageQueryInput)


class ToolRegistry:
    """Name -> tool table with validation; the only path from LLM text to a tool call."""

    def __init__(self, tools: list[AgentTool]) -> None:
        names = [t.name for t in tools]
        if len(set(n.lower() for n in names)) != len(names):
            raise ValueError(f"duplicate tool names: {names}")
        self._tools = {t.name.lower(): t for t in tools}
        self.order = tuple(names)

    def __contains__(self, name: str) -> bool:
        return _norm(name) in self._tools

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self._tools[n.lower()] for n in self.order)

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> AgentTool:
        tool = self._tools.get(_norm(name))
        if tool is None:
            raise ToolInputError(f"unknown tool {name.strip()!r}; tools: {', '.join(self.order)}")
        return tool

    def validate(self, name: str, fields: Mapping[str, Any]) -> tuple[AgentTool, ImageInput]:
        """Look the tool up and type-check its input; raises :class:`ToolInputError`."""
        tool = self.get(name)
        try:
            return tool, tool.args.model_validate(dict(fields))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolInputError(f"bad input for {tool.name}: {problems}") from None

    def run(self, tool: AgentTool, args: ImageInput, images: Mapping[str, ImageRef]) -> str:
        """Run a validated call on an image of this session (``ToolInputError`` if the path is unknown)."""
        ref = images.get(args.image)
        if ref is None:
            known = ", ".join(images) or "none"
            raise ToolInputError(f"no image named {args.image}; images: {known}")
        return tool.fn(ref, args)

    def route(self, request: str, fallback: str | None = None) -> AgentTool | None:
        """MM-REACT routing: the first tool (in registry order) whose keyword occurs in the request;
        else ``fallback`` (MM-REACT sends every other request to its image-understanding expert)."""
        low = request.lower()
        for tool in self:
            if any(re.search(rf"\b{re.escape(k)}", low) for k in tool.keywords):
                return tool
        return self._tools.get(fallback.lower()) if fallback else None


def _norm(name: str) -> str:
    return name.strip().strip("`'\"[]").strip().lower()


# ---------------------------------------------------------------------------------- building


class AgentToolsOptions(Strict):
    """Which tools the agent gets and how the scorer tool decides yes/no."""

    tools: tuple[str, ...] | None = None  # names to keep (default: all available)
    scorer_threshold: float = 0.3
    max_observation_chars: int = Field(600, ge=50)
    image_understanding: bool = False  # add MM-REACT's combined expert (caption+tags+objects+faces+OCR)


#: ToolBox tool -> (agent-facing name, description, MM-REACT request, routing keywords). Each is
#: replaced by a configured expert of the same name (e.g. a DETR "Detect Objects").
TOOLBOX_TOOLS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "object_detector",
        "Detect Objects",
        "useful when you want to know which objects are in the image and where they are. "
        "The input to this tool should be a string, representing the image_path.",
        "what objects do you see in this image?",
        ("object", "detect", "what is in", "count", "how many"),
    ),
    (
        "image_classifier",
        "Classify Image",
        "useful when you want to know the main category of the whole image (its most likely ImageNet labels). "
        "The input to this tool should be a string, representing the image_path.",
        "what tags describe this image?",
        ("tag", "classif", "categor", "label", "kind of"),
    ),
    (
        "text_reader",
        "Read Text",
        "useful when you need the words written in the image (signs, labels, pages). "
        "The input to this tool should be a string, representing the image_path.",
        "what OCR text do you see in this image?",
        ("ocr", "text", "read", "written", "word"),
    ),
    (
        "face_detector",
        "Detect Faces",
        "useful when you want to find and count the human faces in the image. "
        "The input to this tool should be a string, representing the image_path.",
        "what faces or people do you see in this image?",
        ("face", "people", "person", "celebrit"),
    ),
)

#: expert kind -> (MM-REACT request, routing keywords) for configured experts.
EXPERT_REQUESTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "captioner": ("describe this image.", ("caption", "describe", "description")),
    "reference_captions": ("describe this image.", ("caption", "describe", "description")),
    "vqa": ("answer this question about the image: <question>", ("question",)),
    "detector": ("what objects do you see in this image?", ("object", "detect", "count", "how many")),
    "open_vocab_detector": ("find <things> in this image.", ("find", "locate", "where is", "where are", "look for")),
    "ocr": ("what OCR text do you see in this image?", ("ocr", "text", "read", "written", "word")),
    "classifier": ("what tags describe this image?", ("tag", "classif", "categor", "label", "kind of")),
}

SCORER_TOOL = "Check Image Shows"
IMAGE_UNDERSTANDING = "Image Understanding"


def build_registry(backbones: "Backbones", options: AgentToolsOptions = AgentToolsOptions()) -> ToolRegistry:
    """The agent's tools: the packaged ToolBox tools, the run's configured experts (an expert named like a
    packaged tool replaces it), the scorer, and (MM-REACT) the combined image-understanding expert first."""
    limit = options.max_observation_chars
    experts = getattr(backbones, "experts", None)
    configured = {e.name.lower() for e in experts} if experts is not None else set()
    tools: list[AgentTool] = []
    available = set(backbones.tools.names)  # constructing the ToolBox loads no model
    for box_name, name, desc, request, keywords in TOOLBOX_TOOLS:
        if box_name not in available or name.lower() in configured:
            continue
        tools.append(
            AgentTool(name, desc, ImageInput, _toolbox_fn(backbones, box_name, limit), request, keywords)
        )
    for expert in experts or ():
        request, keywords = EXPERT_REQUESTS.get(expert.kind, ("describe this image.", ()))
        args = ImageQueryInput if expert.kind in ("vqa", "open_vocab_detector") else ImageInput
        tools.append(AgentTool(expert.name, expert.description, args, _expert_fn(backbones, expert.name, limit),
                               request, keywords))
    tools.append(
        AgentTool(
            SCORER_TOOL,
            "useful when you want to check whether the image shows something. The input to this tool should be "
            "a comma separated string of two, representing the image_path and the thing to check",
            ImageQueryInput,
            _scorer_fn(backbones, options.scorer_threshold),
            "does this image show <thing>?",
            ("show", "contain", "is there", "are there"),
        )
    )
    if options.image_understanding:
        tools.insert(0, AgentTool(
            IMAGE_UNDERSTANDING,
            "useful when you want to know what is in the image: its description, tags, objects with their "
            "locations, faces and text, in one answer. The input to this tool should be a string, representing "
            "the image_path.",
            ImageInput,
            _understanding_fn(backbones, limit * 2),
            "what objects do you see in this image?",
            ("objects", "what do you see", "what is in", "describe", "description", "tags"),
        ))
    if options.tools is not None:
        keep = {n.lower() for n in options.tools}
        unknown = keep - {t.name.lower() for t in tools}
        if unknown:
            raise ValueError(f"unknown agent tools {sorted(unknown)}; choices: {[t.name for t in tools]}")
        tools = [t for t in tools if t.name.lower() in keep]
    return ToolRegistry(tools)


def _toolbox_fn(backbones: "Backbones", box_name: str, limit: int) -> ToolFn:
    def call(ref: ImageRef, args: ImageInput) -> str:
        out = backbones.tools.run(box_name, ref.image_id, ref.image)
        text = out.to_text() if hasattr(out, "to_text") else str(out)
        return _clip(text.strip() or "nothing found", limit)

    return call


def _expert_fn(backbones: "Backbones", name: str, limit: int) -> ToolFn:
    def call(ref: ImageRef, args: ImageInput) -> str:
        query = args.query if isinstance(args, ImageQueryInput) else ""
        out = backbones.experts.run(name, ref.image, query, withheld=ref.withheld)
        return _clip(out.text.strip() or "nothing found", limit)

    return call


def _understanding_fn(backbones: "Backbones", limit: int) -> ToolFn:
    from harness.experts.understanding import image_understanding

    def call(ref: ImageRef, args: ImageInput) -> str:
        return _clip(image_understanding(backbones, ref), limit)

    return call


def _scorer_fn(backbones: "Backbones", threshold: float) -> ToolFn:
    def call(ref: ImageRef, args: ImageInput) -> str:
        assert isinstance(args, ImageQueryInput)
        scorer = backbones.scorer
        img = scorer.embed_images([ref.image], [ref.image_id])
        txt = scorer.embed_texts([args.query])
        score = float(scorer.similarity(img, txt).reshape(-1)[0])
        verdict = "yes" if score >= threshold else "no"
        return (
            f"{verdict} (image-text similarity {score:.3f} for {args.query!r}, "
            f"threshold {threshold:.2f}, scorer: {scorer.name})"
        )

    return call


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
