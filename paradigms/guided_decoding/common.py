"""Pieces both guided decoders share: prompts, the scorer protocol, per-image embeddings, LM masks.

Guided decoding only changes *which token the LM picks*; everything around it (how a sample
becomes an LM prompt, what text the scorer sees, where an answer stops) is kept here so MAGIC
and ZeroCap treat a sample the same way and differ only in the search itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from harness.interface import Request


class ImageTextScorer(Protocol):
    """What the decoders need from ``backbones.scorer`` (CLIP with real weights, tag-MiniLM offline)."""

    name: str
    logit_scale: float

    def embed_images(self, images: Sequence[Any], image_ids: Sequence[str]) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class PreparedPrompt:
    """One request turned into LM text: ``lm_prompt`` is fed to the LM, ``answer_prefix`` starts
    the answer (it is part of the prompt *and* of the returned text, e.g. "A" for captions)."""

    lm_prompt: str
    answer_prefix: str


def build_prompt(
    llm: Any, req: Request, *, chat: bool, caption_prefix: str, shot_separator: str = "\n"
) -> PreparedPrompt:
    """Render shots as plain Q/A text before the query (the decoders do not see shot images).

    Captions start from ``caption_prefix`` (MAGIC starts from its LM's start-of-text token; an
    instruct LM without caption fine-tuning needs a few words to fall into caption style).
    """
    demo = "".join(f"{s.prompt} {s.answer}{shot_separator}" for s in req.shots)
    user = demo + req.prompt
    prefix = caption_prefix if req.kind == "caption" else ""
    if chat:
        text = llm.chat_prompt(user, assistant_prefix=prefix)
    else:
        text = f"{user}\n{prefix}" if req.kind == "caption" else f"{user}"
    return PreparedPrompt(lm_prompt=text, answer_prefix=prefix)


def encode_left_padded(tokenizer: Any, texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask; the decoders pass explicit positions so padding cannot leak."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only (what an unpadded row would get)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def eos_ids(llm: Any) -> set[int]:
    """Token ids that end an answer (EOS of tokenizer and generation config, and pad)."""
    ids: set[int] = set()
    tok = llm.tokenizer
    gc = getattr(getattr(llm.model, "generation_config", None), "eos_token_id", None)
    for e in (gc if isinstance(gc, list) else [gc]) + [tok.eos_token_id, tok.pad_token_id]:
        if e is not None:
            ids.add(int(e))
    return ids


class ImageEmbeddings:
    """Image embeddings of one ``answer_batch`` call, computed once per distinct ``image_id``."""

    def __init__(self, scorer: ImageTextScorer, requests: Sequence[Request]) -> None:
        uniq: dict[str, Any] = {}
        for r in requests:
            if r.image is not None and r.image_id not in uniq:
                uniq[r.image_id] = r.image
        ids = list(uniq)
        self.by_id: dict[str, torch.Tensor] = {}
        if ids:
            emb = scorer.embed_images([uniq[i] for i in ids], ids)
            emb = F.normalize(torch.as_tensor(emb).float(), dim=-1)
            self.by_id = {i: emb[n] for n, i in enumerate(ids)}

    def stack(self, image_ids: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.by_id[i] for i in image_ids])


class TextEmbeddingMemo:
    """Embeds texts once per call: many candidate texts repeat across images and steps."""

    def __init__(self, scorer: ImageTextScorer) -> None:
        self.scorer = scorer
        self.memo: dict[str, torch.Tensor] = {}
        self.texts_embedded = 0

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if new:
            emb = F.normalize(torch.as_tensor(self.scorer.embed_texts(new)).float(), dim=-1)
            self.texts_embedded += len(new)
            for t, e in zip(new, emb):
                self.memo[t] = e
        return torch.stack([self.memo[t] for t in texts])


def cosine_to_images(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of row-wise images [B, D] and their candidate texts [B, k, D] -> [B, k]."""
    return torch.einsum("bd,bkd->bk", image_emb, text_emb)
