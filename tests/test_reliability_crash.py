"""Crash safety, proven on one results folder: a run is SIGKILLed again and again (at random times,
inside cache writes and inside MLflow calls, via ``MMBENCH_FAULT``), interrupted with Ctrl-C, and
loses its tracking store mid-run; each time it is resumed. It must end with exactly the metrics of
an uninterrupted run, one cached answer per sample (none lost, none duplicated), an intact SQLite
file, and no MLflow run left RUNNING. The first test kills text_conversion and guided_decoding; the
second kills tool_agent and trained_adapter, four times inside the connector's training."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.cli_runs import cached_answers, cli_cmd, cli_env, metrics_table, world_vqa_config

pytestmark = pytest.mark.slow

LIMIT = 7
# (pica, magic) × (0-shot, 1-shot) × LIMIT samples. The 20 kills below add at most 24 answers even
# when every timer kill lands one answer late (they stop at the 2nd new answer), so the schedule
# never finishes the run by itself, however fast the machine.
N_ANSWERS = 4 * LIMIT


def _config(tmp: Path, llm_dir: Path) -> Path:
    return world_vqa_config(tmp, llm_dir, [
        {"name": "text_conversion/pica", "options": {"converters": [{"kind": "objects"}]}},
        {"name": "guided_decoding/magic", "options": {"k": 4}},
    ], name="crash-test", limit=LIMIT, bootstrap=50, max_new_tokens=3)


def _texts(results: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(results / "cache.sqlite") as c:
        rows = c.execute("SELECT key, payload FROM answers").fetchall()
    return {k: (json.loads(p)["text"], json.loads(p)["error"]) for k, p in rows}


def _mlflow_runs(results: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mmbench")
    return client.search_runs([exp.experiment_id], max_results=10_000)


#: The kill rotation: ("fault", MMBENCH_FAULT) kills itself at that point; ("timer", None) is a
#: SIGKILL from outside at a random moment after the process wrote its first answer.
#: ``cache_write:n`` counts every transaction of that process (answers, shot selections, metric
#: memos), so ``cache_write:2`` dies inside the 2nd write with exactly one committed. ``mlflow:n``
#: counts tracking calls: 1 reap, 2-5 parent run + config, then 6 per finished unit; "{pre}" is a
#: call before compute, "{unit}" one inside the first unit's logging (only once that unit is cached,
#: so the kill costs no compute).
ROTATION = [("fault", "cache_write:2"), ("fault", "mlflow:{pre}"), ("timer", None), ("fault", "cache_write:3"),
            ("fault", "mlflow:{unit}"), ("fault", "cache_write:1"), ("timer", None)]
N_KILLS = 20


def _fault(template: str, answers: int, rng: random.Random) -> str:
    unit_cached = answers >= LIMIT  # the first unit (pica 0-shot) is complete in the cache
    return template.format(pre=rng.randint(1, 5), unit=rng.randint(6, 11) if unit_cached else rng.randint(1, 5))


def _kill_after_an_answer(proc: subprocess.Popen, results: Path, before: int, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after it writes an answer, or as soon as it writes a second
    one (so a fast machine cannot finish the run between two kills)."""
    deadline = time.time() + 120
    while cached_answers(results) == before and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_at = time.time() + delay
    while time.time() < kill_at and cached_answers(results) < before + 2 and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def _integrity(results: Path) -> None:
    with sqlite3.connect(results / "cache.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n, keys, pairs = c.execute("SELECT COUNT(*), COUNT(DISTINCT key), COUNT(DISTINCT unit || '|' || sample_id) FROM answers").fetchone()
    assert n == keys == pairs, f"duplicate answers: {n} rows, {keys} keys, {pairs} (unit, sample) pairs"


def test_killed_interrupted_and_untracked_runs_resume_to_the_uninterrupted_result(tmp_path, tiny_llm_dir):
    cfg = _config(tmp_path, tiny_llm_dir)
    ref = tmp_path / "ref"
    done = subprocess.run(cli_cmd(cfg, ref), env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cached_answers(ref) == N_ANSWERS

    res = tmp_path / "res"
    rng = random.Random(9)
    kills = {"fault": 0, "timer": 0}
    progress = []
    faults = []
    for i in range(N_KILLS):
        kind, arg = ROTATION[i % len(ROTATION)]
        before = cached_answers(res)
        arg = _fault(arg, before, rng) if kind == "fault" else None
        faults.append(arg or "timer")
        proc = subprocess.Popen(cli_cmd(cfg, res), env=cli_env(tmp_path, arg),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kind == "timer":
            _kill_after_an_answer(proc, res, before, rng.uniform(0.0, 0.5))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{faults}, {progress}: exit {proc.returncode}\n{err[-2000:]}"
        kills[kind] += 1
        _integrity(res)
        progress.append(cached_answers(res))
    assert sum(kills.values()) >= 20 and kills["timer"] >= 5
    assert progress[-1] < N_ANSWERS, f"the schedule finished the run early: {progress}"

    # Ctrl-C in the middle of a cache write: the write completes, the run exits 130 with a hint.
    before = cached_answers(res)
    intr = subprocess.run(cli_cmd(cfg, res), env=cli_env(tmp_path, "cache_write:2:sigint"),
                          capture_output=True, text=True, timeout=300)
    assert intr.returncode == 130, intr.stderr[-2000:]
    assert "run the same command again to resume" in intr.stderr
    _integrity(res)
    # two transactions committed, the 2nd despite SIGINT arriving before its COMMIT (at most one
    # of them is a memo write, so at least one more answer is there)
    assert cached_answers(res) >= before + 1

    # The tracking store fails from its 8th call on (inside the first unit's logging): computing
    # goes on to the end, the run says logging failed and exits non-zero.
    outage = subprocess.run(cli_cmd(cfg, res), env=cli_env(tmp_path, "mlflow:8:raise"),
                            capture_output=True, text=True, timeout=600)
    assert outage.returncode == 1, outage.stderr[-2000:]
    assert "MLflow logging failed" in outage.stderr and "Run the same command again" in outage.stderr
    assert cached_answers(res) == N_ANSWERS  # every answer computed and cached despite the outage

    # The rerun computes nothing, logs everything, and matches the uninterrupted run exactly.
    final = subprocess.run(cli_cmd(cfg, res), env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"samples computed: 0, read from cache: {N_ANSWERS}; models loaded: none" in final.stderr
    _integrity(res)
    assert cached_answers(res) == N_ANSWERS
    pd.testing.assert_frame_equal(metrics_table(ref), metrics_table(res))
    assert _texts(ref) == _texts(res)  # bit-identical answers, sample by sample, across processes

    runs = _mlflow_runs(res)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"], "zombie MLflow runs left"
    assert sum(r.info.status == "KILLED" for r in runs) >= 10  # the killed processes' runs, closed
    parents = [r for r in runs if r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags]
    last = max(parents, key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == last.info.run_id]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    for c in children:
        path = client.download_artifacts(c.info.run_id, "predictions.jsonl", str(tmp_path / c.info.run_id))
        rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
        assert len(rows) == LIMIT and len({r["sample_id"] for r in rows}) == LIMIT
    print(f"\nkills: {kills}\nfaults: {faults}\nanswers after each kill: {progress}")


def test_unreachable_tracking_server_fails_fast_before_compute(tmp_path, tiny_llm_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    cfg = _config(tmp_path, tiny_llm_dir)
    start = time.time()
    done = subprocess.run([*cli_cmd(cfg, tmp_path / "r"), "--tracking-uri", f"http://127.0.0.1:{port}"],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    took = time.time() - start
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "Nothing was computed" in done.stderr
    assert "Traceback" not in done.stderr
    assert cached_answers(tmp_path / "r") == 0
    assert took < 90, f"took {took:.0f} s to give up on a closed port"


#: The other two paradigms, with a kill inside connector training. Per process, ``train_step:n``
#: dies after the n-th optimiser step it makes (6 steps, checkpoints after steps 2 and 4).
AGENT_ADAPTER_KILLS = [
    "train_step:1",   # before the first checkpoint: training restarts from step 0
    "train_step:3",   # after step 3: the step-2 checkpoint is on disk
    "train_step:2",   # resumed at 2, dies after step 4 (its checkpoint written)
    "train_step:2",   # resumed at 4, dies after step 6, before the final weights are saved
    "cache_write:1",  # resumed at 4, finishes training; dies inside the first answer's write
    "timer",
    "mlflow:{pre}",
    "cache_write:2",  # inside the adapter's answers
    "cache_write:2",  # its last answer is written, the next write dies
    "timer",          # inside the agent's answers (the test checks that answers of both units were written)
]


def test_agent_and_adapter_killed_inside_training_and_answering_resume_to_the_uninterrupted_result(tmp_path, tiny_llm_dir):
    limit = 4
    cfg = {
        "name": "crash-agent-adapter", "seed": 0, "limit": limit, "batch_size": 1, "bootstrap": 50,
        "paradigms": [
            {"name": "trained_adapter/frozen", "options": {"train": {"steps": 6, "batch_size": 2, "save_every": 2}}},
            {"name": "tool_agent/mm_react", "options": {"max_steps": 2}},
        ],
        "tasks": [{"name": "world_vqa"}],
        "models": {"llm": {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}},
        "generation": {"max_new_tokens": 4},
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    n_answers = 2 * limit

    def env(cache: str, fault: str | None = None) -> dict[str, str]:
        e = cli_env(tmp_path, fault)
        e["MMBENCH_CACHE"] = str(tmp_path / cache)  # each series trains its own connector
        return e

    ref = tmp_path / "ref"
    done = subprocess.run(cli_cmd(path, ref), env=env("cache_ref"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cached_answers(ref) == n_answers

    res = tmp_path / "res"
    rng = random.Random(5)
    progress = []
    for fault in AGENT_ADAPTER_KILLS:
        before = cached_answers(res)
        arg = None if fault == "timer" else fault.format(pre=rng.randint(1, 5))
        proc = subprocess.Popen(cli_cmd(path, res), env=env("cache_res", arg), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if fault == "timer":
            _kill_after_an_answer(proc, res, before, rng.uniform(0.0, 0.3))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{fault} {progress}: exit {proc.returncode}\n{err[-2000:]}"
        _integrity(res)
        progress.append(cached_answers(res))
    assert progress[3] == 0, progress  # the first four kills were inside training
    assert limit < progress[-1] < n_answers, progress  # the last ones inside the agent's answers

    final = subprocess.run(cli_cmd(path, res), env=env("cache_res"), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    _integrity(res)
    assert cached_answers(res) == n_answers
    pd.testing.assert_frame_equal(metrics_table(ref), metrics_table(res))
    assert _texts(ref) == _texts(res)

    # the connector trained through four kills is the uninterrupted one, bit for bit
    from safetensors.torch import load_file

    (ref_dir,) = [p.parent for p in (tmp_path / "cache_ref").rglob("connector.safetensors")]
    (res_dir,) = [p.parent for p in (tmp_path / "cache_res").rglob("connector.safetensors")]
    assert ref_dir.name == res_dir.name  # same adapter key
    a, b = load_file(str(ref_dir / "connector.safetensors")), load_file(str(res_dir / "connector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((res_dir / "meta.json").read_text())
    assert meta["resumed_from"] == 4 and meta["loss_curve"] == json.loads((ref_dir / "meta.json").read_text())["loss_curve"]
    assert not list(res_dir.glob("train_state*")) and not list(res_dir.glob("*.tmp"))
    print(f"\nkills: {AGENT_ADAPTER_KILLS}\nanswers after each kill: {progress}")
