"""Training loop for the trainable part of a paradigm (a connector next to a frozen LLM).

Why it looks the way it does:
- the batch drawn at step *s* is a pure function of (seed, s) — an epoch permutation seeded by the
  epoch number — and the learning rate a pure function of s, so a run resumed from a checkpoint
  reproduces the uninterrupted run's weights exactly;
- a resumable checkpoint is *one* safetensors file: weights, AdamW moments and, in its header
  metadata, the step and loss curve. Two files (tensors + a JSON of scalars) could disagree after
  a kill between their renames, and a resume would then replay steps on already-updated weights;
  nothing is pickled and nothing needs ``torch.load``;
- files are written to a temporary name and renamed, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from pydantic import Field, model_serializer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from harness.atomic import atomic_json, atomic_path, remove_stale_temps, set_aside
from harness.cache import fault_point
from harness.config import Strict

STATE_FILE = "train_state.safetensors"
#: Key of the JSON scalars (step, loss curve, optimiser groups) in the state file's header.
STATE_META_KEY = "mmbench.train_state"
#: Old, two-file layout: a state next to it may not match it, so it is never resumed from.
LEGACY_STATE_META = "train_state.json"
FINAL_FILE = "connector.safetensors"
FINAL_META = "meta.json"

log = logging.getLogger(__name__)


class TrainOptions(Strict):
    """Optimisation settings; all of them enter the adapter's checkpoint key."""

    # Defaults sized for ~1-2 minutes on 2 CPU cores with SmolLM2-135M (a backward pass through
    # the frozen 135M LLM costs ~2 s for 4 captions there); raise them on a GPU.
    #: 0 means "do not train": the paradigm evaluates the freshly initialised (seeded) connector,
    #: the untrained baseline a trained connector has to beat.
    steps: int = Field(40, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    save_every: int = Field(20, ge=1)
    #: Learning-rate multipliers by parameter-name substring (first match wins), e.g.
    #: ``{"_gate": 10}``: Flamingo's tanh gates start at 0 and, until they open, the cross-attention
    #: weights behind them get no gradient, so the gates are given a larger step.
    lr_mult: dict[str, float] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _omit_empty_lr_mult(self, handler: Callable[["TrainOptions"], dict[str, object]]) -> dict[str, object]:
        """Leave an empty ``lr_mult`` out so adapter keys and answer caches made before it existed stay valid."""
        out = handler(self)
        if not self.lr_mult:
            out.pop("lr_mult", None)
        return out


@dataclass
class TrainResult:
    loss_curve: list[tuple[int, float]]
    steps: int
    seconds: float
    resumed_from: int = 0
    trainable_params: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up then cosine decay to 10% — a function of the step only (resumable)."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    span = max(1, opts.steps - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(module: nn.Module, opts: TrainOptions) -> list[dict[str, object]]:
    """Trainable parameters grouped by learning-rate multiplier (deterministic order, for resuming)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        mult = next((m for sub, m in opts.lr_mult.items() if sub in name), 1.0)
        groups.setdefault(float(mult), []).append(p)
    return [{"params": ps, "lr_mult": m} for m, ps in sorted(groups.items())]


def batch_indices(step: int, micro: int, n: int, opts: TrainOptions) -> list[int]:
    """Example indices for (step, micro-batch): consecutive slices of seeded epoch permutations."""
    size = opts.batch_size
    start = (step * opts.grad_accum + micro) * size
    out: list[int] = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        g = torch.Generator().manual_seed(opts.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        out.extend(perm[offset : offset + size - len(out)])
    return out


@dataclass
class TrainState:
    """A resumable checkpoint: weights, extra tensors (e.g. RNG states) and the JSON scalars."""

    weights: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor]
    scalars: dict


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_train_state(path: Path, weights: dict[str, torch.Tensor], opt: torch.optim.Optimizer, scalars: dict,
                     extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write weights, AdamW moments, ``extra`` tensors and ``scalars`` as *one* file, atomically.

    ``weights`` must hold each tensor once (pass ``dict(model.named_parameters())`` for a model with
    tied embeddings: safetensors refuses shared storage).
    """
    sd = opt.state_dict()
    tensors = {f"w.{k}": v for k, v in weights.items()}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update({f"x.{k}": v for k, v in (extra or {}).items()})
    header = {**scalars, "param_groups": sd["param_groups"]}
    _save_tensors(tensors, path, metadata={STATE_META_KEY: json.dumps(header)})


def load_train_state(path: Path, opt: torch.optim.Optimizer, device: torch.device | str) -> TrainState | None:
    """The checkpoint at ``path`` with ``opt`` restored from it, or None when there is none to resume from."""
    legacy = path.with_name(LEGACY_STATE_META)
    if legacy.exists():
        # written by an older mmbench as two files that a kill may have left out of step: start over
        path.unlink(missing_ok=True)
        legacy.unlink(missing_ok=True)
        return None
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = (f.metadata() or {}).get(STATE_META_KEY)
        if header is None:
            return None
        tensors = load_file(str(path), device=str(device))
        scalars = json.loads(header)
    except Exception as exc:  # noqa: BLE001 - truncated/garbled file (safetensors raises its own types)
        set_aside(path, f"{type(exc).__name__}: {exc}")
        return None  # the state file is the only resumable one: start over, never crash every later run
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": scalars.pop("param_groups")})
    return TrainState(
        weights={k[2:]: v for k, v in tensors.items() if k.startswith("w.")},
        extra={k[2:]: v for k, v in tensors.items() if k.startswith("x.")},
        scalars=scalars,
    )


def save_weights(module: nn.Module, path: Path) -> None:
    """Trainable weights only (the frozen LLM and encoder are not the adapter's to store)."""
    _save_tensors(dict(module.state_dict()), path)


def load_weights(module: nn.Module, path: Path) -> None:
    module.load_state_dict(load_file(str(path)), strict=True)


#: What a loss function returns: the loss, or the loss and named parts to log as curves of their own.
LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, float]]


def train(
    module: nn.Module,
    loss_fn: Callable[[Sequence[int]], LossOut],
    n_examples: int,
    opts: TrainOptions,
    ckpt_dir: Path,
    *,
    frozen: Sequence[nn.Module] = (),
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    desc: str = "training adapter",
    lr_schedule: Callable[[int], float] | None = None,
    adam_eps: float = 1e-8,
    amp: bool = True,
    rng_state: bool = False,
    store_final: bool = True,
) -> TrainResult:
    """Train ``module`` for ``opts.steps`` steps, resuming from ``ckpt_dir`` if a state is there.

    ``loss_fn(indices)`` returns the mean loss of those examples (the caller owns the data), or
    ``(loss, parts)`` where ``parts`` are named components (e.g. BLIP-2's ITC/ITM/ITG losses) whose
    curves are kept beside the total's (``TrainResult.extra["parts_curve"]``, also across a resume);
    ``frozen`` modules are asserted to receive no gradient. ``on_step(step, loss)`` is called after
    each optimiser step (tests use it to simulate a crash). Returns the loss curve [(step, loss)].

    What differs between trainings is a parameter, never a second loop: ``lr_schedule(step)`` (the
    base learning rate; default :func:`lr_at`), ``adam_eps``, ``amp`` (bfloat16 autocast on CUDA),
    ``rng_state`` (the loop runs on torch's RNG seeded with ``opts.seed``, forked so the caller's is
    untouched, and a checkpoint saves and restores it, so dropout masks after a resume are the
    uninterrupted run's) and ``store_final`` (False: the caller stores the trained module its own
    way and then removes the resumable state, :data:`STATE_FILE`; nothing else is written here).
    """
    if n_examples < 1:
        raise ValueError("no training examples")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(ckpt_dir)  # a SIGKILL between writing a temporary and its rename
    device = torch.device(device)
    module.to(device).train()
    if opts.steps < 1:
        raise ValueError("train() needs steps >= 1 (steps: 0 means the caller evaluates the untrained module)")
    groups = param_groups(module, opts)
    params = [p for g in groups for p in g["params"]]  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay, eps=adam_eps)
    state_path = ckpt_dir / STATE_FILE
    use_amp = amp and device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if rng_state and device.type == "cuda" else [], enabled=rng_state):
        if rng_state:
            torch.manual_seed(opts.seed)
        result = _loop(module, loss_fn, n_examples, opts, opt, params, state_path, frozen=frozen, device=device,
                       progress=progress, on_step=on_step, desc=desc, lr_schedule=lr_schedule, use_amp=use_amp,
                       rng_state=rng_state)
    opt.zero_grad(set_to_none=True)  # the gradients of a large module are as large as it
    module.eval()
    if store_final:
        save_weights(module, ckpt_dir / FINAL_FILE)
        atomic_json(
            {"steps": opts.steps, "loss_curve": result.loss_curve, "seconds": result.seconds,
             "resumed_from": result.resumed_from, "trainable_params": result.trainable_params, **result.extra},
            ckpt_dir / FINAL_META,
        )
        state_path.unlink(missing_ok=True)
    return result


def _loop(
    module: nn.Module,
    loss_fn: Callable[[Sequence[int]], LossOut],
    n_examples: int,
    opts: TrainOptions,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    state_path: Path,
    *,
    frozen: Sequence[nn.Module],
    device: torch.device,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    desc: str,
    lr_schedule: Callable[[int], float] | None,
    use_amp: bool,
    rng_state: bool,
) -> TrainResult:
    """:func:`train`'s steps, from the resumable state if there is one (on the RNG ``train`` chose)."""
    curve: list[tuple[int, float]] = []
    parts_curve: dict[str, list[tuple[int, float]]] = {}
    start = 0
    elapsed_before = 0.0
    saved = load_train_state(state_path, opt, device)
    if saved is not None:
        meta = saved.scalars
        _load_unique_state(module, saved.weights)
        start = int(meta["step"])
        curve = [(int(s), float(l)) for s, l in meta["loss_curve"]]
        parts_curve = _read_parts(meta)
        elapsed_before = float(meta.get("seconds", 0.0))
        if rng_state:
            torch.set_rng_state(saved.extra["rng_cpu"].cpu())
            if device.type == "cuda" and "rng_cuda" in saved.extra:
                torch.cuda.set_rng_state(saved.extra["rng_cuda"].cpu(), device)
        log.info("%s: resumed at step %d/%d from %s", desc, start, opts.steps, state_path)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=opts.steps, initial=start, desc=desc, leave=False)
    every = max(1, opts.steps // 10)
    for step in range(start, opts.steps):
        base_lr = lr_schedule(step) if lr_schedule is not None else lr_at(step, opts)
        for g in opt.param_groups:
            g["lr"] = base_lr * float(g.get("lr_mult", 1.0))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        part_sums: dict[str, float] = {}
        for micro in range(opts.grad_accum):
            idx = batch_indices(step, micro, n_examples, opts)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = loss_fn(idx)
                loss, parts = out if isinstance(out, tuple) else (out, {})
                loss = loss / opts.grad_accum
            loss.backward()
            total += float(loss.detach())
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + float(v) / opts.grad_accum
        for m in frozen:
            if any(p.grad is not None for p in m.parameters()):
                raise RuntimeError("a frozen module received gradients")
        torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
        opt.step()
        curve.append((step + 1, total))
        for k, v in part_sums.items():
            parts_curve.setdefault(k, []).append((step + 1, v))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
        done = step + 1
        if done % every == 0 or done == opts.steps:
            log.info("%s: step %d/%d, loss %.4f%s", desc, done, opts.steps, total,
                     "".join(f", {k} {v:.4f}" for k, v in part_sums.items()))
        if done % opts.save_every == 0 and done < opts.steps:
            extra = {}
            if rng_state:
                extra["rng_cpu"] = torch.get_rng_state()
                if device.type == "cuda":
                    extra["rng_cuda"] = torch.cuda.get_rng_state(device)
            save_train_state(state_path, _unique_state(module), opt,
                             {"step": done, "loss_curve": curve, "seconds": elapsed_before + time.perf_counter() - t0,
                              **_parts_meta(parts_curve)}, extra=extra)
        if on_step is not None:
            on_step(done, total)
        fault_point("train_step")
    if bar is not None:
        bar.close()
    seconds = elapsed_before + time.perf_counter() - t0
    n_params = sum(p.numel() for p in params)
    return TrainResult(curve, opts.steps, seconds, start, n_params, extra=_parts_meta(parts_curve))


def _unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage once (tied input/output embeddings: the first name is kept),
    as safetensors refuses shared tensors. A module without shared tensors: its state dict."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in module.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        out[name] = t
    return out


def _load_unique_state(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load what :func:`_unique_state` saved: every name but a tied alias must be there."""
    aliases = set(module.state_dict()) - set(_unique_state(module))
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - aliases:
        raise RuntimeError(f"checkpoint does not match the module: missing {sorted(set(missing) - aliases)}, "
                           f"unexpected {sorted(unexpected)}")


def _parts_meta(parts_curve: dict[str, list[tuple[int, float]]]) -> dict[str, object]:
    """``{"parts_curve": ...}`` when the loss has named parts; nothing otherwise (metas stay as they were)."""
    return {"parts_curve": parts_curve} if parts_curve else {}


def _read_parts(meta: dict) -> dict[str, list[tuple[int, float]]]:
    return {k: [(int(s), float(v)) for s, v in c] for k, c in meta.get("parts_curve", {}).items()}


def load_result(ckpt_dir: Path) -> TrainResult | None:
    """The finished training stored in ``ckpt_dir`` (None if training has not completed there).

    A resumable state left beside a finished result (a kill between the last write and its
    clean-up) is removed here: it is three times the connector's size and never used again.
    """
    meta_path = ckpt_dir / FINAL_META
    if not (ckpt_dir / FINAL_FILE).exists() or not meta_path.exists():
        return None
    try:
        m = json.loads(meta_path.read_text())
        result = TrainResult(
            [(int(s), float(l)) for s, l in m["loss_curve"]],
            int(m["steps"]),
            float(m["seconds"]),
            int(m.get("resumed_from", 0)),
            int(m.get("trainable_params", 0)),
            extra=_parts_meta(_read_parts(m)),
        )
        with safe_open(str(ckpt_dir / FINAL_FILE), framework="pt") as f:
            f.keys()
    except Exception as exc:  # noqa: BLE001 - truncated meta.json or weights: retrain (resuming if a state is left)
        set_aside(meta_path, f"{type(exc).__name__}: {exc}")
        return None
    (ckpt_dir / STATE_FILE).unlink(missing_ok=True)
    return result
