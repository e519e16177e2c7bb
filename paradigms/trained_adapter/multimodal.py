"""A frozen causal LM reading interleaved images and text through a connector.

A *row* is a sequence of pieces: text strings and image slots (``Image(k)`` = the row's k-th image).
Rows are embedded, left-padded, and run through the LLM with ``inputs_embeds``; positions come from
the attention mask so padding never shifts a row (batch invariance). Prefix connectors put their
embeddings at the image's place; Flamingo puts its learned ``<image>`` token there and runs gated
cross-attention blocks before chosen decoder layers through forward pre-hooks that exist only for
the duration of one call — the shared LLM module is never modified, so other paradigms using it
concurrently see the plain model and its ``state_dict`` stays the LLM's own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.llm import cut_at_stop


@dataclass(frozen=True)
class Image:
    """Placeholder for the ``index``-th image of a row."""

    index: int


@dataclass(frozen=True)
class Target:
    """Text whose tokens are scored (training loss, choice log-probability)."""

    text: str


@dataclass(frozen=True)
class EndOfChunk:
    """The end of one image–text example in an interleaved sequence (Flamingo's <EOC>).

    Embedded as the connector's learned ``eoc_token`` when it has one; connectors without it skip it.
    """


Piece = str | Image | Target | EndOfChunk


@dataclass
class Batch:
    embeds: torch.Tensor  # [B, T, d]
    mask: torch.Tensor  # [B, T] long
    positions: torch.Tensor  # [B, T]
    media_idx: torch.Tensor  # [B, T] index of the most recent image (-1: none)
    labels: torch.Tensor  # [B, T] token id to predict at this position (-100: not scored)
    media: torch.Tensor | None  # [B, M, L, d_media] Flamingo latents (None for prefix connectors)
    n_text: list[int]  # text tokens per row (for cost accounting)
    n_visual: list[int]  # visual embedding positions per row


def _past(out: Any) -> Any:
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


class MultimodalLM:
    """Frozen ``LanguageModel`` + a connector; builds batches, scores and decodes."""

    def __init__(self, llm: Any, connector: nn.Module) -> None:
        self.llm = llm
        self.connector = connector
        self.tok = llm.tokenizer
        self.model = llm.model
        self.embed = llm.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def is_xattn(self) -> bool:
        return getattr(self.connector, "mode", "prefix") == "xattn"

    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    # ------------------------------------------------------------------ batching
    def build(self, rows: Sequence[Sequence[Piece]], feats: Sequence[torch.Tensor]) -> Batch:
        """Embed and left-pad rows; ``feats[b]`` holds row b's image features ``[M_b, C, H, W]``."""
        dev = self.device
        dtype = self.embed.weight.dtype
        all_feats = [f for f in feats if f.shape[0] > 0]
        visual = self.connector(torch.cat(all_feats).to(dev)) if all_feats else None
        per_row: list[tuple[torch.Tensor, list[int], list[int]]] = []
        media_rows: list[torch.Tensor] = []
        n_text: list[int] = []
        n_vis: list[int] = []
        offset = 0
        for row, f in zip(rows, feats):
            m = int(f.shape[0])
            row_vis = visual[offset : offset + m] if m else None
            offset += m
            pieces: list[torch.Tensor] = []
            media_idx: list[int] = []
            labels: list[int] = []
            current, nt, nv = -1, 0, 0
            for piece in row:
                if isinstance(piece, Image):
                    if piece.index >= m:
                        raise ValueError(f"row refers to image {piece.index} but has {m}")
                    current = piece.index
                    if self.is_xattn:
                        emb = self.connector.image_token.to(dtype)
                    else:
                        emb = row_vis[piece.index].to(dtype)  # type: ignore[index]
                    pieces.append(emb)
                    media_idx += [current] * emb.shape[0]
                    labels += [-100] * emb.shape[0]
                    nv += emb.shape[0]
                    continue
                if isinstance(piece, EndOfChunk):
                    eoc = getattr(self.connector, "eoc_token", None)
                    if eoc is not None:
                        pieces.append(eoc.to(dtype))
                        media_idx.append(current)
                        labels.append(-100)
                        nt += 1
                    continue
                text = piece.text if isinstance(piece, Target) else piece
                ids = self.tok(text, add_special_tokens=False).input_ids
                if not ids:
                    continue
                pieces.append(self.embed(torch.tensor(ids, device=dev)))
                media_idx += [current] * len(ids)
                # labels[t] is the token predicted *from* position t-1; shifted at loss time.
                labels += ids if isinstance(piece, Target) else [-100] * len(ids)
                nt += len(ids)
            per_row.append((torch.cat(pieces), media_idx, labels))
            n_text.append(nt)
            n_vis.append(nv)
            media_rows.append(row_vis if row_vis is not None else torch.zeros(0))
        width = max(e.shape[0] for e, _, _ in per_row)
        B, d = len(per_row), self.embed.weight.shape[1]
        embeds = torch.zeros(B, width, d, device=dev, dtype=dtype)
        mask = torch.zeros(B, width, dtype=torch.long, device=dev)
        media_idx_t = torch.full((B, width), -1, dtype=torch.long, device=dev)
        labels_t = torch.full((B, width), -100, dtype=torch.long, device=dev)
        for b, (e, mi, lab) in enumerate(per_row):
            n = e.shape[0]
            embeds[b, width - n :] = e
            mask[b, width - n :] = 1
            media_idx_t[b, width - n :] = torch.tensor(mi, device=dev)
            labels_t[b, width - n :] = torch.tensor(lab, device=dev)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        media = None
        if self.is_xattn and visual is not None:  # no image anywhere: the plain LLM
            M = max(r.shape[0] for r in media_rows)
            media = visual.new_zeros(B, M, *visual.shape[1:])
            for b, r in enumerate(media_rows):
                if r.numel():
                    media[b, : r.shape[0]] = r
        return Batch(embeds, mask, positions, media_idx_t, labels_t, media, n_text, n_vis)

    # ------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def _xattn(self, media: torch.Tensor | None, state: dict[str, torch.Tensor]) -> Iterator[None]:
        """Run Flamingo's gated cross-attention before the chosen layers for the duration of a call.

        ``state["media_idx"]`` is read at each call so the decode loop can move it along.
        """
        if not self.is_xattn or media is None:
            yield
            return
        layers = self.model.model.layers
        handles = []
        for block, lid in zip(self.connector.blocks, self.connector.layer_ids):

            def hook(module: nn.Module, args: tuple, kwargs: dict, block: nn.Module = block) -> tuple:
                x = args[0] if args else kwargs["hidden_states"]
                # The block runs in its own (float32) precision; with a zero gate the cast round
                # trip returns the LLM's hidden states unchanged, also for bf16 LLMs.
                w = block.attn_gate.dtype
                hs = block(x.to(w), media.to(w), state["media_idx"]).to(x.dtype)
                if args:
                    return (hs, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hs}

            handles.append(layers[lid].register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def logits(self, batch: Batch) -> torch.Tensor:
        state = {"media_idx": batch.media_idx}
        with self._xattn(batch.media, state):
            out = self.model(
                inputs_embeds=batch.embeds, attention_mask=batch.mask, position_ids=batch.positions, use_cache=False
            )
        return out.logits

    def target_logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sum of log p(target tokens) and number of target tokens."""
        logits = self.logits(batch).float()
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        tgt = batch.labels[:, 1:]
        valid = tgt != -100
        tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        return tok.sum(dim=1), valid.sum(dim=1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean NLL per target token over the batch (the LM loss of every paradigm here)."""
        s, n = self.target_logprobs(batch)
        return -s.sum() / n.sum().clamp(min=1)

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def greedy(
        self, batch: Batch, max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[tuple[str, int, bool]]:
        """Greedy decode every row: (text, tokens generated, finished by EOS/stop)."""
        eos = {int(self.tok.eos_token_id)} if self.tok.eos_token_id is not None else set()
        gc_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos |= {int(e) for e in (gc_eos if isinstance(gc_eos, list) else [gc_eos]) if e is not None}
        B = batch.embeds.shape[0]
        limit = max(max_new_tokens)
        state = {"media_idx": batch.media_idx}
        ids: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        finished = [False] * B
        hit_eos = [False] * B
        mask = batch.mask
        with self._xattn(batch.media, state):
            out = self.model(
                inputs_embeds=batch.embeds, attention_mask=mask, position_ids=batch.positions, use_cache=True
            )
            last_media = batch.media_idx[:, -1:]
            pos = batch.positions[:, -1:]
            for step in range(limit):
                nxt = out.logits[:, -1].argmax(dim=-1)
                for b in range(B):
                    if done[b]:
                        continue
                    t = int(nxt[b])
                    if t in eos:
                        done[b] = finished[b] = hit_eos[b] = True
                        continue
                    ids[b].append(t)
                    if stop and cut_at_stop(self.tok.decode(ids[b], skip_special_tokens=True), stop)[1]:
                        done[b] = finished[b] = True
                    elif len(ids[b]) >= max_new_tokens[b]:
                        done[b] = True
                if all(done) or step == limit - 1:
                    break
                state["media_idx"] = last_media
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
                pos = pos + 1
                out = self.model(
                    inputs_embeds=self.embed(nxt.unsqueeze(1)),
                    attention_mask=mask,
                    position_ids=pos,
                    cache=_past(out),
                    use_cache=True,
                )
        results = []
        for b in range(B):
            text = self.tok.decode(ids[b], skip_special_tokens=True)
            text, _ = cut_at_stop(text, stop)
            results.append((text, len(ids[b]) + int(hit_eos[b]), finished[b]))
        return results
