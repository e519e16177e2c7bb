"""Samples per second of one suite run as 1 process, 2 processes on this machine, and 2 "nodes" × 1
process on localhost (two torchrun launches with a c10d rendezvous, each with its own results
folder), as ratios to the 1-process run, all in one invocation.

Each layout starts from an empty results folder (every sample computed) and is timed from launch to
exit, so the rates include start-up, model loading and rank 0's metrics and logging: what a user
waits for. ``seconds_model`` is rank 0's own model time (its share of the samples). Threads per
process are the machine's cores divided by the processes on it (``OMP_NUM_THREADS``), so every
layout uses the same cores. A warm-up run first fills the model cache (packaged-model conversion is
not timed).

    python benchmarks/bench_scale.py                      # text_conversion/pica, world_vqa, 48 samples
    python benchmarks/bench_scale.py --config my.yaml --limit 64 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _report import add_output_args, emit
from harness.tracking import hardware

SUITE = {
    "name": "bench-scale", "seed": 0, "bootstrap": 100, "clipscore": False, "batch_size": 4,
    "paradigms": [{"name": "text_conversion/pica", "options": {"converters": [{"kind": "objects"}, {"kind": "ocr"}]}}],
    "tasks": [{"name": "world_vqa"}],
    "generation": {"max_new_tokens": 8},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(cfg: Path, results: Path, limit: int) -> list[str]:
    return ["-m", "harness.cli", "run", "--config", str(cfg), "--results-dir", str(results), "--limit", str(limit),
            "--no-progress"]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _rank0(results: Path) -> dict:
    t = json.loads((results / "runs" / "latest" / "timings.json").read_text())
    return {"seconds_model_rank0": round(t.get("model", 0.0), 2)}


def _check(procs: list[subprocess.Popen], what: str) -> None:
    errs = [p.communicate()[1] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{what} failed:\n" + "\n---\n".join(e[-3000:] for e in errs))


def run_layout(layout: str, cfg: Path, tmp: Path, limit: int, cores: int) -> dict:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    results = tmp / layout
    start = time.perf_counter()
    if layout == "1 process":
        procs = [subprocess.Popen([sys.executable, *_cli(cfg, results, limit)], env=_env(cores),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    elif layout == "2 processes, 1 machine":
        procs = [subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", *_cli(cfg, results, limit)],
                                  env=_env(max(1, cores // 2)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)]
    else:  # 2 nodes × 1 process on localhost, each node its own results folder
        port = _free_port()
        procs = [subprocess.Popen([torchrun, "--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                                   "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                   *_cli(cfg, tmp / f"{layout}-node{r}" if r else results, limit)],
                                  env=_env(max(1, cores // 2)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for r in (0, 1)]
    _check(procs, layout)
    seconds = time.perf_counter() - start
    return {"layout": layout, "samples": limit, "seconds": round(seconds, 2),
            "samples_per_s": round(limit / seconds, 3), **_rank0(results)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=None, help="suite YAML (default: PICa on world_vqa, packaged LLM)")
    ap.add_argument("--limit", type=int, default=48, help="samples per task")
    add_output_args(ap)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = args.config or tmp / "suite.yaml"
        if args.config is None:
            cfg.write_text(yaml.safe_dump(SUITE))
        warm = subprocess.run([sys.executable, *_cli(cfg, tmp / "warm-up", 1)], env=_env(cores), capture_output=True,
                              text=True)
        if warm.returncode:
            raise SystemExit(f"warm-up failed:\n{warm.stderr[-3000:]}")
        rows = [run_layout(name, cfg, tmp, args.limit, cores)
                for name in ("1 process", "2 processes, 1 machine", "2 nodes x 1 process, localhost")]
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["ratio_to_1_process"] = round(r["samples_per_s"] / base, 3)
    emit({
        "benchmark": "scale",
        "config": str(args.config) if args.config else SUITE,
        "cores": cores,
        "threads_per_process": {"1 process": cores, "2 processes": max(1, cores // 2)},
        "layouts": rows,
        "hardware": hardware(),
        # other users of the machine: the 1-minute load average before and after (more than `cores` = contention)
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "note": "wall clock from launch to exit of every process (start-up, model load, metrics and logging "
                "included); every layout starts from an empty results folder",
    }, args, "scale_cpu.json")


if __name__ == "__main__":
    main()
