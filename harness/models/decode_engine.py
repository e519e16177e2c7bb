"""Greedy decoding with a static KV cache whose decode loop replays as CUDA graphs.

Why it exists: plain ``generate()`` spends most of a small model's decode step in Python and
kernel launches (measured on an H100 with a 1.2B Llama: 44.5 steps/s at batch 1, 3.5% of the
memory-bandwidth bound). This engine preallocates every buffer, computes a step from the Hugging
Face modules' own weights and submodules (norms, projections, MLPs, rotary tables) with no
data-dependent Python, and on CUDA captures whole chunks of decode steps in one CUDA graph, so the
GPU replays them without the CPU in the loop. On CPU the same step code runs eagerly.

It covers the Llama family (Llama, Mistral, Qwen2, Qwen3: RMSNorm, rotary positions, grouped-query
attention, gated MLP); other architectures, sampling, and sliding windows shorter than the sequence
raise :class:`EngineUnsupported`, and the caller falls back to ``generate()``.
Greedy tokens equal ``generate()``'s up to floating-point ties (tested on CPU in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class EngineUnsupported(RuntimeError):
    """The model or request cannot run on the static engine; use ``generate()`` instead."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


@dataclass
class _Buffers:
    """Everything one (batch, length) shape needs; graph captures read and write only these."""

    keys: list[torch.Tensor]  # per layer [B, Hkv, L, hd]
    values: list[torch.Tensor]
    real: torch.Tensor  # [B, L] bool: slot holds a real (non-padding) token
    pad: torch.Tensor  # [B] long: left padding of each row
    tok: torch.Tensor  # [B] long: the token fed to the next step
    slot: torch.Tensor  # 0-d long: cache slot the next step writes
    done: torch.Tensor  # [B] bool: row produced an end token (or was stopped)
    out: torch.Tensor  # [B, L] long: generated token at each slot
    cos: torch.Tensor  # [L, hd] rotary tables, owned here so captured graphs never see them move
    sin: torch.Tensor
    graphs: dict[int, Any]


class StaticDecoder:
    """Greedy decoder over one loaded causal LM; buffers and graphs are kept per batch shape."""

    def __init__(
        self,
        model: Any,
        eos_ids: Sequence[int],
        pad_id: int,
        *,
        use_cuda_graphs: bool | None = None,
        chunk: int = 16,
        length_bucket: int = 64,
        max_shapes: int = 4,
    ) -> None:
        cfg = model.config
        model_type = getattr(cfg, "model_type", "")
        if model_type not in SUPPORTED_TYPES:
            raise EngineUnsupported(
                f"static decode engine supports {', '.join(SUPPORTED_TYPES)}; this model is {model_type!r}"
            )
        core = getattr(model, "model", None)
        if core is None or not hasattr(core, "layers") or not hasattr(model, "lm_head"):
            raise EngineUnsupported(f"unexpected module layout for {model_type!r}")
        self.model = model
        self.core = core
        self.layers = list(core.layers)[: cfg.num_hidden_layers]
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.window = self._sliding_window(cfg)
        self.eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), dtype=torch.long)
        self.pad_id = int(pad_id)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eos = self.eos.to(self.device)
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        if use_cuda_graphs and self.device.type != "cuda":
            raise EngineUnsupported("CUDA graphs need the model on a CUDA device")
        self.use_cuda_graphs = use_cuda_graphs
        self.chunk = chunk
        self.length_bucket = length_bucket
        self.max_shapes = max_shapes
        self._buffers: dict[tuple[int, int], _Buffers] = {}  # least recently used first

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _sliding_window(cfg: Any) -> int | None:
        layer_types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if layer_types is not None:
            return window if any(t == "sliding_attention" for t in layer_types) else None
        if getattr(cfg, "model_type", "") == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            return None
        return window

    def _rope_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..length-1 from the model's own rotary module (scaling included)."""
        pos = torch.arange(length, device=self.device)[None]
        probe = torch.zeros(1, length, self.head_dim, device=self.device, dtype=self.dtype)
        cos, sin = self.core.rotary_emb(probe, pos)
        return cos[0].contiguous(), sin[0].contiguous()

    def _buffers_for(self, batch: int, length: int) -> _Buffers:
        key = (batch, length)
        if key in self._buffers:
            self._buffers[key] = self._buffers.pop(key)  # most recently used last
        else:
            while len(self._buffers) >= self.max_shapes:  # bound the memory that shapes and graphs hold
                self._buffers.pop(next(iter(self._buffers)))
            kv = (batch, self.n_kv, length, self.head_dim)
            dev, dt = self.device, self.dtype
            cos, sin = self._rope_table(length)
            self._buffers[key] = _Buffers(
                keys=[torch.zeros(kv, device=dev, dtype=dt) for _ in self.layers],
                values=[torch.zeros(kv, device=dev, dtype=dt) for _ in self.layers],
                real=torch.zeros(batch, length, dtype=torch.bool, device=dev),
                pad=torch.zeros(batch, dtype=torch.long, device=dev),
                tok=torch.zeros(batch, dtype=torch.long, device=dev),
                slot=torch.zeros((), dtype=torch.long, device=dev),
                done=torch.zeros(batch, dtype=torch.bool, device=dev),
                out=torch.full((batch, length), self.pad_id, dtype=torch.long, device=dev),
                cos=cos,
                sin=sin,
                graphs={},
            )
        return self._buffers[key]

    # ------------------------------------------------------------ the forward
    def _layers_forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        buf: _Buffers,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        """Run all decoder layers on ``x`` [B, S, D] writing K/V at cache ``slots`` [S].

        ``mask`` [B, 1, S, L] (True = attend) covers the whole static cache.
        """
        cos_t, sin_t = buf.cos, buf.sin
        cos = cos_t[positions].unsqueeze(1)  # [B, 1, S, hd]
        sin = sin_t[positions].unsqueeze(1)
        b, s, _ = x.shape
        rep = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, s, -1, self.head_dim)
            k = attn.k_proj(h).view(b, s, -1, self.head_dim)
            v = attn.v_proj(h).view(b, s, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3 normalises per head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            buf.keys[i].index_copy_(2, slots, k)
            buf.values[i].index_copy_(2, slots, v)
            keys, values = buf.keys[i], buf.values[i]
            scale = getattr(attn, "scaling", self.head_dim**-0.5)
            if s == 1 and rep > 1:
                # One query token: fold the query heads of a KV group into its query axis, so attention
                # reads the cache once per KV head instead of copying it per query head.
                qg = q.reshape(b, self.n_kv, rep, self.head_dim)
                o = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=scale)
                o = o.reshape(b, self.n_heads, 1, self.head_dim)
            else:
                if rep > 1:
                    keys = keys[:, :, None].expand(b, self.n_kv, rep, *keys.shape[2:]).reshape(
                        b, self.n_heads, *keys.shape[2:]
                    )
                    values = values[:, :, None].expand(b, self.n_kv, rep, *values.shape[2:]).reshape(
                        b, self.n_heads, *values.shape[2:]
                    )
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
            o = o.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
            x = x + attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.core.norm(x)

    def _window(self, allowed: torch.Tensor, query_slots: torch.Tensor, key_slots: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return allowed
        # Padding sits left of every real token, so slot distance equals position distance.
        return allowed & (key_slots[None, :] > query_slots[:, None] - self.window)

    def _prefill(self, buf: _Buffers, ids: torch.Tensor, attention: torch.Tensor) -> None:
        b, s = ids.shape
        length = buf.real.shape[1]
        buf.real.zero_()
        buf.real[:, :s] = attention.bool()
        buf.real[:, s:] = True
        buf.pad.copy_(s - attention.sum(dim=1))
        buf.done.zero_()
        buf.out.fill_(self.pad_id)
        q_slots = torch.arange(s, device=self.device)
        k_slots = torch.arange(length, device=self.device)
        causal = k_slots[None, :] <= q_slots[:, None]  # [S, L]
        causal = self._window(causal, q_slots, k_slots)
        allowed = causal[None] & buf.real[:, None, :]
        # A padding query sees only itself, so its (unused) states stay finite.
        allowed = allowed | (k_slots[None, None, :] == q_slots[None, :, None])
        positions = (attention.long().cumsum(-1) - 1).clamp_min(0)
        x = self.core.embed_tokens(ids)
        hidden = self._layers_forward(x, positions, allowed[:, None], buf, q_slots)
        first = self.model.lm_head(hidden[:, -1]).argmax(-1)
        buf.tok.copy_(first)
        buf.out[:, s] = first
        buf.done.copy_(self._is_end(first))
        buf.slot.fill_(s)

    def _step(self, buf: _Buffers) -> None:
        """Feed ``tok`` at ``slot``; choose the next token. Static shapes, no host synchronisation."""
        length = buf.real.shape[1]
        slot1 = buf.slot.view(1)
        k_slots = torch.arange(length, device=self.device)
        allowed = self._window(k_slots[None, :] <= buf.slot, slot1, k_slots)  # [1, L]
        allowed = (allowed & buf.real)[:, None, None, :]  # [B, 1, 1, L]
        positions = (buf.slot - buf.pad).view(-1, 1)
        x = self.core.embed_tokens(buf.tok.view(-1, 1))
        hidden = self._layers_forward(x, positions, allowed, buf, slot1)
        nxt = self.model.lm_head(hidden[:, -1]).argmax(-1)
        # As generate(): a finished row keeps emitting padding.
        nxt = torch.where(buf.done, torch.full_like(nxt, self.pad_id), nxt)
        buf.done.logical_or_(self._is_end(nxt))
        buf.slot.add_(1)
        buf.out.index_copy_(1, buf.slot.view(1), nxt.view(-1, 1))
        buf.tok.copy_(nxt)

    def _is_end(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens[..., None] == self.eos).any(-1)

    # --------------------------------------------------------------- graphs
    def _graph(self, buf: _Buffers, steps: int) -> Any:
        if steps in buf.graphs:
            return buf.graphs[steps]
        saved = [t.clone() for t in (buf.tok, buf.slot, buf.done, buf.out)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside capture (allocator, cuBLAS handles)
            for _ in range(steps):
                self._step(buf)
        torch.cuda.current_stream().wait_stream(stream)
        for t, s in zip((buf.tok, buf.slot, buf.done, buf.out), saved):
            t.copy_(s)  # warm-up wrote only slots that later steps overwrite before they are read
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(steps):
                self._step(buf)
        buf.graphs[steps] = graph
        return graph

    def _advance(self, buf: _Buffers, steps: int) -> None:
        if not self.use_cuda_graphs:
            for _ in range(steps):
                self._step(buf)
            return
        self._graph(buf, steps).replay()

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        stop_check: Any = None,
    ) -> torch.Tensor:
        """Greedy continuation of a left-padded batch: [B, max_new_tokens] token ids.

        Rows that ended are filled with padding after their end token, as ``generate()`` does.
        ``stop_check(ids_so_far) -> list[bool]`` may mark rows finished early (stop strings); it is
        consulted between chunks, so it only saves work and never changes a kept token.
        """
        if max_new_tokens < 1:
            return input_ids.new_zeros(input_ids.shape[0], 0)
        b, s = input_ids.shape
        length = _round_up(s + max_new_tokens, self.length_bucket)
        buf = self._buffers_for(b, length)
        self._prefill(buf, input_ids.to(self.device), attention_mask.to(self.device))
        produced = 1
        while produced < max_new_tokens:
            if bool(buf.done.all()):
                break
            if stop_check is not None:
                marks = stop_check(buf.out[:, s : s + produced])
                if any(marks):
                    buf.done.logical_or_(torch.tensor(marks, device=self.device))
                    if bool(buf.done.all()):
                        break
            steps = self.chunk if max_new_tokens - produced >= self.chunk else 1
            self._advance(buf, steps)
            produced += steps
        new = buf.out[:, s : s + max_new_tokens].clone()
        if produced < max_new_tokens:
            new[:, produced:] = self.pad_id
        # Anything after a row's first end token is padding, whichever path stopped it.
        is_end = self._is_end(new).long()
        after = (is_end.cumsum(-1) - is_end) > 0
        return new.masked_fill(after, self.pad_id).cpu()
