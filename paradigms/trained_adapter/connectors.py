"""Connectors: the only trained part between a frozen vision encoder and a frozen LLM.

Each connector turns the encoder's last feature map ``[N, C, H, W]`` into what the LLM reads:

- *prefix* connectors (Frozen, BLIP-2's Q-Former, PaLM-E) return ``[N, T, d_model]`` embeddings
  that are spliced into the text's input embeddings where the image stands;
- the *cross-attention* connector (Flamingo) returns resampled latents that gated cross-attention
  blocks, run before chosen LLM layers, let the following text tokens attend to.

Output projections into the LLM are initialised at the scale of the LLM's own token embeddings so
the untrained prefix neither dominates nor vanishes; Flamingo's gates start at 0 (tanh(0) = 0), so
its untrained model *is* the frozen LLM.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_serializer, model_validator
from torch import nn

from harness.config import Strict


class ConnectorOptions(Strict):
    """Base of every connector's options (strict: an unknown key is an error)."""


def _omit_defaults(model: BaseModel, out: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Drop options added later while they hold their default, so keys made before them stay valid."""
    for name in names:
        if getattr(model, name) == type(model).model_fields[name].default:
            out.pop(name, None)
    return out


class FrozenOptions(ConnectorOptions):
    """Frozen (Tsimpoukelli et al. 2021): the vision encoder is trained, its pooled output -> ``n_prefix`` embeddings.

    ``encoder``: "last" trains a copy of the encoder's last ``encoder_blocks`` blocks and head
    (the default, sized for CPU); "all" the whole encoder, as the paper; "fixed" keeps the encoder
    frozen and trains only the linear map — the ablation, whose options dump (hence keys) is
    exactly that of the connector before the encoder could be trained.
    """

    kind: Literal["frozen"] = "frozen"
    n_prefix: int = Field(2, ge=1, le=64)
    encoder: Literal["last", "all", "fixed"] = "last"
    encoder_blocks: int = Field(4, ge=1, le=64)

    @model_serializer(mode="wrap")
    def _legacy_dump(self, handler: Callable[["FrozenOptions"], dict[str, Any]]) -> dict[str, Any]:
        out = handler(self)
        if self.encoder != "last":
            out.pop("encoder_blocks", None)
        if self.encoder == "fixed":
            out.pop("encoder", None)
        return out


class FlamingoOptions(ConnectorOptions):
    """Flamingo (Alayrac et al. 2022): Perceiver Resampler + tanh-gated cross-attention blocks.

    Defaults are CPU-sized; the paper / OpenFlamingo values are in ``PAPER_FLAMINGO`` (64 latents,
    6 resampler layers, heads 8 × 64, feed-forward ×4, a block before every layer for 3B-class
    models, feed-forward applied to every token, an end-of-chunk token after each example).
    """

    kind: Literal["flamingo"] = "flamingo"
    n_latents: int = Field(16, ge=1, le=256)
    resampler_dim: int = Field(256, ge=16)
    resampler_depth: int = Field(1, ge=1, le=12)
    heads: int = Field(4, ge=1)
    #: A gated cross-attention block is run before every ``xattn_every``-th LLM layer (0, N, 2N…).
    xattn_every: int = Field(15, ge=1)
    ff_mult: int = Field(2, ge=1, le=8)
    #: Width of one attention head (resampler and cross-attention); 0: ``dim // heads`` (Flamingo: 64).
    dim_head: int = Field(0, ge=0, le=512)
    #: "after_image": the block's feed-forward is zeroed on text before any image (the block then
    #: leaves that text exactly as the frozen LLM has it); "all": applied to every token, as in
    #: OpenFlamingo's GatedCrossAttentionBlock (only the cross-attention output is masked there).
    ff_scope: Literal["after_image", "all"] = "after_image"
    #: Flamingo's <EOC> / OpenFlamingo's <|endofchunk|>: a learned embedding after each
    #: image–text example of an interleaved sequence (training and demonstrations).
    end_of_chunk: bool = False

    @model_serializer(mode="wrap")
    def _legacy_dump(self, handler: Callable[["FlamingoOptions"], dict[str, Any]]) -> dict[str, Any]:
        return _omit_defaults(self, handler(self), ("dim_head", "ff_scope", "end_of_chunk"))


#: Flamingo-3B / OpenFlamingo-3B sizes (resampler width = the CLIP ViT-L/14 feature width, 1024).
PAPER_FLAMINGO: dict[str, Any] = {
    "n_latents": 64, "resampler_depth": 6, "resampler_dim": 1024, "heads": 8, "dim_head": 64, "ff_mult": 4,
    "xattn_every": 1, "ff_scope": "all", "end_of_chunk": True,
}


class Blip2Stage1Options(Strict):
    """BLIP-2 stage 1: the Q-Former trained against the frozen image encoder alone (ITC + ITM + ITG).

    ``steps`` 0 (the default) skips stage 1. Optimisation defaults are sized for a small random
    Q-Former on CPU (BLIP-2: lr 1e-4 for a BERT-base Q-Former, batch 1680-2320, 250k steps).
    """

    steps: int = Field(0, ge=0)
    #: In-batch contrastive learning and hard-negative mining want a larger batch than stage 2.
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)  # BLIP-2's value
    warmup_steps: int = Field(10, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    save_every: int = Field(50, ge=1)
    #: Size of the space where query outputs and the text's [CLS] output are compared (BLIP-2: 256).
    itc_dim: int = Field(256, ge=8)
    #: Captions are cut to this many WordPiece tokens ([CLS] and [SEP] included; BLIP-2: 32).
    max_text_len: int = Field(32, ge=4, le=512)
    #: Label smoothing of the ITC and ITG cross-entropies (BLIP-2's code: 0.1).
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    #: "train": the text side's vocabulary is the WordPiece ids occurring in the training captions
    #: (+ specials; others read as [UNK]) — ~10-25x cheaper ITG softmax on CPU. "full": all 30,522.
    text_vocab: Literal["train", "full"] = "train"


class Blip2Options(ConnectorOptions):
    """BLIP-2's Q-Former: learned queries cross-attend to the features, then a projection into the LLM.

    ``qformer``: "lite" is the stage-2-only Q-Former-lite (pre-LN, no text branch); "bert" the
    BLIP-2 Q-Former with a text branch sharing its self-attention layers (needed by stage 1);
    "auto" is "bert" when ``stage1.steps`` > 0, else "lite". With "lite" the options dump (hence
    adapter keys and answer caches) is exactly what it was before stage 1 existed.
    """

    kind: Literal["blip2"] = "blip2"
    n_queries: int = Field(8, ge=1, le=64)
    qformer_dim: int = Field(256, ge=16)
    depth: int = Field(2, ge=1, le=12)
    heads: int = Field(4, ge=1)
    qformer: Literal["auto", "lite", "bert"] = "auto"
    #: "minilm": self-attention, feed-forward and text embeddings from the packaged all-MiniLM-L6-v2
    #: (BLIP-2 initialised from BERT-base); needs qformer_dim 384, heads 12, depth <= 6.
    qformer_init: Literal["random", "minilm"] = "random"
    stage1: Blip2Stage1Options = Blip2Stage1Options()

    @property
    def resolved_qformer(self) -> str:
        if self.qformer == "auto":
            return "bert" if self.stage1.steps > 0 or self.qformer_init != "random" else "lite"
        return self.qformer

    @model_validator(mode="after")
    def _consistent(self) -> "Blip2Options":
        if self.qformer_dim % self.heads:
            raise ValueError(f"qformer_dim {self.qformer_dim} must be divisible by heads {self.heads}")
        if self.resolved_qformer == "lite" and self.stage1.steps > 0:
            raise ValueError("stage1.steps > 0 needs the Q-Former with a text branch (qformer: bert or auto)")
        if self.qformer_init == "minilm":
            from paradigms.trained_adapter.qformer import MINILM_DIM, MINILM_HEADS, MINILM_LAYERS

            if self.resolved_qformer != "bert":
                raise ValueError("qformer_init: minilm needs qformer: bert")
            if (self.qformer_dim, self.heads) != (MINILM_DIM, MINILM_HEADS) or self.depth > MINILM_LAYERS:
                raise ValueError(
                    f"qformer_init: minilm needs qformer_dim {MINILM_DIM}, heads {MINILM_HEADS} and "
                    f"depth <= {MINILM_LAYERS} (MiniLM-L6's sizes)"
                )
        return self

    @model_serializer(mode="wrap")
    def _legacy_dump(self, handler: Callable[["Blip2Options"], dict[str, Any]]) -> dict[str, Any]:
        """The Q-Former-lite dumps as before stage 1 existed (old keys stay valid); "bert" dumps all,
        with "auto" resolved so that equal setups have equal keys."""
        out = handler(self)
        if self.resolved_qformer == "lite":
            for k in ("qformer", "qformer_init", "stage1"):
                out.pop(k, None)
        else:
            out["qformer"] = "bert"
        return out


class PalmeOptions(ConnectorOptions):
    """PaLM-E-style: each (pooled) spatial feature vector -> one embedding via an affine map / MLP."""

    kind: Literal["palme"] = "palme"
    grid: int = Field(3, ge=1, le=16)  # features are average-pooled to grid×grid tokens
    hidden: int = Field(0, ge=0)  # 0: a single affine map; >0: a 2-layer MLP


AnyConnectorOptions = FrozenOptions | FlamingoOptions | Blip2Options | PalmeOptions


def _init_to_scale(linear: nn.Linear, target_std: float) -> None:
    """Make the output of ``linear`` on unit-variance input have ``target_std`` per coordinate."""
    nn.init.normal_(linear.weight, std=target_std / math.sqrt(linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class PrefixConnector(nn.Module):
    """Base of connectors whose output is spliced into the input embeddings."""

    mode: str = "prefix"

    def tokens_per_image(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class FrozenPrefix(PrefixConnector):
    """Frozen's visual prefix: the (trained) encoder's pooled output, one linear map to ``n`` embeddings.

    With ``encoder`` "last"/"all" the connector holds a trainable copy of the encoder's tail
    (:class:`EncoderTail`) and receives the frozen front's activations; with "fixed" it receives
    the frozen encoder's last feature map. The map sees layer-normalised pooled features.
    """

    def __init__(
        self, opts: FrozenOptions, feature_dim: int, d_model: int, emb_std: float, encoder_model: Any = None
    ) -> None:
        super().__init__()
        self.n = opts.n_prefix
        self.d_model = d_model
        self.encoder_tail: nn.Module | None = None
        if opts.encoder != "fixed":
            from paradigms.trained_adapter.encoder_tail import EncoderTail, first_trained_block

            if encoder_model is None:
                raise ValueError("Frozen with a trained encoder needs the encoder to copy")
            self.encoder_tail = EncoderTail(
                encoder_model, first_trained_block(encoder_model, opts.encoder, opts.encoder_blocks)
            )
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        self.proj = nn.Linear(feature_dim, self.n * d_model)
        _init_to_scale(self.proj, emb_std)

    def tokens_per_image(self) -> int:
        return self.n

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.float()
        if self.encoder_tail is not None:
            x = self.encoder_tail(x)
        pooled = x.mean(dim=(2, 3))
        return self.proj(self.norm(pooled)).view(-1, self.n, self.d_model)


class PalmePrefix(PrefixConnector):
    """PaLM-E's "multimodal sentence" tokens: each spatial feature mapped into the word-embedding space."""

    def __init__(self, opts: PalmeOptions, feature_dim: int, d_model: int, emb_std: float) -> None:
        super().__init__()
        self.grid = opts.grid
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        if opts.hidden:
            first = nn.Linear(feature_dim, opts.hidden)
            last = nn.Linear(opts.hidden, d_model)
            _init_to_scale(last, emb_std)
            self.mlp: nn.Module = nn.Sequential(first, nn.GELU(), nn.LayerNorm(opts.hidden), last)
        else:
            last = nn.Linear(feature_dim, d_model)
            _init_to_scale(last, emb_std)
            self.mlp = last

    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(feats.float(), self.grid).flatten(2).transpose(1, 2)
        return self.mlp(self.norm(x))


class QFormerLite(PrefixConnector):
    """BLIP-2's Q-Former reduced to its core: learned queries that self-attend and cross-attend to
    the image features (no BERT initialisation, no text branch), projected into the LLM."""

    def __init__(self, opts: Blip2Options, feature_dim: int, d_model: int, emb_std: float) -> None:
        super().__init__()
        d = opts.qformer_dim
        self.queries = nn.Parameter(torch.randn(opts.n_queries, d) * 0.02)
        self.inp = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, d))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d, opts.heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(opts.depth)
        )
        self.out_norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d_model)
        _init_to_scale(self.proj, emb_std)

    def tokens_per_image(self) -> int:
        return self.queries.shape[0]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        mem = self.inp(feats.float().flatten(2).transpose(1, 2))
        q = self.queries.unsqueeze(0).expand(mem.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, mem)
        return self.proj(self.out_norm(q))


class Blip2QFormerPrefix(PrefixConnector):
    """BLIP-2's stage-2 connector: the Q-Former's query path (BERT layers; stage-1 weights when
    stage 1 ran) and a linear projection of the query outputs into the LLM's embedding space."""

    def __init__(self, opts: Blip2Options, feature_dim: int, d_model: int, emb_std: float) -> None:
        super().__init__()
        from paradigms.trained_adapter.qformer import QFormer

        self.qformer = QFormer(opts.n_queries, opts.qformer_dim, opts.depth, opts.heads, feature_dim)
        self.proj = nn.Linear(opts.qformer_dim, d_model)
        _init_to_scale(self.proj, emb_std)  # query outputs are LayerNorm outputs: unit scale

    def tokens_per_image(self) -> int:
        return self.qformer.n_queries

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q, _ = self.qformer(feats)
        return self.proj(q)


# ----------------------------------------------------------------------------- Flamingo


class _FeedForward(nn.Sequential):
    def __init__(self, d: int, mult: int) -> None:
        super().__init__(nn.LayerNorm(d), nn.Linear(d, d * mult, bias=False), nn.GELU(), nn.Linear(d * mult, d, bias=False))


class _PerceiverLayer(nn.Module):
    """Latents attend to [features ; latents] (keys/values), as in Flamingo's resampler."""

    def __init__(self, d: int, heads: int, ff_mult: int, dim_head: int = 0) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(d)
        self.norm_l = nn.LayerNorm(d)
        if dim_head and dim_head * heads != d:
            # Flamingo's heads × dim_head inner width (512) differs from the latent width (1024)
            self.attn: nn.Module = _InnerAttention(d, heads, dim_head)
        else:
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True, bias=False)
        self.ff = _FeedForward(d, ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        lat = self.norm_l(latents)
        kv = torch.cat([self.norm_x(x), lat], dim=1)
        latents = latents + self.attn(lat, kv, kv, need_weights=False)[0]
        return latents + self.ff(latents)


class _InnerAttention(nn.Module):
    """Multi-head attention whose inner width is ``heads × dim_head`` (not the model width)."""

    def __init__(self, d: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_q = nn.Linear(d, inner, bias=False)
        self.to_kv = nn.Linear(d, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, d, bias=False)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, _v: torch.Tensor, need_weights: bool = False) -> tuple:
        B, Tq, _ = q_in.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(q_in).view(B, Tq, h, dh).transpose(1, 2)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        k = k.view(B, -1, h, dh).transpose(1, 2)
        v = v.view(B, -1, h, dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, Tq, h * dh)), None


class PerceiverResampler(nn.Module):
    """Any number of spatial features -> a fixed number of latents (no time embedding: one frame)."""

    def __init__(
        self, feature_dim: int, d: int, n_latents: int, depth: int, heads: int, ff_mult: int, dim_head: int = 0
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(feature_dim, d)
        self.latents = nn.Parameter(torch.randn(n_latents, d) * 0.02)
        self.layers = nn.ModuleList(_PerceiverLayer(d, heads, ff_mult, dim_head) for _ in range(depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.inp(feats.float().flatten(2).transpose(1, 2))
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for layer in self.layers:
            lat = layer(x, lat)
        return self.norm(lat)


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE: x += tanh(a)·xattn(x, media); x += tanh(b)·ffw(x); a = b = 0 at init.

    Each text position attends only to the latents of the most recent image at or before it
    (``media_idx`` ≥ 0); positions with no preceding image receive exactly nothing.
    """

    def __init__(
        self, d_model: int, d_media: int, heads: int, ff_mult: int, dim_head: int = 0, ff_all: bool = False
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim_head or max(1, d_model // heads)
        self.ff_all = ff_all
        inner = self.heads * self.head_dim
        self.norm = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, inner, bias=False)
        self.to_kv = nn.Linear(d_media, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, d_model, bias=False)
        self.ff = _FeedForward(d_model, ff_mult)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_idx: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,d]; ``media`` [B,M,L,d_media] (M images per row); ``media_idx`` [B,T] (−1: none)."""
        B, T, _ = x.shape
        _, M, L, _ = media.shape
        h, dh = self.heads, self.head_dim
        q = self.to_q(self.norm(x)).view(B, T, h, dh).transpose(1, 2)  # B h T dh
        k, v = self.to_kv(media.reshape(B, M * L, -1)).chunk(2, dim=-1)
        k = k.view(B, M * L, h, dh).transpose(1, 2)
        v = v.view(B, M * L, h, dh).transpose(1, 2)
        key_media = torch.arange(M, device=x.device).repeat_interleave(L)  # [M*L]
        allowed = media_idx.unsqueeze(-1) == key_media.view(1, 1, -1)  # B T M*L
        has_media = (media_idx >= 0).unsqueeze(-1).to(x.dtype)  # B T 1
        # Rows with no media get an all-True mask (finite softmax) and are zeroed by has_media below.
        safe = allowed | ~(media_idx >= 0).unsqueeze(-1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=safe.unsqueeze(1))
        attn = self.to_out(attn.transpose(1, 2).reshape(B, T, h * dh)) * has_media
        x = x + torch.tanh(self.attn_gate).to(x.dtype) * attn
        ff = self.ff(x) if self.ff_all else self.ff(x) * has_media
        return x + torch.tanh(self.ff_gate).to(x.dtype) * ff


class FlamingoConnector(nn.Module):
    """Resampler + gated cross-attention blocks + the learned ``<image>`` token embedding."""

    mode: str = "xattn"

    def __init__(self, opts: FlamingoOptions, feature_dim: int, d_model: int, n_layers: int, emb_std: float) -> None:
        super().__init__()
        self.resampler = PerceiverResampler(
            feature_dim, opts.resampler_dim, opts.n_latents, opts.resampler_depth, opts.heads, opts.ff_mult,
            opts.dim_head,
        )
        self.layer_ids = tuple(range(0, n_layers, opts.xattn_every))
        self.blocks = nn.ModuleList(
            GatedCrossAttentionBlock(
                d_model, opts.resampler_dim, opts.heads, opts.ff_mult, opts.dim_head, ff_all=opts.ff_scope == "all"
            )
            for _ in self.layer_ids
        )
        # Flamingo adds a trainable <image> token to the frozen vocabulary; it marks where an image is.
        self.image_token = nn.Parameter(torch.randn(1, d_model) * emb_std)
        # ... and <EOC> (OpenFlamingo: <|endofchunk|>) after each example of an interleaved sequence.
        # Drawn after the other weights, so connectors without it initialise exactly as before.
        self.eoc_token = nn.Parameter(torch.randn(1, d_model) * emb_std) if opts.end_of_chunk else None

    def tokens_per_image(self) -> int:
        return 1

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.resampler(feats)


def build_connector(
    opts: AnyConnectorOptions, feature_dim: int, llm_config: object, emb_std: float, encoder_model: Any = None
) -> nn.Module:
    """The connector for ``opts`` sized to the LLM (hidden size, layer count); Frozen copies ``encoder_model``'s tail."""
    d_model = int(getattr(llm_config, "hidden_size"))
    if isinstance(opts, FrozenOptions):
        return FrozenPrefix(opts, feature_dim, d_model, emb_std, encoder_model)
    if isinstance(opts, FlamingoOptions):
        return FlamingoConnector(opts, feature_dim, d_model, int(getattr(llm_config, "num_hidden_layers")), emb_std)
    if isinstance(opts, Blip2Options):
        if opts.resolved_qformer == "bert":
            return Blip2QFormerPrefix(opts, feature_dim, d_model, emb_std)
        return QFormerLite(opts, feature_dim, d_model, emb_std)
    if isinstance(opts, PalmeOptions):
        return PalmePrefix(opts, feature_dim, d_model, emb_std)
    raise TypeError(f"unknown connector options {type(opts).__name__}")

