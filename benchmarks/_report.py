"""How a benchmark hands over its result: printed as JSON, and written under ``benchmarks/results/``
unless ``--no-write`` (so a quick check does not overwrite the recorded numbers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def add_output_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the result file")
    ap.add_argument("--no-write", action="store_true", help="print only")


def emit(result: dict, args: argparse.Namespace, filename: str) -> None:
    print(json.dumps(result, indent=1))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / filename).write_text(json.dumps(result, indent=1) + "\n")
