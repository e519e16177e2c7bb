"""A run killed with SIGKILL and rerun ends with the numbers of an uninterrupted run, computing no
sample twice; a finished run reruns from the cache without loading any model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_runs import cached_answers, cli_cmd, cli_env, metrics_table, pica_world_config

pytestmark = pytest.mark.slow


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_llm_dir):
    cfg = pica_world_config(tmp_path, tiny_llm_dir)
    env = cli_env(tmp_path)

    ref = tmp_path / "ref"
    done = subprocess.run(cli_cmd(cfg, ref), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    total = cached_answers(ref)
    assert total == 12  # 6 samples × (0-shot, 1-shot)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli_cmd(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while cached_answers(killed) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = cached_answers(killed)
    assert 0 < before < total, f"kill landed at {before}/{total}"
    with sqlite3.connect(killed / "cache.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    resumed = subprocess.run(cli_cmd(cfg, killed), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"samples computed: {total - before}, read from cache: {before}" in resumed.stderr
    assert cached_answers(killed) == total
    pd.testing.assert_frame_equal(metrics_table(ref), metrics_table(killed))

    again = subprocess.run(cli_cmd(cfg, killed), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert f"samples computed: 0, read from cache: {total}; models loaded: none" in again.stderr


def test_mlflow_holds_parent_and_nested_runs_with_predictions(tmp_path, tiny_llm_dir):
    from mlflow import MlflowClient

    cfg = pica_world_config(tmp_path, tiny_llm_dir)
    results = tmp_path / "r"
    done = subprocess.run(cli_cmd(cfg, results), env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mmbench")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    child = children[0]
    assert "overall" in child.data.metrics and "overall_ci_low" in child.data.metrics
    assert child.data.params["paradigm"] == "text_conversion/pica"
    assert child.data.params["dataset_size"] == "6"
    path = client.download_artifacts(child.info.run_id, "predictions.jsonl", str(tmp_path))
    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert len(rows) == 6 and all("prediction" in r and "prompt" in r and "trace" in r for r in rows)
    repro = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "reproducibility.json", str(tmp_path))).read_text())
    assert {"config_hash", "packages", "git", "hardware", "fingerprints"} <= set(repro)
