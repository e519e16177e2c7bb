"""A training run killed at any file operation of its checkpointing resumes to exactly the weights
and loss curve of an uninterrupted run (``harness.training.train``, used by every trained connector)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import harness.atomic as A
import harness.training as T

OPTS = T.TrainOptions(steps=7, batch_size=3, lr=5e-2, warmup_steps=1, save_every=2, seed=3)
N = 10


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even ``except Exception`` handlers)."""


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=g), torch.randn(N, 2, generator=g)


def _train(ckpt: Path) -> tuple[nn.Module, T.TrainResult]:
    x, y = _data()
    m = _module()

    def loss_fn(idx):
        return nn.functional.mse_loss(m(x[list(idx)]), y[list(idx)])

    return m, T.train(m, loss_fn, N, OPTS, ckpt, progress=False)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _replaces(tmp_path: Path) -> int:
    """How many renames an uninterrupted run makes (the points where a kill changes what is on disk)."""
    count = 0
    real = os.replace

    def counting(src, dst):
        nonlocal count
        count += 1
        real(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A.os, "replace", counting)
        _train(tmp_path / "count")
    return count


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_every_checkpoint_rename_resumes_to_the_uninterrupted_weights(tmp_path, when):
    ref_module, ref = _train(tmp_path / "ref")
    n_renames = _replaces(tmp_path)
    assert n_renames >= 5  # 3 checkpoints (steps 2, 4, 6) + final weights + final meta
    real = os.replace
    for n in range(1, n_renames + 1):
        ckpt = tmp_path / f"{when}-{n}"
        calls = 0

        def dying(src, dst):
            nonlocal calls
            calls += 1
            if calls == n and when == "before":
                raise _Killed  # the temporary file is written, the rename never happens
            real(src, dst)
            if calls == n and when == "after":
                raise _Killed  # the rename happened, nothing after it did

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(A.os, "replace", dying)
            with pytest.raises(_Killed):
                _train(ckpt)
        done = T.load_result(ckpt)
        if done is None:
            module, result = _train(ckpt)
        else:  # the kill came after the run had finished writing: nothing left to train
            module = _module()
            T.load_weights(module, ckpt / T.FINAL_FILE)
            result = done
        assert _same_weights(ref_module, module), f"kill {when} rename {n}: weights differ"
        assert result.loss_curve == ref.loss_curve, f"kill {when} rename {n}: loss curve differs"
        assert not (ckpt / T.STATE_FILE).exists()


def test_state_file_carries_its_own_step(tmp_path):
    """The step lives in the state file's header, so tensors and step cannot disagree."""
    x, y = _data()
    m = _module()

    class _Stop(Exception):
        pass

    def stop(step: int, loss: float) -> None:
        if step == 4:
            raise _Stop

    with pytest.raises(_Stop):
        T.train(m, lambda idx: nn.functional.mse_loss(m(x[list(idx)]), y[list(idx)]), N, OPTS, tmp_path,
                progress=False, on_step=stop)
    opt = torch.optim.AdamW(_module().parameters())
    state = T.load_train_state(tmp_path / T.STATE_FILE, opt, "cpu")
    assert state.scalars["step"] == 4 and len(state.scalars["loss_curve"]) == 4
    assert set(state.weights) == set(m.state_dict()) and all(torch.equal(state.weights[k], v) for k, v in m.state_dict().items())
    assert opt.state_dict()["state"][0]["step"] == 4  # AdamW moments restored with the weights
    assert sorted(p.name for p in tmp_path.iterdir()) == [T.STATE_FILE]


def test_old_two_file_checkpoint_is_not_resumed_from(tmp_path):
    """A state + JSON pair from an older mmbench may be out of step: training starts over."""
    _, ref = _train(tmp_path / "ref")
    ckpt = tmp_path / "old"
    ckpt.mkdir()
    save_file({"w.0.weight": torch.zeros(8, 4)}, str(ckpt / T.STATE_FILE))
    (ckpt / T.LEGACY_STATE_META).write_text(json.dumps({"step": 4, "loss_curve": []}))
    _, result = _train(ckpt)
    assert result.resumed_from == 0 and result.loss_curve == ref.loss_curve
    assert not (ckpt / T.LEGACY_STATE_META).exists()
