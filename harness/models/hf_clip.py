"""CLIP through transformers (``CLIPModel`` + ``CLIPProcessor``): a real CLIP scorer without open_clip.

open_clip needs torchvision; transformers' CLIP does not (its PIL image processor is used when
torchvision is absent). This is also the CLIP the MAGIC authors used (``openai/clip-vit-base-patch32``
through ``CLIPModel``), computed the same way: image = ``visual_projection(vision_model(...).pooler_output)``,
text = ``text_projection(text_model(...).pooler_output)`` with the CLIP tokenizer padded and truncated
to 77 tokens, cosine times ``exp(logit_scale)``.

Config: ``models.scorer: {kind: hf_clip, model: openai/clip-vit-base-patch32}`` (a hub id, optionally
``id@revision``, or a local folder written by ``save_pretrained``). Nothing loads until first use.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from harness.models.packaged import ModelUnavailable, package_fingerprint
from harness.models.scorer import ImageTextScorer

#: texts per text-encoder forward (bounds memory when MAGIC scores thousands of candidates)
TEXT_CHUNK = 512


def _local_folder_digest(folder: Path) -> str:
    """Config and weight files of a local folder: json contents, weight sizes (cheap, no full hash)."""
    from harness.models.llm import _folder_fingerprint

    return _folder_fingerprint(folder)


class HFClipScorer(ImageTextScorer):
    """``model``: hub id (``openai/clip-vit-base-patch32``, ``id@revision``) or a local CLIP folder."""

    def __init__(self, model: str, device: str = "auto") -> None:
        super().__init__()
        self.model_id = model
        path = Path(model)
        self.local = path.is_dir()
        repo, _, rev = (model, "", "") if self.local else model.partition("@")
        self.repo, self.revision = repo, (rev or None)
        self.device_name = device
        self.name = f"clip(hf):{path.name if self.local else model}"
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any, torch.device] | None = None

    def _load(self) -> tuple[Any, Any, Any, torch.device]:
        with self._lock:
            if self._loaded is None:
                from transformers import CLIPModel, CLIPProcessor

                from harness.models.llm import resolve_device

                kw = {"revision": self.revision} if self.revision else {}
                try:
                    model = CLIPModel.from_pretrained(self.repo, dtype=torch.float32, **kw)
                    proc = CLIPProcessor.from_pretrained(self.repo, **kw)
                except OSError as exc:
                    raise ModelUnavailable(f"cannot load CLIP {self.model_id!r} with transformers: {exc}") from exc
                device = torch.device(resolve_device(self.device_name))
                model = model.to(device).eval().requires_grad_(False)
                self._loaded = (model, proc.image_processor, proc.tokenizer, device)
            return self._loaded

    @property
    def logit_scale(self) -> float:  # type: ignore[override]
        """CLIP's learned temperature, ``exp(logit_scale)`` (100 for OpenAI's released models)."""
        return float(self._load()[0].logit_scale.exp().item())

    def fingerprint(self) -> str:
        try:
            version = package_fingerprint("transformers")
        except ModelUnavailable:
            version = "transformers==unknown"
        if self.local:
            src = f"local:{Path(self.model_id).name}:{_local_folder_digest(Path(self.model_id))}"
        else:
            from harness.hub_pin import pinned_revision

            src = f"hub:{self.repo}@{pinned_revision(self.repo, self.revision)}"
        return f"hf_clip:{src}[{version}]"

    @torch.inference_mode()
    def _embed_images(self, images: Sequence[Image.Image], image_ids: Sequence[str]) -> torch.Tensor:
        model, image_processor, _, device = self._load()
        rgb = [(im if isinstance(im, Image.Image) else Image.fromarray(im)).convert("RGB") for im in images]
        pixels = image_processor(images=rgb, return_tensors="pt")["pixel_values"].to(device)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(model.visual_projection(pooled).float(), dim=-1).cpu()

    def max_text_tokens(self) -> int:
        model, _, tok, _ = self._load()
        return int(min(tok.model_max_length, model.config.text_config.max_position_embeddings))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        model, _, tok, device = self._load()
        texts = list(texts)
        if not texts:
            return torch.zeros(0, model.config.projection_dim)
        out = []
        for i in range(0, len(texts), TEXT_CHUNK):
            enc = tok(texts[i : i + TEXT_CHUNK], padding=True, truncation=True, max_length=self.max_text_tokens(),
                      return_tensors="pt")  # fmt: skip
            pooled = model.text_model(
                input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
            ).pooler_output
            out.append(F.normalize(model.text_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out)
