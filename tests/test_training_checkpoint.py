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


def _atomic_writes(tmp_path: Path) -> int:
    """How many atomic file writes an uninterrupted run makes (each is a point a SIGKILL can land)."""
    count = 0
    real = A.fsync_path

    def counting(path):
        nonlocal count
        count += Path(path).is_file()
        real(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A, "fsync_path", counting)
        _train(tmp_path / "count-writes")
    return count


_CHILD = "import sys; from pathlib import Path; from tests.test_training_checkpoint import _train; _train(Path(sys.argv[1]))"


@pytest.mark.slow
def test_sigkill_of_a_real_process_at_every_write_step_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real subprocess is SIGKILLed (``MMBENCH_FAULT``) with each checkpoint file written but not
    yet renamed, and right after each rename; training then resumes here to the same weights, loss
    curve and no temporary file left behind."""
    import subprocess
    import sys

    from harness.config import repo_root

    ref_module, ref = _train(tmp_path / "ref")
    n_writes = _atomic_writes(tmp_path)
    assert n_writes >= 5  # 3 checkpoints + final weights + final meta
    for site in ("file_write", "file_replaced"):
        for n in range(1, n_writes + 1):
            ckpt = tmp_path / f"{site}-{n}"
            env = {**os.environ, "MMBENCH_FAULT": f"{site}:{n}:kill", "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-c", _CHILD, str(ckpt)], env=env, cwd=repo_root(),
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == -9, (site, n, done.stderr[-2000:])
            if site == "file_write":
                assert list(ckpt.glob("*.tmp")), "the kill should leave the temporary behind"
            done_result = T.load_result(ckpt)
            if done_result is None:
                module, result = _train(ckpt)
            else:
                module = _module()
                T.load_weights(module, ckpt / T.FINAL_FILE)
                result = done_result
            assert _same_weights(ref_module, module), f"SIGKILL at {site} #{n}: weights differ"
            assert result.loss_curve == ref.loss_curve, f"SIGKILL at {site} #{n}: loss curve differs"
            assert not list(ckpt.glob("*.tmp")) or done_result is not None, f"{site} #{n}: temporary left"


def test_truncated_state_and_meta_are_set_aside_and_training_resumes(tmp_path, caplog):
    ref_module, ref = _train(tmp_path / "ref")
    ckpt = tmp_path / "ckpt"
    _train(ckpt)
    meta = ckpt / T.FINAL_META
    meta.write_text(meta.read_text()[:20])  # a truncated meta.json
    with caplog.at_level("WARNING"):
        assert T.load_result(ckpt) is None
    assert "unreadable" in caplog.text and list(ckpt.glob("meta.json.corrupt-*"))
    module, result = _train(ckpt)  # retrains rather than crashing on every later run
    assert _same_weights(ref_module, module) and result.loss_curve == ref.loss_curve

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / T.STATE_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated safetensors
    module, result = _train(state_dir)
    assert _same_weights(ref_module, module) and list(state_dir.glob(f"{T.STATE_FILE}.corrupt-*"))


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
