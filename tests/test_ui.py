"""`mmbench ui`: a real MLflow server on loopback serves the runs of a real store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_ui_serves_runs_lined_up_for_compare(report_store):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from harness.cli import main; main()", "ui",
           "--results-dir", str(report_store["results"]), "--port", str(port)]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        exps: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
            try:
                exps = _call(base, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
                break
            except OSError:
                time.sleep(1)
        ids = [e["experiment_id"] for e in exps.get("experiments", []) if e["name"] == "mmbench"]
        assert ids, f"no mmbench experiment served: {exps}"
        first = proc.stdout.readline() if proc.stdout else ""
        assert f"{base}/#/experiments/{ids[0]}/runs" in first  # lands on the runs table, not the list
        runs = _call(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 1000})["runs"]
        nested = [r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
        parents = {t["value"] for r in nested for t in r["data"]["tags"] if t["key"] == "mlflow.parentRunId"}
        assert len(parents) == 3 and len(nested) == 30  # three parent runs × 10 units
        # the compare view lines paradigms up by the same params/tags on every nested run
        keys = {frozenset(p["key"] for p in r["data"]["params"]) for r in nested}
        assert all({"paradigm", "task", "shots", "trial", "dataset_split", "task_fingerprint"} <= k for k in keys)
        for r in nested:
            tags = {t["key"] for t in r["data"]["tags"]}
            assert {"mmbench.paradigm", "mmbench.task", "mmbench.shots", "mmbench.primary_metric"} <= tags
        paradigms = {p["value"] for r in nested for p in r["data"]["params"] if p["key"] == "paradigm"}
        assert paradigms == {"text_conversion/pica", "text_conversion/promptcap"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # field 5 (pgrp), live processes only
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_stopping_ui_stops_the_server_and_all_its_workers(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-c", "from harness.cli import main; main()", "ui", "--results-dir", str(tmp_path),
           "--port", str(port)]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                _call(f"http://127.0.0.1:{port}", "/api/2.0/mlflow/experiments/search", {"max_results": 1})
                break
            except OSError:
                time.sleep(1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        server_group = int(children[0])
        assert len(_group_members(server_group)) >= 2  # the server and its web workers
        os.kill(proc.pid, signal.SIGTERM)  # only `mmbench ui` itself, as a service manager would
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 20
        while _group_members(server_group) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group_members(server_group) == [], "server processes outlived mmbench ui"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
