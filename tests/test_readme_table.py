"""scripts/readme_table.py: the README's default table comes from a run's results.csv, and --check
fails when the README's table does not match the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.config import repo_root

SCRIPT = repo_root() / "scripts" / "readme_table.py"


def _run_folder(tmp: Path, cider: float) -> Path:
    run = tmp / "runs" / "20260101-000000-abc-1"
    run.mkdir(parents=True)
    rows = [
        {"paradigm": "p1", "task": "world_caption", "shots": 0, "trial": 0, "metric": "CIDEr", "primary": True, "value": cider},
        {"paradigm": "p1", "task": "world_caption", "shots": 0, "trial": 0, "metric": "Bleu_4", "primary": False, "value": 0.5},
        {"paradigm": "p1", "task": "world_vqa", "shots": 2, "trial": 0, "metric": "overall", "primary": True, "value": 30.0},
        {"paradigm": "p1", "task": "world_vqa", "shots": 2, "trial": 1, "metric": "overall", "primary": True, "value": 40.0},
        {"paradigm": "p2", "task": "world_vqa", "shots": 2, "trial": 0, "metric": "overall", "primary": True, "value": 10.0},
    ]
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    (run / "reproducibility.json").write_text(json.dumps({"config_hash": "f" * 16, "git": {"commit": "a" * 40, "dirty": "false"}}))
    return run


def _script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_table_is_generated_from_the_run_and_checked(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- default-table:begin -->\n| stale |\n<!-- default-table:end -->\nafter\n")
    run = _run_folder(tmp_path, 0.123)
    assert _script("--run", run, "--readme", readme, "--check").returncode == 1  # stale table
    assert _script("--run", run, "--readme", readme, "--write").returncode == 0
    text = readme.read_text()
    assert "| p1 | 12.3 | 35.0 |" in text  # CIDEr ×100; VQA mean over the two trials
    assert "| p2 | – | 10.0 |" in text and text.endswith("after\n") and "| stale |" not in text
    assert _script("--run", run, "--readme", readme, "--check").returncode == 0
