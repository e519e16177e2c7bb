"""The harness's own overhead (result cache, cache keys, MLflow logging) as a fraction of model time.

Runs a suite from an empty results directory in this process and reads the runner's stopwatch;
writes ``benchmarks/results/harness_<device>.json`` with the hardware named.

    python benchmarks/bench_harness.py                         # configs/default.yaml
    python benchmarks/bench_harness.py --config my.yaml --limit 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.config import default_config_path, load_config
from harness.evaluate import run_evaluation
from _report import add_output_args, emit
from harness.tracking import hardware


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=default_config_path())
    ap.add_argument("--limit", type=int, default=None)
    add_output_args(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, {"results_dir": tmp, "limit": args.limit})
        out = run_evaluation(cfg, progress=False)
    t = out.timings or {}
    own = {k: t.get(k, 0.0) for k in ("cache", "prepare_keys", "logging")}
    result = {
        "benchmark": "harness_overhead",
        "config": str(args.config),
        "samples_computed": out.computed,
        "seconds": t,
        "harness_seconds": sum(own.values()),
        "model_seconds": t.get("model", 0.0),
        "overhead_fraction_of_model": sum(own.values()) / t["model"] if t.get("model") else None,
        "hardware": hardware(),
        "note": "metrics (incl. METEOR's JVM and bootstrap CIs), input loading and adapter training are reported "
                "separately and not counted as harness overhead",
    }
    emit(result, args, "harness_cpu.json")


if __name__ == "__main__":
    main()
