"""Helpers for tests that run ``mmbench run`` as a child process (to kill it, or to run it under
torchrun) and read back its results folder: the command, its environment, the cached answers and
the metrics table."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import yaml

#: The columns of results.csv that must match between an interrupted-and-resumed run and a clean one.
METRIC_COLS = ["paradigm", "task", "shots", "trial", "metric", "value", "ci_low", "ci_high", "n_failed", "n_samples"]


def cli_cmd(cfg: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", "--config", str(cfg), "--results-dir", str(results), "--no-progress"]


def cli_env(tmp: Path, fault: str | None = None) -> dict[str, str]:
    """The child's environment: its own model cache, one thread, and ``MMBENCH_FAULT`` only if given."""
    env = {k: v for k, v in os.environ.items() if k != "MMBENCH_FAULT"}
    env["MMBENCH_CACHE"] = str(tmp / "mmcache")
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["MMBENCH_FAULT"] = fault
    return env


def cached_answers(results: Path) -> int:
    """How many answers the results folder's cache holds (0 before the run has created it)."""
    db = results / "cache.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def metrics_table(results: Path) -> pd.DataFrame:
    """The last run's metrics (its own folder, through the ``latest`` link), in a fixed row order."""
    csv = results / "runs" / "latest" / "results.csv"
    return pd.read_csv(csv)[METRIC_COLS].sort_values(METRIC_COLS[:5]).reset_index(drop=True)


def world_vqa_config(tmp: Path, llm_dir: Path, paradigms: list[dict], *, name: str, limit: int, bootstrap: int,
                     max_new_tokens: int) -> Path:
    """A config file for the offline world VQA task at {0, 1} shots on the tiny local LLM, one sample per
    batch (one transaction per sample, so a kill lands between or inside writes)."""
    cfg = {
        "name": name,
        "seed": 0,
        "limit": limit,
        "batch_size": 1,
        "bootstrap": bootstrap,
        "paradigms": paradigms,
        "tasks": [{"name": "world_vqa"}],
        "in_context": {"shots": [0, 1]},
        "models": {"llm": {"source": "local", "name": str(llm_dir), "device": "cpu", "dtype": "float32"}},
        "generation": {"max_new_tokens": max_new_tokens},
    }
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def pica_world_config(tmp: Path, llm_dir: Path) -> Path:
    """PICa (objects + OCR) on 6 world VQA samples: the resume and torchrun tests' run."""
    pica = {"name": "text_conversion/pica", "options": {"converters": [{"kind": "objects"}, {"kind": "ocr"}]}}
    return world_vqa_config(tmp, llm_dir, [pica], name="resume-test", limit=6, bootstrap=200, max_new_tokens=4)
