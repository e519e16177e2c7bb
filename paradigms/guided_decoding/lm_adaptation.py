"""MAGIC's LM domain adaptation: fine-tune a *copy* of the shared LLM on caption text (SimCTG).

MAGIC (Su et al., 2022) does not prompt a general LM to write captions: it first fine-tunes GPT-2
on the training captions' text only (no images) with the SimCTG objective — next-token
cross-entropy plus a token-level contrastive term that keeps the hidden states of different
tokens of one caption apart (what MAGIC's degeneration penalty later measures) — and then
decodes every caption from the same start text.

Why it looks the way it does:
- the run's shared LLM is read by every other paradigm and must stay bit-identical, so a deep copy
  is trained and the copy answers MAGIC's captions;
- the trained copy is stored once as safetensors under the mmbench cache, keyed by everything that
  determines its weights (the base LLM's identity, the captions' *content*, the training options),
  so a rerun or another torchrun rank loads it instead of training; files are written under
  per-process temporary names and renamed, and the JSON sidecar (written last) marks completion;
- the batch drawn at step *s* is a pure function of (seed, s) (``harness.training.batch_indices``),
  so the same options give the same weights.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from harness.config import Strict, repo_root, stable_hash
from harness.atomic import atomic_json, atomic_path
from harness.training import STATE_FILE, STATE_META_KEY, TrainOptions, TrainResult, train
from paradigms.guided_decoding.common import positions_from_mask
from paradigms.guided_decoding.lm_step import head_logits, trunk_forward

log = logging.getLogger(__name__)

#: Bump when the stored layout, the text layout or the objective changes (invalidates stored LMs).
ADAPTATION_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "adaptation.json"
SUBDIR = "lm_adaptation"


# ---------------------------------------------------------------------------- options
class CaptionTextFormat(Strict):
    """How one caption is laid out as LM text: ``start_text`` + caption tokens (+ EOS).

    The start text and the caption are tokenised separately and concatenated (as the authors do
    with their start token), so MAGIC decoding from exactly ``start_text`` sees the same prefix ids.
    """

    start_text: str = Field(
        "<-start_of_text->",
        min_length=1,
        description="text every caption starts from (the authors' start token; here ordinary text, "
        "tokenised by the shared tokenizer — no token is added to the vocabulary)",
    )
    append_eos: bool = Field(True, description="end every caption with the tokenizer's EOS so the LM learns to stop")


#: Options that determine the adapted weights (with the base LLM and the captions' content).
TRAINING_FIELDS = frozenset(
    {"steps", "batch_size", "grad_accum", "lr", "warmup_fraction", "weight_decay", "max_grad_norm",
     "margin", "max_length", "seed", "text_format"}
)


class AdaptationOptions(Strict):
    """Where the caption text comes from and how the LM copy is trained.

    Caption sources (at least one): ``dataset`` — a task name from ``tasks/specs`` whose dataset
    loader and options are used (``dataset_options`` override them, e.g. a local ``root``), split
    ``split`` (default: the task's support split, "train"); or ``loader`` — a dataset loader
    name with ``dataset_options``; plus any ``caption_files`` (an ``image,caption`` CSV such as
    Flickr8k's ``captions_text_only.txt``, or plain text with one caption per line).
    There is no implicit "the task being answered": one MAGIC instance answers every task of a
    run and its cache fingerprint cannot depend on the task, so the corpus is always named.

    Training defaults are sized for minutes on CPU with SmolLM2-135M; the authors trained GPT-2
    for 20 000 (COCO) / 10 000 (Flickr30k) steps of 128 captions at lr 2e-5.
    """

    dataset: str | None = Field(None, description="task name (tasks/specs/*.yaml) whose dataset's captions are used")
    loader: str | None = Field(None, description="or a dataset loader name (tasks.datasets) with dataset_options")
    dataset_options: dict[str, Any] = Field(default_factory=dict, description="loader options (override the task's)")
    split: str | None = Field(None, description="split whose captions are used (default: the task's support split, else train)")
    caption_files: tuple[str, ...] = Field((), description="extra caption-only files (image,caption CSV or one caption per line)")
    heldout_split: str | None = Field(
        None, description="split of the same dataset whose captions are scored (per-token NLL) before and after adaptation"
    )
    heldout_max: int = Field(500, ge=1, description="at most this many held-out captions are scored")

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="linear warm-up share, then linear decay to 0 (authors' schedule)")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    margin: float = Field(0.5, ge=0.0, description="SimCTG contrastive margin rho")
    max_length: int = Field(64, ge=2, description="caption tokens kept (start text and EOS not counted), as the authors' max_len")
    seed: int = 0
    text_format: CaptionTextFormat = CaptionTextFormat()
    save_every: int = Field(
        50, ge=1, description="steps between resumable checkpoints (weights + AdamW moments + RNG, ~12 bytes a "
        "parameter); a killed adaptation resumes from the last one to the same weights. Not part of the cache key",
    )

    @field_validator("dataset")
    @classmethod
    def _known_task(cls, v: str | None) -> str | None:
        if v is not None:
            from tasks.spec import task_specs

            if v not in task_specs():
                raise ValueError(f"unknown task {v!r}; choices: {', '.join(task_specs())}")
        return v

    @field_validator("loader")
    @classmethod
    def _known_loader(cls, v: str | None) -> str | None:
        if v is not None:
            from tasks.datasets import LOADERS

            if v not in LOADERS:
                raise ValueError(f"unknown dataset loader {v!r}; choices: {', '.join(sorted(LOADERS))}")
        return v

    @model_validator(mode="after")
    def _one_corpus(self) -> "AdaptationOptions":
        if self.dataset and self.loader:
            raise ValueError("give either 'dataset' (a task name) or 'loader', not both")
        if not (self.dataset or self.loader or self.caption_files):
            raise ValueError("no caption text: set 'dataset' (a task name), 'loader' or 'caption_files'")
        if self.heldout_split and not (self.dataset or self.loader):
            raise ValueError("'heldout_split' needs 'dataset' or 'loader' (the split is taken from that dataset)")
        return self


# ----------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CaptionCorpus:
    """The caption text an adaptation trains on, and where it came from."""

    captions: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def digest(self) -> str:
        return stable_hash(list(self.captions), n=32)

    def describe(self) -> str:
        return " + ".join(self.sources)


def _resolve(path: str) -> Path:
    """Relative paths are read from the working directory, else from the mmbench checkout (as task roots are)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    candidate = repo_root() / p
    return candidate if candidate.exists() else p


def _dataset_captions(o: AdaptationOptions, split: str | None) -> tuple[list[str], str]:
    from tasks.datasets import load_dataset

    if o.dataset:
        from tasks.spec import get_task

        spec = get_task(o.dataset)
        loader, opts = spec.dataset, {**spec.dataset_options, **o.dataset_options}
        split = split or spec.support_split or "train"
    else:
        assert o.loader is not None
        loader, opts, split = o.loader, dict(o.dataset_options), split or "train"
    if isinstance(opts.get("root"), str):
        opts["root"] = str(_resolve(opts["root"]))
    ds = load_dataset(loader, split, opts)
    caps = [r.strip() for s in ds.samples for r in s.references if r.strip()]
    return caps, f"{loader}:{split}"


def _file_captions(path: str) -> list[str]:
    p = _resolve(path)
    if not p.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    with p.open(encoding="utf-8") as fh:
        first = fh.readline().strip().lower()
    if first.replace(" ", "") == "image,caption":
        from tasks.datasets.flickr8k import read_caption_csv

        return [c for _, _, c in read_caption_csv(p)]
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_corpus(o: AdaptationOptions) -> CaptionCorpus:
    """All captions the options name, in a fixed order (dataset first, then files as listed)."""
    caps: list[str] = []
    sources: list[str] = []
    if o.dataset or o.loader:
        c, src = _dataset_captions(o, o.split)
        caps += c
        sources.append(f"{src} ({len(c)} captions)")
    for f in o.caption_files:
        c = _file_captions(f)
        caps += c
        sources.append(f"{Path(f).name} ({len(c)} captions)")
    if not caps:
        raise ValueError(f"LM adaptation: no captions in {' + '.join(sources) or 'the named sources'}")
    return CaptionCorpus(tuple(caps), tuple(sources))


def load_heldout(o: AdaptationOptions) -> list[str]:
    """Captions of ``heldout_split`` (the first ``heldout_max``), never trained on unless the splits are the same."""
    if not o.heldout_split:
        return []
    caps, _ = _dataset_captions(o, o.heldout_split)
    return caps[: o.heldout_max]


# --------------------------------------------------------------------------- identity
def base_llm_identity(backbones: Any) -> str:
    """The shared LLM as the run's cache keys see it (weights, dtype, device type).

    Read from the run config when there is one, so that computing the key (and hence a fully
    cached rerun) loads no model; otherwise (tests, scripts) from the loaded LLM.
    """
    cfg = getattr(getattr(backbones, "config", None), "llm", None)
    if cfg is not None:
        from harness.models.llm import resolve_dtype, llm_fingerprint, resolve_device

        device = resolve_device(cfg.device)
        dtype = str(resolve_dtype(cfg.dtype, device)).replace("torch.", "")
        return f"{llm_fingerprint(cfg.source, cfg.name, cfg.revision)}:{dtype}:{device.split(':')[0]}"
    llm = backbones.llm
    dtype = str(next(llm.model.parameters()).dtype).replace("torch.", "")
    return f"{llm.fingerprint}:{dtype}:{llm.device.type}"


def adaptation_key(base_llm: str, corpus_digest: str, o: AdaptationOptions) -> str:
    """What the adapted weights depend on; names the cache folder and enters MAGIC's fingerprint."""
    return stable_hash(
        {
            "format": ADAPTATION_FORMAT,
            "llm": base_llm,
            "corpus": corpus_digest,
            "train": o.model_dump(mode="json", include=set(TRAINING_FIELDS)),
        }
    )


# ------------------------------------------------------------------------------- loss
def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 activations are scored in float32; float64 (tests) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def contrastive_token_loss(hidden: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """SimCTG's token-level contrastive term.

    For each sequence, s_ij = cos(h_i, h_j) of its last-layer hidden states; every ordered pair
    (i, j), i ≠ j, of real (unpadded) tokens contributes max(0, margin − (s_ii − s_ij)); the sum
    over all sequences is divided by the number of such pairs (the authors' averaging). Padding is
    given by ``mask`` rather than by a pad id, so a pad id that is also EOS cannot hide a real EOS.
    """
    z = F.normalize(_at_least_float32(hidden), dim=-1)
    sim = z @ z.transpose(1, 2)
    gold = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    hinge = torch.relu(margin - (gold - sim))
    m = mask.bool()
    t = m.shape[1]
    pairs = m[:, :, None] & m[:, None, :] & ~torch.eye(t, dtype=torch.bool, device=m.device)[None]
    return torch.where(pairs, hinge, torch.zeros_like(hinge)).sum() / pairs.sum().clamp(min=1)


def simctg_loss(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    input_mask: torch.Tensor,
    target_mask: torch.Tensor,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MLE + contrastive, MLE, contrastive): MLE is the mean cross-entropy over real target tokens."""
    sel = target_mask.bool()
    mle = F.cross_entropy(_at_least_float32(logits[sel]), targets[sel])
    cl = contrastive_token_loss(hidden, input_mask, margin)
    return mle + cl, mle, cl


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask (training: every real token keeps positions 0..L-1)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def lm_simctg_loss(
    model: Any, seqs: Sequence[Sequence[int]], margin: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimCTG loss of a causal LM on token sequences (input = all but the last token, target = shifted)."""
    ids, mask = pad_right(seqs, pad_id, next(model.parameters()).device)
    inp, in_mask = ids[:, :-1], mask[:, :-1]
    hidden, _ = trunk_forward(model, inp, in_mask, positions_from_mask(in_mask), None, use_cache=False)
    logits = head_logits(model, hidden)
    return simctg_loss(logits, hidden, ids[:, 1:], in_mask, mask[:, 1:], margin)


@torch.no_grad()
def caption_nll(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = 16) -> float:
    """Mean per-token negative log-likelihood of the sequences' tokens after their first one."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[start : start + batch_size], pad_id, device)
        inp, in_mask = ids[:, :-1], mask[:, :-1]
        hidden, _ = trunk_forward(model, inp, in_mask, positions_from_mask(in_mask), None, use_cache=False)
        logits = head_logits(model, hidden)
        sel = mask[:, 1:].bool()
        total += float(F.cross_entropy(logits[sel], ids[:, 1:][sel], reduction="sum"))
        count += int(sel.sum())
    model.train(was_training)
    return total / max(1, count)


# --------------------------------------------------------------------------- encoding
def encode_captions(
    tokenizer: Any, captions: Sequence[str], fmt: CaptionTextFormat, max_length: int
) -> tuple[list[list[int]], int]:
    """Token ids ``start + caption[:max_length] + [EOS]`` per caption; captions of < 2 tokens are
    dropped (as the authors do). Returns (sequences, number dropped)."""
    start = list(tokenizer(fmt.start_text, add_special_tokens=False).input_ids)
    eos = [int(tokenizer.eos_token_id)] if fmt.append_eos else []
    if fmt.append_eos and tokenizer.eos_token_id is None:
        raise ValueError("text_format.append_eos needs a tokenizer with an EOS token")
    enc = tokenizer([c.strip() for c in captions], add_special_tokens=False).input_ids if captions else []
    out: list[list[int]] = []
    dropped = 0
    for ids in enc:
        if len(ids) < 2:
            dropped += 1
            continue
        out.append(start + list(ids[:max_length]) + eos)
    return out, dropped


def _pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid if pid is not None else 0)  # padding is masked out; the id only fills the tensor


# --------------------------------------------------------------------------- training
def lr_factor(step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0 (a function of the step)."""
    warm = int(warmup_fraction * steps)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (steps - step) / max(1, steps - warm))


def train_options(o: AdaptationOptions) -> TrainOptions:
    """The adaptation's settings as the shared training loop reads them (batches, clipping, seed, checkpoints)."""
    return TrainOptions(steps=o.steps, batch_size=o.batch_size, grad_accum=o.grad_accum, lr=o.lr,
                        weight_decay=o.weight_decay, warmup_steps=int(o.warmup_fraction * o.steps),
                        max_grad_norm=o.max_grad_norm, seed=o.seed, save_every=o.save_every)


def train_lm(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    o: AdaptationOptions,
    pad_id: int,
    directory: Path,
    *,
    progress: bool = True,
    on_step: Any = None,
) -> TrainResult:
    """Train ``model`` (already a copy, float32) in place with :func:`harness.training.train`.

    The authors' recipe as that loop's parameters: SimCTG loss (MLE and contrastive parts), linear
    warm-up then decay to 0, AdamW with eps 1e-6, float32 (no autocast), and the RNG (dropout) seeded
    and kept in the resumable checkpoint under ``directory``, so a killed run resumes to the
    uninterrupted run's weights. The caller stores the weights and then removes the checkpoint.
    """
    if not seqs:
        raise ValueError("LM adaptation: no caption has 2 or more tokens")
    _drop_old_state(directory / STATE_FILE)
    for p in model.parameters():
        p.requires_grad_(True)

    def loss_fn(idx: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, mle, cl = lm_simctg_loss(model, [seqs[i] for i in idx], o.margin, pad_id)
        return loss, {"mle": float(mle.detach()), "contrastive": float(cl.detach())}

    try:
        return train(model, loss_fn, len(seqs), train_options(o), directory, device=next(model.parameters()).device,
                     progress=progress, on_step=on_step, desc="adapting LM to captions (MAGIC)",
                     lr_schedule=lambda step: o.lr * lr_factor(step, o.steps, o.warmup_fraction), adam_eps=1e-6,
                     amp=False, rng_state=True, store_final=False)
    finally:
        for p in model.parameters():
            p.requires_grad_(False)


def _drop_old_state(path: Path) -> None:
    """A checkpoint of the adaptation's own loop of earlier versions (loss rows [step, total, mle, cl])
    is not resumed: the shared loop keeps the parts as curves of their own. The adaptation restarts."""
    if not path.is_file():
        return
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(STATE_META_KEY, "{}"))
    except Exception:  # noqa: BLE001 - unreadable: load_train_state sets it aside
        return
    if any(len(row) != 2 for row in header.get("loss_curve", [])):
        log.info("LM adaptation: checkpoint %s has the old layout; starting over", path)
        path.unlink(missing_ok=True)


def _atomic_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp))  # handles tied embeddings (shared tensors) that save_file rejects


def read_sidecar(directory: Path) -> dict[str, Any] | None:
    """The finished adaptation's record, or None if none has completed there (the sidecar is written last)."""
    meta, weights = directory / SIDECAR_FILE, directory / WEIGHTS_FILE
    if not (meta.is_file() and weights.is_file()):
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------ the result
@dataclass
class AdaptedLM:
    """The adapted copy (a ``LanguageModel`` sharing the base tokenizer) and its record."""

    llm: Any
    key: str
    directory: Path
    meta: dict[str, Any]
    trained_steps: int  # optimisation steps run in this call (0: loaded from the cache)

    @property
    def final_loss(self) -> float:
        return float(self.meta["loss_curve"][-1][1])

    def train_result(self) -> TrainResult:
        """For ``harness.training_run.log_training`` (MLflow nested run with the loss curve)."""
        rows = self.meta["loss_curve"]
        curve = [(int(r[0]), float(r[1])) for r in rows]
        parts = {"mle": [(int(r[0]), float(r[2])) for r in rows], "contrastive": [(int(r[0]), float(r[3])) for r in rows]}
        return TrainResult(
            curve, int(self.meta["steps"]), float(self.meta["seconds"]), int(self.meta.get("resumed_from", 0)),
            int(self.meta["trainable_params"]),
            extra={"lm_adaptation": self.key, "parts_curve": parts},
        )

    def trace(self) -> dict[str, Any]:
        return {
            "used": True,
            "key": self.key,
            "dataset": self.meta["corpus"]["sources"],
            "n_captions": self.meta["corpus"]["n_sequences"],
            "steps": int(self.meta["steps"]),
            "final_loss": round(self.final_loss, 5),
            "heldout_nll": self.meta.get("heldout", {}),
        }


def adapt_language_model(
    base: Any,
    corpus: CaptionCorpus,
    o: AdaptationOptions,
    cache_dir: Path,
    *,
    base_identity: str,
    heldout: Sequence[str] = (),
    progress: bool = True,
) -> AdaptedLM:
    """The adapted copy of ``base`` (a ``LanguageModel``): loaded from the cache, or trained and stored.

    ``base`` itself is only read (deep-copied, and used for the held-out "before" score).
    """
    import transformers

    from harness.models.llm import LanguageModel

    key = adaptation_key(base_identity, corpus.digest, o)
    directory = Path(cache_dir) / SUBDIR / key
    tok = base.tokenizer
    pad_id = _pad_id(tok)
    base_dtype = next(base.model.parameters()).dtype
    model = copy.deepcopy(base.model)
    meta = read_sidecar(directory)
    trained = 0
    if meta is None:
        seqs, dropped = encode_captions(tok, corpus.captions, o.text_format, o.max_length)
        log.info("adapting %s to %d captions (%s), %d steps; stored under %s", base.name, len(seqs), corpus.describe(), o.steps, directory)
        model.float()
        result = train_lm(model, seqs, o, pad_id, directory, progress=progress)
        trained = o.steps - result.resumed_from
        parts = {k: dict(c) for k, c in result.extra.get("parts_curve", {}).items()}  # type: ignore[union-attr]
        curve = [(s, t, parts["mle"][s], parts["contrastive"][s]) for s, t in result.loss_curve]
        _atomic_weights(model, directory / WEIGHTS_FILE)
        model.to(base_dtype)
        meta = {
            "format": ADAPTATION_FORMAT,
            "key": key,
            "base_llm": base_identity,
            "corpus": {"sources": corpus.describe(), "digest": corpus.digest, "n_captions": len(corpus.captions),
                       "n_sequences": len(seqs), "dropped_short": dropped},
            "options": o.model_dump(mode="json", include=set(TRAINING_FIELDS)),
            "steps": o.steps,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 2),  # over all the runs that trained it (resumed ones too)
            "trainable_params": sum(p.numel() for p in model.parameters()),
            "loss_curve": [[s, round(t, 6), round(m, 6), round(c, 6)] for s, t, m, c in curve],
            "loss_curve_columns": ["step", "total", "mle", "contrastive"],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        atomic_json(meta, directory / SIDECAR_FILE)
        (directory / STATE_FILE).unlink(missing_ok=True)
    else:
        (directory / STATE_FILE).unlink(missing_ok=True)  # left by a kill just after the sidecar was written
        from safetensors.torch import load_model

        load_model(model, str(directory / WEIGHTS_FILE), strict=True, device=str(next(model.parameters()).device))
        log.info("LM adaptation %s loaded from %s (trained earlier: %s steps)", key, directory, meta.get("steps"))
    if heldout:
        name = f"{o.heldout_split}[:{len(heldout)}]"
        if name not in meta.get("heldout", {}):
            seqs, _ = encode_captions(tok, heldout, o.text_format, o.max_length)
            before = caption_nll(base.model, seqs, pad_id)
            after = caption_nll(model, seqs, pad_id)
            meta = {**meta, "heldout": {**meta.get("heldout", {}), name: {"before": round(before, 5), "after": round(after, 5), "n": len(seqs)}}}
            atomic_json(meta, directory / SIDECAR_FILE)
    llm = LanguageModel(model, tok, f"{base.fingerprint}+magic_lm:{key}", f"{base.name} (MAGIC caption-adapted {key})")
    return AdaptedLM(llm=llm, key=key, directory=directory, meta=meta, trained_steps=trained)

