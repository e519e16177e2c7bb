"""Results that stay put and travel: each run writes its own folder (``runs/latest`` points at the
newest); a copied, then moved, results folder reports every unit's predictions from its own
artifacts and writes new runs into itself, not the original; no credential from a tracking URI
reaches any file of a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.config import ParadigmSpec, parse_config
from harness.evaluate import run_evaluation
from harness.plan import Plan, PlannedParadigm, plan_run
from harness.tracking import default_tracking_uri
from tests.fakes import Recorder, RecorderOptions
from tests.support import write_vqa_folder, write_vqa_image

SECRET = "s3cr3t-token"

pytestmark = pytest.mark.usefixtures("pinned_fingerprints")  # default models: identities need only be stable


def _run(root: Path, results: Path, *, limit: int | None = None, tracking_uri: str | None = None):
    cfg = parse_config({
        "name": "portable", "seed": 0, "batch_size": 2, "bootstrap": 10, "results_dir": str(results),
        "limit": limit, "tracking": {"uri": f"https://alice:{SECRET}@mlflow.example.com"},
        "paradigms": [{"name": "text_conversion/pica"}],
        "tasks": [{"name": "vqav2_local", "dataset_options": {
            "root": str(root), "questions": "questions.json", "annotations": "annotations.json", "images_dir": "images"}}],
    })
    base = plan_run(cfg)
    plan = Plan(cfg, [PlannedParadigm(ParadigmSpec(name="text_conversion/recorder"), Recorder, RecorderOptions())], base.tasks)
    # the CLI's --tracking-uri wins over the config's (credential-bearing) one, which is still logged
    return run_evaluation(cfg, progress=False, plan=plan, tracking_uri=tracking_uri or default_tracking_uri(results))


def _dataset(tmp: Path) -> Path:
    root = tmp / "vqa"
    write_vqa_folder(root)
    for i in (1, 2, 3, 4):
        write_vqa_image(root, i, 50 * i)
    return root


@pytest.mark.slow
def test_each_run_has_its_own_folder_and_latest_points_at_the_newest(tmp_path):
    root, results = _dataset(tmp_path), tmp_path / "r"
    full = _run(root, results)
    small = _run(root, results, limit=2)
    assert full.summary_dir != small.summary_dir
    assert pd.read_csv(full.summary_dir / "results.csv")["n_samples"].tolist() == [4]  # not overwritten
    assert pd.read_csv(small.summary_dir / "results.csv")["n_samples"].tolist() == [2]
    assert (results / "runs" / "latest").resolve() == small.summary_dir.resolve()


@pytest.mark.slow
def test_a_copied_then_moved_results_folder_reports_every_prediction_and_writes_into_itself(tmp_path):
    from harness.leaderboard.collect import load_store

    root, results = _dataset(tmp_path), tmp_path / "r"
    _run(root, results)
    before = load_store(default_tracking_uri(results), "mmbench", with_rows=True)
    assert before.units and all(len(u.rows) == 4 for u in before.units)
    original_files = sorted(p for p in (results / "mlartifacts").rglob("*") if p.is_file())

    shutil.copytree(results, tmp_path / "copy", symlinks=True)
    moved = tmp_path / "archive" / "moved"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "copy"), moved)
    shutil.rmtree(results / "mlartifacts")  # the original's artifacts are gone: only the copy's can be read
    after = load_store(default_tracking_uri(moved), "mmbench", with_rows=True)
    assert [(u.key, u.rows) for u in after.units] == [(u.key, u.rows) for u in before.units]

    _run(root, moved)  # a new run in the moved folder writes its artifacts there
    assert not (results / "mlartifacts").exists()
    assert len([p for p in (moved / "mlartifacts").rglob("predictions.jsonl")]) == 2 * len(
        [p for p in original_files if p.name == "predictions.jsonl"])


@pytest.mark.slow
def test_no_credential_of_a_tracking_uri_reaches_any_output_file(tmp_path):
    root, results = _dataset(tmp_path), tmp_path / "r"
    _run(root, results)
    files = [p for p in results.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)  # the logged config is among those checked
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    config_yaml = next(p for p in files if p.name == "config.yaml").read_text()
    assert "https://***@mlflow.example.com" in config_yaml
