"""torchrun over 2 CPU processes (gloo) gives exactly the single-process metrics, and a 2-process
run's cache is reused by a 1-process run without recomputation (keys are rank-independent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_runs import cli_env, metrics_table, pica_world_config

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_equals_single_process_and_resumes_with_one(tmp_path, tiny_llm_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg = pica_world_config(tmp_path, tiny_llm_dir)
    env = cli_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    args = ["run", "--config", str(cfg), "--no-progress"]

    single = tmp_path / "single"
    r1 = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--results-dir", str(single)],
                        env=env, capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]

    multi = tmp_path / "multi"
    r2 = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "harness.cli", *args, "--results-dir", str(multi)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    pd.testing.assert_frame_equal(metrics_table(single), metrics_table(multi))
    assert "samples computed: 12, read from cache: 0" in r2.stderr

    r3 = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--results-dir", str(multi)],
                        env=env, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "samples computed: 0, read from cache: 12; models loaded: none" in r3.stderr


def test_torchrun_trains_an_adapter_once_and_matches_the_single_process_metrics(tmp_path, tiny_llm_dir):
    """prepare() (adapter training) runs on rank 0 first; rank 1 loads its checkpoint, never retrains."""
    import yaml

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg = {
        "name": "mp-adapter", "seed": 0, "limit": 4, "bootstrap": 100,
        "paradigms": [{"name": "trained_adapter/frozen",
                       "options": {"train": {"steps": 3, "batch_size": 2, "save_every": 2}}}],
        "tasks": [{"name": "world_caption"}],
        "models": {"llm": {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}},
        "generation": {"max_new_tokens": 4},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["-v", "run", "--config", str(path), "--no-progress"]

    def env(name: str) -> dict[str, str]:
        e = cli_env(tmp_path / name)  # a model/adapter cache of its own: each run must train once
        e["OMP_NUM_THREADS"] = "1"
        return e

    r1 = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--results-dir", str(tmp_path / "single")],
                        env=env("a"), capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r1.stderr.count("training connector") == 1
    r2 = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "harness.cli", *args, "--results-dir", str(tmp_path / "multi")],
        env=env("b"), capture_output=True, text=True, timeout=600,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stderr.count("training connector") == 1, r2.stderr[-3000:]
    assert r2.stderr.count("loading trained connector") == 1
    pd.testing.assert_frame_equal(metrics_table(tmp_path / "single"), metrics_table(tmp_path / "multi"))
