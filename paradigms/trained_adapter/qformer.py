"""BLIP-2's Q-Former: learned queries and a text branch that share their self-attention layers.

BLIP-2 (Li et al. 2023) trains one transformer in two roles at once. Its *query* positions are
learned embeddings that also cross-attend to the frozen image encoder's features; its *text*
positions are token + position embeddings. Both run through the same self-attention layers, and
what each position may see is set by the self-attention mask alone, which is how one set of
weights serves the three stage-1 objectives:

- ``unimodal`` (image–text contrastive): queries see queries, text sees text — the image side and
  the text side are computed independently, as two encoders;
- ``bidirectional`` (image–text matching): every position sees every position;
- ``causal`` (image-grounded text generation): queries see queries only; text token *i* sees all
  queries and text tokens ≤ *i*, so the text can only learn about the image through the queries.

The layers are BERT's (post-LayerNorm; GELU feed-forward of width 4·d), because BLIP-2 initialised
its Q-Former from BERT-base; queries and text have separate feed-forward blocks (the query one is
initialised from the same weights as the text one), cross-attention to the image runs on query
positions only. :func:`load_minilm` copies the packaged all-MiniLM-L6-v2 (a 6-layer BERT) into
the shared self-attention, both feed-forward blocks and the text embeddings where the sizes match.

Stage 2 keeps only the query path (``vocab_size=0`` builds no text embeddings and no text
feed-forward blocks); its state dict is a subset of the stage-1 one, so stage-1 weights load into
it by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MASK_MODES: tuple[str, ...] = ("unimodal", "bidirectional", "causal")

#: Sizes of the packaged all-MiniLM-L6-v2 (checked again against its config.json when loading).
MINILM_DIM, MINILM_HEADS, MINILM_LAYERS = 384, 12, 6
_LN_EPS = 1e-12  # BERT's LayerNorm epsilon (matters only for bit-faithful MiniLM initialisation)


def self_attention_mask(mode: str, n_query: int, text_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Q+T, Q+T]`` bool, True where row position may attend to column position.

    Padded text positions (``text_mask`` 0) are never attended to. Every row keeps at least one
    allowed key (a query, or the text's first token), so no softmax row is empty.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; one of {MASK_MODES}")
    B, T = text_mask.shape
    L = n_query + T
    dev = text_mask.device
    key_ok = torch.cat([torch.ones(B, n_query, dtype=torch.bool, device=dev), text_mask.bool()], dim=1)
    is_query = torch.arange(L, device=dev) < n_query
    if mode == "bidirectional":
        allowed = torch.ones(L, L, dtype=torch.bool, device=dev)
    elif mode == "unimodal":
        allowed = is_query.view(L, 1) == is_query.view(1, L)
    else:  # causal: queries see queries; text sees every query and the text up to itself
        pos = torch.arange(L, device=dev)
        text_causal = (~is_query).view(L, 1) & (~is_query).view(1, L) & (pos.view(1, L) <= pos.view(L, 1))
        allowed = is_query.view(1, L) | text_causal
    return allowed.unsqueeze(0) & key_ok.unsqueeze(1)


class _Attention(nn.Module):
    """BERT attention block (post-LN): ``LN(x + out(softmax(q·kᵀ/√d_h)·v))``."""

    def __init__(self, d: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"qformer_dim {d} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(kv_dim or d, d)
        self.value = nn.Linear(kv_dim or d, d)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=_LN_EPS)

    def keys_values(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, S, kv_dim]`` -> keys and values ``[N, heads, S, d/heads]``."""
        N, S, _ = kv.shape
        h = self.heads
        d = self.out.in_features
        k = self.key(kv).view(N, S, h, d // h).transpose(1, 2)
        return k, self.value(kv).view(N, S, h, d // h).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``kv``: the tensor attended to, or its precomputed :meth:`keys_values`."""
        B, L, d = x.shape
        h = self.heads
        q = self.query(x).view(B, L, h, d // h).transpose(1, 2)
        k, v = kv if isinstance(kv, tuple) else self.keys_values(kv)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.unsqueeze(1))
        return self.norm(x + self.out(a.transpose(1, 2).reshape(B, L, d)))


class _FeedForward(nn.Module):
    """BERT feed-forward block (post-LN): ``LN(x + outer(gelu(inner(x))))``."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(d, hidden)
        self.outer = nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.outer(F.gelu(self.inner(x))))


class QFormerLayer(nn.Module):
    """Shared self-attention; cross-attention to the image and a query feed-forward on query
    positions; a separate text feed-forward on text positions (absent without a text branch)."""

    def __init__(self, d: int, heads: int, feature_dim: int, text: bool) -> None:
        super().__init__()
        self.self_attn = _Attention(d, heads)
        self.cross_attn = _Attention(d, heads, kv_dim=feature_dim)
        self.ffn_query = _FeedForward(d, 4 * d)
        self.ffn_text = _FeedForward(d, 4 * d) if text else None

    def forward(
        self,
        x: torch.Tensor,
        n_query: int,
        image: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``image``: this layer's cross-attention keys and values, one row per row of ``x``."""
        x = self.self_attn(x, x, mask)
        parts = []
        if n_query:
            if image is None:
                raise ValueError("query positions need image features")
            parts.append(self.ffn_query(self.cross_attn(x[:, :n_query], image)))
        if x.shape[1] > n_query:
            if self.ffn_text is None:
                raise ValueError("this Q-Former was built without a text branch")
            parts.append(self.ffn_text(x[:, n_query:]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class QFormer(nn.Module):
    """Queries (+ optional text branch) through shared BERT layers; see the module docstring.

    ``vocab_size`` 0 builds the query path only (stage 2). ``forward`` returns the query outputs
    ``[B, Q, d]`` (None without image features) and the text outputs ``[B, T, d]`` (None without
    text).
    """

    def __init__(
        self,
        n_queries: int,
        d: int,
        depth: int,
        heads: int,
        feature_dim: int,
        *,
        vocab_size: int = 0,
        max_text_len: int = 0,
    ) -> None:
        super().__init__()
        self.has_text = vocab_size > 0
        self.queries = nn.Parameter(torch.zeros(n_queries, d))
        self.feature_norm = nn.LayerNorm(feature_dim)  # BLIP-2's ln_vision on the frozen features
        self.embed_norm = nn.LayerNorm(d, eps=_LN_EPS)  # BERT's embedding LayerNorm (queries and text)
        if self.has_text:
            if max_text_len < 2:
                raise ValueError("a text branch needs max_text_len >= 2")
            self.word_embeddings = nn.Embedding(vocab_size, d)
            self.position_embeddings = nn.Embedding(max_text_len, d)
        self.layers = nn.ModuleList(QFormerLayer(d, heads, feature_dim, self.has_text) for _ in range(depth))
        self.apply(_bert_init)
        nn.init.normal_(self.queries, std=0.02)

    @property
    def n_queries(self) -> int:
        return self.queries.shape[0]

    def image_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` feature maps -> ``[N, H·W, C]`` normalised tokens for cross-attention."""
        return self.feature_norm(feats.float().flatten(2).transpose(1, 2))

    def image_memory(self, feats: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys/values of the images. They depend on the image only
        (not on the mask or the text), so stage 1 computes them once per step for its three passes —
        the projection from the 1280-d features is the costliest part of the Q-Former on CPU."""
        tokens = self.image_tokens(feats)
        return [layer.cross_attn.keys_values(tokens) for layer in self.layers]

    def forward(
        self,
        feats: torch.Tensor | None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        mode: str = "unimodal",
        *,
        memory: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``memory`` (from :meth:`image_memory`) replaces ``feats``; ``image_index`` picks, for each
        row, which of its images the row's queries attend to (default: row *i* -> image *i*)."""
        if memory is None and feats is not None:
            memory = self.image_memory(feats)
        if memory is not None and image_index is not None:
            # index_select, not k[image_index]: the latter's backward (accumulating index_put) sums
            # repeated rows in a thread-dependent order on CPU, which breaks bit-identical resumes.
            memory = [(k.index_select(0, image_index), v.index_select(0, image_index)) for k, v in memory]
        if memory is None and text_ids is None:
            raise ValueError("nothing to encode")
        pieces = []
        n_query = 0
        if memory is not None:
            n_query = self.n_queries
            pieces.append(self.queries.unsqueeze(0).expand(memory[0][0].shape[0], -1, -1))
        mask = None
        if text_ids is not None:
            if not self.has_text:
                raise ValueError("this Q-Former was built without a text branch")
            T = text_ids.shape[1]
            if T > self.position_embeddings.num_embeddings:
                raise ValueError(f"text of {T} tokens exceeds max_text_len {self.position_embeddings.num_embeddings}")
            pos = torch.arange(T, device=text_ids.device)
            pieces.append(self.word_embeddings(text_ids) + self.position_embeddings(pos))
            if text_mask is None:
                text_mask = torch.ones_like(text_ids)
            mask = self_attention_mask(mode, n_query, text_mask)
        x = self.embed_norm(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
        for i, layer in enumerate(self.layers):
            x = layer(x, n_query, memory[i] if memory is not None else None, mask)
        q = x[:, :n_query] if n_query else None
        t = x[:, n_query:] if text_ids is not None else None
        return q, t


# ----------------------------------------------------------------------------- MiniLM init


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 (its WordPiece tokenizer and BERT weights)."""
    from harness.models.packaged import package_dir
    from harness.models.text_embedder import MINILM_IMPORT, MINILM_PIP

    return package_dir(MINILM_IMPORT, MINILM_PIP) / "model"


@torch.no_grad()
def load_minilm(qformer: QFormer, vocab_ids: Sequence[int] | torch.Tensor | None = None) -> list[str]:
    """Copy MiniLM's BERT weights into ``qformer`` where they have a counterpart; returns what was set.

    Layer *i* takes MiniLM layer *i*'s self-attention and feed-forward (the query feed-forward gets
    the same weights as the text one, as BLIP-2 did from BERT); the embedding LayerNorm is
    MiniLM's. With a text branch, word embeddings come from MiniLM's rows ``vocab_ids`` (the extra
    last row, [DEC], stays random) and position embeddings are MiniLM's with its token-type-0
    embedding folded in (BERT adds it to every token). Queries, cross-attention and the image
    LayerNorm stay randomly initialised (BLIP-2 initialised them randomly too).
    """
    import json

    from safetensors.torch import load_file

    folder = minilm_folder()
    cfg = json.loads((folder / "config.json").read_text())
    d = qformer.queries.shape[1]
    heads = qformer.layers[0].self_attn.heads
    if (cfg["hidden_size"], cfg["num_attention_heads"]) != (d, heads) or cfg["intermediate_size"] != 4 * d:
        raise ValueError(
            f"MiniLM initialisation needs qformer_dim {cfg['hidden_size']} and heads {cfg['num_attention_heads']}; "
            f"got {d} and {heads}"
        )
    if len(qformer.layers) > cfg["num_hidden_layers"]:
        raise ValueError(f"MiniLM has {cfg['num_hidden_layers']} layers; depth {len(qformer.layers)} is more")
    sd = load_file(str(folder / "model.safetensors"))
    prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""
    src = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    done: list[str] = []

    def put(module: nn.Module, name: str) -> None:
        for attr in ("weight", "bias"):
            getattr(module, attr).copy_(src[f"{name}.{attr}"])
        done.append(name)

    put(qformer.embed_norm, "embeddings.LayerNorm")
    for i, layer in enumerate(qformer.layers):
        p = f"encoder.layer.{i}."
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
            put(getattr(layer.self_attn, ours), p + f"attention.self.{theirs}")
        put(layer.self_attn.out, p + "attention.output.dense")
        put(layer.self_attn.norm, p + "attention.output.LayerNorm")
        for ffn in (layer.ffn_query, layer.ffn_text):
            if ffn is None:
                continue
            put(ffn.inner, p + "intermediate.dense")
            put(ffn.outer, p + "output.dense")
            put(ffn.norm, p + "output.LayerNorm")
    if qformer.has_text:
        words = src["embeddings.word_embeddings.weight"]
        ids = torch.arange(words.shape[0]) if vocab_ids is None else torch.as_tensor(vocab_ids, dtype=torch.long)
        if qformer.word_embeddings.num_embeddings != len(ids) + 1:
            raise ValueError("the Q-Former's vocabulary must be the given MiniLM ids plus [DEC]")
        qformer.word_embeddings.weight[: len(ids)].copy_(words[ids])
        n_pos = qformer.position_embeddings.num_embeddings
        pos = src["embeddings.position_embeddings.weight"][:n_pos] + src["embeddings.token_type_embeddings.weight"][0]
        qformer.position_embeddings.weight.copy_(pos)
        done += ["embeddings.word_embeddings", "embeddings.position_embeddings"]
    return done
