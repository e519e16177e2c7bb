"""Image–text scorers: what guided decoding and shot retrieval use to compare images with text.

With real CLIP weights the scorer is open_clip's. Offline no CLIP ships in any reachable registry
so :class:`TagEmbeddingScorer` builds an image vector from the packaged tools' outputs
(detector + classifier + OCR) written as short sentences and embedded with MiniLM. It is named for
what it is and is *not* CLIP: it only "sees" what the tools can name.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from harness.models.packaged import ModelUnavailable, file_digest, package_fingerprint
from harness.models.text_embedder import TextEmbedder
from harness.models.tools import Classification, Detections, TextLines, ToolBox, describe_position

CLIP_INSTALL = "pip install 'mmbench[clip]'"


class ImageTextScorer(ABC):
    """Embeds images and texts into one space where cosine similarity means "matches".

    ``logit_scale`` turns cosines into logits (softmax over candidate texts, as in MAGIC).
    Image embeddings are cached in memory per ``image_id`` (which must identify the content).
    """

    name: str
    logit_scale: float

    def __init__(self) -> None:
        self._image_cache: dict[str, torch.Tensor] = {}
        self._cache_lock = threading.Lock()

    @abstractmethod
    def fingerprint(self) -> str:
        """Everything that changes the scores (weights, versions, settings); loads no model."""

    @abstractmethod
    def _embed_images(self, images: Sequence[Image.Image], image_ids: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` L2-normalised embeddings of images not yet cached."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[M, D]`` L2-normalised text embeddings."""

    def embed_images(self, images: Sequence[Image.Image], image_ids: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` L2-normalised image embeddings, computed once per image id."""
        if len(images) != len(image_ids):
            raise ValueError(f"{len(images)} images but {len(image_ids)} image ids")
        with self._cache_lock:
            missing = [i for i, iid in enumerate(image_ids) if iid not in self._image_cache]
        if missing:
            todo_ids = list(dict.fromkeys(image_ids[i] for i in missing))
            first = {iid: next(i for i in missing if image_ids[i] == iid) for iid in todo_ids}
            embs = self._embed_images([images[first[iid]] for iid in todo_ids], todo_ids)
            with self._cache_lock:
                for iid, e in zip(todo_ids, embs):
                    self._image_cache.setdefault(iid, e.detach().cpu())
        with self._cache_lock:
            return torch.stack([self._image_cache[iid] for iid in image_ids])

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[N, M]`` (inputs are already unit vectors)."""
        return F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``logit_scale × cosine`` — softmax these over candidate texts."""
        return self.logit_scale * self.similarity(image_emb, text_emb)


# ----------------------------------------------------------------------------- open_clip


class OpenClipScorer(ImageTextScorer):
    """A CLIP model through open_clip: ``pretrained`` is a hub tag (e.g. "openai") or a local checkpoint."""

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str = "openai", device: str = "cpu") -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.name = f"clip:{model_name}/{Path(pretrained).name if Path(pretrained).is_file() else pretrained}"
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None
        self._fingerprint: str | None = None

    @staticmethod
    def _open_clip() -> Any:
        try:
            import open_clip  # noqa: PLC0415 - optional: needs torchvision
        except ImportError as exc:
            raise ModelUnavailable(
                f"OpenClipScorer needs open_clip (and torchvision), which are not installed: {CLIP_INSTALL}"
            ) from exc
        return open_clip

    def _load(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._loaded is None:
                oc = self._open_clip()
                model, _, preprocess = oc.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self.device
                )
                model = model.eval().requires_grad_(False)
                self._loaded = (model, preprocess, oc.get_tokenizer(self.model_name))
            return self._loaded

    @property
    def logit_scale(self) -> float:  # type: ignore[override]
        """CLIP's learned temperature (exp of the stored log-scale; 100 for OpenAI's models)."""
        return float(self._load()[0].logit_scale.exp().item())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._open_clip()
            try:
                version = package_fingerprint("open_clip_torch")
            except ModelUnavailable:
                version = "open_clip_torch==unknown"
            path = Path(self.pretrained)
            src = f"file:{path.name}@{file_digest(path)}" if path.is_file() else self.pretrained
            self._fingerprint = f"open_clip:{self.model_name}[{src}; {version}]"
        return self._fingerprint

    @torch.inference_mode()
    def _embed_images(self, images: Sequence[Image.Image], image_ids: Sequence[str]) -> torch.Tensor:
        model, preprocess, _ = self._load()
        batch = torch.stack([preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return F.normalize(model.encode_image(batch).float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        model, _, tokenizer = self._load()
        return F.normalize(model.encode_text(tokenizer(list(texts)).to(self.device)).float(), dim=-1).cpu()


# ----------------------------------------------------------------------------- tag + MiniLM

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_IRREGULAR = {"person": "people", "mouse": "mice", "sheep": "sheep", "skis": "skis",
              "scissors": "scissors", "broccoli": "broccoli", "knife": "knives"}  # fmt: skip


def plural(noun: str) -> str:
    """English plural of a COCO label (good enough for the 80 COCO names)."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}".strip()


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def count_phrase(label: str, n: int) -> str:
    """"a dog", "two dogs", "many people"."""
    if n == 1:
        return article(label)
    return f"{_NUMBERS[n] if n < len(_NUMBERS) else 'many'} {plural(label)}"


def position_phrase(position: str) -> str:
    """"center" → "in the middle", "left" → "on the left", "top right" → "at the top right"."""
    if position == "center":
        return "in the middle"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


@dataclass(frozen=True)
class WeightedSentence:
    text: str
    weight: float
    source: str  # "detector" | "classifier" | "ocr" | "fallback"


@dataclass(frozen=True)
class TagScorerSettings:
    """How tool outputs become weighted sentences (all part of the fingerprint).

    ``logit_scale`` was fitted by maximum likelihood of the true caption among in-batch captions
    (CLIP's contrastive objective with only the temperature free) on Flickr8k development images
    — see docs/models.md and :func:`fit_logit_scale`.
    """

    detector_weight: float = 1.0
    classifier_weight: float = 1.0
    ocr_weight: float = 0.5
    use_ocr: bool = True  # OCR is the slowest tool (~0.7 CPU-s per image); off skips it entirely
    classifier_top_k: int = 5
    max_ocr_lines: int = 3
    logit_scale: float = 12.0
    fallback_sentence: str = "a photo."


def tool_sentences(
    dets: Detections, cls: Classification, ocr: TextLines, s: TagScorerSettings
) -> list[WeightedSentence]:
    """Short sentences describing what the tools found, each weighted by its confidence."""
    out: list[WeightedSentence] = []
    by_label: dict[str, list[Any]] = {}
    for d in dets.items:
        by_label.setdefault(d.label, []).append(d)
    for label, group in by_label.items():
        phrase = count_phrase(label, len(group))
        if len(group) == 1:
            phrase += " " + position_phrase(describe_position(group[0].box))
        best = max(d.score for d in group)
        out.append(WeightedSentence(f"a photo of {phrase}.", s.detector_weight * best, "detector"))
    for c in cls.items[: s.classifier_top_k]:
        text = f"a photo of {article(c.label)}."
        out.append(WeightedSentence(text, s.classifier_weight * c.score, "classifier"))
    for t in ocr.items[: s.max_ocr_lines]:
        text = f'a photo with the text "{t.text}".'
        out.append(WeightedSentence(text, s.ocr_weight * t.score, "ocr"))
    if not out:
        out.append(WeightedSentence(s.fallback_sentence, 1.0, "fallback"))
    return out


class TagEmbeddingScorer(ImageTextScorer):
    """Offline image–text scorer: tool tags → sentences → MiniLM, compared with the text's MiniLM vector.

    Not CLIP. Blind to anything the detector (80 COCO classes), classifier (1000 ImageNet classes)
    and OCR cannot name: colours, attributes, actions, relations, counts beyond detected boxes.
    """

    def __init__(
        self,
        tools: ToolBox,
        embedder: TextEmbedder,
        settings: TagScorerSettings = TagScorerSettings(),
    ) -> None:
        super().__init__()
        self._used = ("object_detector", "image_classifier") + (
            ("text_reader",) if settings.use_ocr else ()
        )
        for needed in self._used:
            tools.get(needed)  # fail now, with the list of available tools, if one is missing
        self.tools = tools
        self.embedder = embedder
        self.settings = settings
        self.logit_scale = settings.logit_scale
        self.name = "tag-minilm (detector+classifier+OCR tags embedded with MiniLM; not CLIP)"

    def fingerprint(self) -> str:
        tb = self.tools
        tools = "; ".join(tb.get(n).fingerprint() for n in self._used)
        return f"tag-minilm[{self.settings}; {tools}; {self.embedder.fingerprint()}]"

    def sentences(self, image: Image.Image, image_id: str) -> list[WeightedSentence]:
        """The weighted sentences an image is represented by (shared ToolBox outputs)."""
        tb = self.tools
        ocr = tb.run("text_reader", image_id, image) if self.settings.use_ocr else TextLines(())
        return tool_sentences(
            tb.run("object_detector", image_id, image),
            tb.run("image_classifier", image_id, image),
            ocr,
            self.settings,
        )

    def _embed_images(self, images: Sequence[Image.Image], image_ids: Sequence[str]) -> torch.Tensor:
        per_image = [self.sentences(im, iid) for im, iid in zip(images, image_ids)]
        flat = [ws for group in per_image for ws in group]
        embs = self.embedder.embed([ws.text for ws in flat])
        weights = torch.tensor([ws.weight for ws in flat], dtype=embs.dtype)
        out, start = [], 0
        for group in per_image:
            end = start + len(group)
            out.append((weights[start:end, None] * embs[start:end]).sum(dim=0))
            start = end
        return F.normalize(torch.stack(out), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embedder.embed(texts)


def fit_logit_scale(similarity: torch.Tensor, lo: float = 1.0, hi: float = 200.0) -> float:
    """Temperature that maximises the likelihood of the diagonal (image i ↔ text i).

    The symmetric InfoNCE loss CLIP trains with, minimised over the scale alone (golden-section
    search on log-scale; the loss is unimodal in the scale). Use it to recalibrate
    ``TagScorerSettings.logit_scale`` on your own paired data.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError("similarity must be a square [N, N] matrix of paired items")
    target = torch.arange(similarity.shape[0])

    def loss(log_scale: float) -> float:
        logits = math.exp(log_scale) * similarity.double()
        return float(F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return math.exp((a + b) / 2)
