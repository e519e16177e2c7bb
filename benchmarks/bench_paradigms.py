"""Samples per second and peak memory of each paradigm variant on a suite, one process per variant.

Each variant runs as its own ``mmbench run --paradigm <name>`` from an empty results directory (the
model cache in the user cache dir is shared, so GGUF conversion is not timed), so peak memory is
that variant's alone. Read from each run's ``resources.json`` / ``timings.json``:

* ``samples_per_model_second`` — samples computed / seconds inside paradigm calls (includes the
  lazy loading of the backbones the variant uses, and adapter training for trained_adapter);
* ``wall_seconds`` — the whole command, start-up and metrics included;
* ``peak_rss_mb`` and, on a GPU, ``cuda_peak_allocated_mb``.

    python benchmarks/bench_paradigms.py                           # configs/default.yaml, CPU
    python benchmarks/bench_paradigms.py --config configs/gpu_realistic.yaml --limit 8
    python benchmarks/bench_paradigms.py --dry-run                 # 1 sample, 1 variant: checks the script

Writes ``benchmarks/results/paradigms_<device>.json`` with the hardware named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.config import default_config_path, load_config  # noqa: E402
from harness.tracking import hardware  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=default_config_path())
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", action="append", default=None, help="variant name(s) to run (repeatable)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    cfg = load_config(args.config)
    names = [p.name for p in cfg.paradigms]
    if args.only:
        names = [n for n in names if n in args.only]
    if args.dry_run:
        names, args.limit = names[2:3] or names[:1], 1  # a text_conversion variant in the default suite
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results = Path(tmp) / name.replace("/", "_")
            cmd = [sys.executable, "-m", "harness.cli", "run", "--config", str(args.config), "--paradigm", name,
                   "--results-dir", str(results), "--no-progress"]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ})
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            run_dir = results / "runs" / "latest"  # the run just made (each run has its own folder)
            usage = json.loads((run_dir / "resources.json").read_text())
            timings = json.loads((run_dir / "timings.json").read_text())
            row = {"paradigm": name, "wall_seconds": wall, **usage,
                   "metrics_seconds": timings.get("metrics"),
                   "harness_overhead_fraction": timings.get("overhead_fraction_of_model")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    device = "cuda" if any(r.get("cuda_peak_allocated_mb") for r in rows) else "cpu"
    result = {"benchmark": "paradigm_throughput_and_memory", "config": str(args.config), "limit": args.limit,
              "device": device, "hardware": hardware(), "rows": rows, "dry_run": args.dry_run}
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"paradigms_{device}.json").write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", args.out / f"paradigms_{device}.json")


if __name__ == "__main__":
    main()
