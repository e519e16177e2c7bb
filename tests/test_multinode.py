"""Two "nodes" on one machine: two torchrun launches (--nnodes 2, c10d rendezvous on 127.0.0.1),
each with its own results folder and its own model cache, so no file is shared between them.

The answers travel to rank 0 over torch.distributed (gloo): node 0's cache then holds every answer
of a one-process run, identical, and node 1 wrote none; a trained adapter reaches node 1 as rank 0's
files. A node SIGKILLed mid-run makes the job fail with a message that says so, and a one-process
rerun on node 0's folder computes exactly the answers that were not gathered.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.cli_runs import cached_answers, metrics_table

pytestmark = pytest.mark.slow

TOTAL = 16  # 8 samples × (0-shot, 1-shot) in the kill test


def _torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if found is None:
        pytest.fail("torchrun is not installed next to this Python (it ships with torch)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, llm_dir: Path, paradigms: list[dict], limit: int = 6) -> Path:
    cfg = {
        "name": "multinode", "seed": 0, "limit": limit, "batch_size": 1, "bootstrap": 100, "clipscore": False,
        "paradigms": paradigms,
        "tasks": [{"name": "world_vqa"}],
        "in_context": {"shots": [0, 1]},
        "models": {"llm": {"source": "local", "name": str(llm_dir), "device": "cpu", "dtype": "float32"}},
        "generation": {"max_new_tokens": 4},
    }
    path = tmp / f"cfg-{len(paradigms)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: trained in prepare() on 8 captioned images; no shared disk: node 1 must get rank 0's weights
FROZEN = {"name": "trained_adapter/frozen", "options": {"train": {"steps": 3, "batch_size": 2, "save_every": 2},
                                                       "data": {"max_images": 8, "captions_per_image": 1}}}
UNTRAINED = {"name": "trained_adapter/frozen", "options": {"train": {"steps": 0}}}  # cheap per answer


def _env(model_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MMBENCH_CACHE"] = str(model_cache)  # each node its own: trained adapters are not shared on disk
    env["OMP_NUM_THREADS"] = "1"
    env["MMBENCH_DIST_TIMEOUT_S"] = "120"
    return env


def _args(cfg: Path, results: Path) -> list[str]:
    return ["-m", "harness.cli", "-v", "run", "--config", str(cfg), "--results-dir", str(results), "--no-progress"]


def _node(rank: int, port: int, cfg: Path, results: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    cmd = [_torchrun(), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{port}", "--max_restarts", "0", *_args(cfg, results)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    if rank == 0:  # node 0's agent hosts the rendezvous store (both "hosts" are 127.0.0.1: the first to bind wins)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    return proc


def _process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        pid, after_name = text.split(" ", 1)[0], text.rsplit(")", 1)[1]
        children.setdefault(int(after_name.split()[1]), []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _answers(results: Path) -> dict[str, dict]:
    """key -> answer without its latency (wall clock differs run to run)."""
    db = results / "cache.sqlite"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT key, payload FROM answers").fetchall()
    out = {}
    for key, payload in rows:
        a = json.loads(payload)
        a.pop("latency_s", None)
        out[key] = a
    return out


def _single(cfg: Path, results: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *_args(cfg, results)], env=env, capture_output=True, text=True, timeout=600)


def test_two_nodes_with_their_own_folders_equal_one_process(tmp_path, tiny_llm_dir):
    cfg = _config(tmp_path, tiny_llm_dir, [FROZEN])
    ref = _single(cfg, tmp_path / "single", _env(tmp_path / "cache-single"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    port = _free_port()
    nodes = [_node(r, port, cfg, tmp_path / f"node{r}", _env(tmp_path / f"cache-node{r}")) for r in (0, 1)]
    errs = [n.communicate(timeout=600)[1] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], errs[0][-3000:] + errs[1][-3000:]

    assert "samples computed: 12, read from cache: 0" in errs[0]
    pd.testing.assert_frame_equal(metrics_table(tmp_path / "single"), metrics_table(tmp_path / "node0"))
    mine, theirs = _answers(tmp_path / "single"), _answers(tmp_path / "node0")
    assert len(mine) == 12 and mine == theirs
    # node 1 wrote nothing to its results folder: rank 0 alone caches and logs
    assert not (tmp_path / "node1").exists() or not any((tmp_path / "node1").iterdir())
    # the adapter was trained once, on rank 0; node 1 got its files and loaded them
    assert errs[0].count("training connector") == 1 and "training connector" not in errs[1]
    assert "received" in errs[1] and errs[1].count("loading trained connector") == 1, errs[1][-3000:]


def test_a_killed_node_fails_the_job_clearly_and_one_process_resumes(tmp_path, tiny_llm_dir):
    cfg = _config(tmp_path, tiny_llm_dir, [UNTRAINED], limit=8)
    ref = _single(cfg, tmp_path / "single", _env(tmp_path / "cache-single"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    port = _free_port()
    node0 = _node(0, port, cfg, tmp_path / "node0", _env(tmp_path / "cache-node0"))
    # Node 1's worker freezes (SIGSTOP) as its 3rd round begins, so rank 0 has stored exactly 2 rounds × 2
    # answers and waits for the 3rd; then every process of the node (torchrun agent and worker) is SIGKILLed.
    env1 = {**_env(tmp_path / "cache-node1"), "MMBENCH_FAULT": "answer_round:3:stop"}
    node1 = _node(1, port, cfg, tmp_path / "node1", env1)
    deadline = time.time() + 300
    while cached_answers(tmp_path / "node0") < 4 and time.time() < deadline and node0.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # rank 0 is now blocked in the 3rd round's gather
    for pid in _process_tree(node1.pid):
        os.kill(pid, signal.SIGKILL)
    node1.communicate(timeout=60)
    err0 = node0.communicate(timeout=300)[1]
    if os.environ.get("MMBENCH_SHOW"):
        print(err0[-4000:])
    before = cached_answers(tmp_path / "node0")
    assert node0.returncode != 0, err0[-3000:]
    assert before == 4, f"kill landed at {before}/{TOTAL}"
    assert "lost contact with the other ranks" in err0 and "run the same command again" in err0, err0[-3000:]

    again = _single(cfg, tmp_path / "node0", _env(tmp_path / "cache-node0"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"samples computed: {TOTAL - before}, read from cache: {before}" in again.stderr
    assert _answers(tmp_path / "node0") == _answers(tmp_path / "single")  # nothing lost, nothing twice
    pd.testing.assert_frame_equal(metrics_table(tmp_path / "single"), metrics_table(tmp_path / "node0"))
