"""`mmbench report` on a real MLflow store made by a real (tiny) evaluation run in-process."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

_STORE: dict[str, Any] = {}


def _config(tiny_llm_dir: Path, results: Path) -> dict[str, Any]:
    tc = {"converters": [{"kind": "objects"}]}
    return {"paradigms": [{"name": "text_conversion/pica", "options": tc},
                          # chat template: a different prompt, so the two paradigms' answers differ
                          {"name": "text_conversion/promptcap", "options": {**tc, "use_chat_template": True}}],
            "tasks": [{"name": "world_vqa"}, {"name": "world_caption"}], "limit": 4,
            "in_context": {"shots": [0, 1]},
            "models": {"llm": {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}},
            "results_dir": str(results), "bootstrap": 100}


@pytest.fixture(scope="session")
def report_store(tmp_path_factory, tiny_llm_dir) -> dict[str, Any]:
    """Two identical evaluations logged to one store (the second from cache), then `mmbench report`.

    Built once per session even when other test modules import this fixture.
    """
    if _STORE:
        return _STORE
    from harness.config import parse_config
    from harness.evaluate import run_evaluation
    from harness.leaderboard.cli import report_cmd
    from harness.tracking import default_tracking_uri

    root = tmp_path_factory.mktemp("report_store")
    results = root / "results"
    old = os.environ.get("MMBENCH_CACHE")
    os.environ["MMBENCH_CACHE"] = str(root / "cache")
    try:
        cfg = parse_config(_config(tiny_llm_dir, results))
        first = run_evaluation(cfg, progress=False)
        second = run_evaluation(cfg, progress=False)
    finally:
        if old is None:
            os.environ.pop("MMBENCH_CACHE", None)
        else:
            os.environ["MMBENCH_CACHE"] = old
    out = root / "report"
    res = CliRunner().invoke(report_cmd, ["--results-dir", str(results), "--out", str(out), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    _STORE.update(results=results, uri=default_tracking_uri(results), out=out, first=first.parent_run_id,
                  second=second.parent_run_id, cli_output=res.output)
    return _STORE


def test_report_writes_html_markdown_and_csv(report_store):
    out = report_store["out"]
    for name in ("report.html", "report.md", "leaderboard.csv", "fewshot.csv", "cost.csv", "failures.csv",
                 "published.csv", "fewshot_world_vqa.png", "cost_world_caption.png"):
        assert (out / name).stat().st_size > 0, name
    assert "report.html" in report_store["cli_output"]


def test_latest_parent_run_wins(report_store):
    from harness.leaderboard.collect import load_store

    store = load_store(report_store["uri"], "mmbench", with_rows=False)
    assert len(store.units) == 8  # 2 paradigms × 2 tasks × 2 shot counts × 1 trial
    assert store.superseded == 8
    assert {u.parent_id for u in store.units} == {report_store["second"]}


def test_leaderboard_csv_has_paradigms_cis_and_significance(report_store):
    rows = list(csv.DictReader((report_store["out"] / "leaderboard.csv").open(encoding="utf-8")))
    assert {r["paradigm"] for r in rows} == {"text_conversion/pica", "text_conversion/promptcap"}
    assert {"ci_low", "ci_high", "best", "p_value", "gap_to_next"} <= set(rows[0])
    prim = [r for r in rows if r["task"] == "world_vqa" and r["metric"] == "overall" and r["shots"] == "0"]
    assert len(prim) == 2 and any(r["best"] == "True" for r in prim)
    top = [r for r in prim if r["next_best"]]
    assert len(top) == 1 and 0.0 < float(top[0]["p_value"]) <= 1.0  # paired bootstrap on same sample ids
    assert {r["metric"] for r in rows if r["task"] == "world_caption"} >= {"CIDEr", "Bleu_4", "ROUGE_L"}


def test_markdown_tables_and_published_numbers_are_separate(report_store):
    md = (report_store["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Leaderboard: caption" in md and "## Leaderboard: vqa" in md
    assert "CIDEr [95% CI] (primary)" in md and "overall [95% CI] (primary)" in md
    assert "| text_conversion/pica |" in md and "| text_conversion/promptcap |" in md
    assert "Published numbers (caption) — NOT measured by mmbench" in md
    assert "| MAGIC | GPT-2 + CLIP ViT-B/32 | COCO Karpathy test | CIDEr | 0 | 49.3 | [V] |" in md
    assert "[U]" in md and "NOT checked" in md
    # published systems never appear as rows of a measured table
    measured = md.split("Published numbers (caption)")[0]
    assert "MAGIC" not in measured and "Flamingo" not in measured
    assert "Unavailable (not 0): SPICE" in md
    for section in ("## Few-shot curves", "## Quality versus cost", "## Failures", "## Reproducibility"):
        assert section in md
    assert "config hash" in md and "package: mlflow" in md and "git commit" in md
    assert "![few-shot curve world_vqa](fewshot_world_vqa.png)" in md


def test_html_is_self_contained(report_store):
    html = (report_store["out"] / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "<script src" not in html
    assert html.count("data:image/png;base64,") >= 5
    assert "data:image/jpeg;base64," in html  # explorer thumbnails reloaded from the world dataset
    assert 'class="published"' in html and "NOT measured by mmbench" in html


def test_explorer_reports_images_it_cannot_reload():
    from harness.leaderboard.collect import UnitRun
    from harness.leaderboard.explorer import explorer_data

    row = {"sample_id": "x/1", "prediction": "a cat", "score_overall": 0.0, "trace": {"transcript": "Thought: ..."}}
    unit = UnitRun("r1", "p1", 0, {"mmbench.paradigm": "tool_agent/mm_react", "mmbench.task": "t",
                                   "mmbench.shots": "0", "mmbench.trial": "0", "mmbench.primary_metric": "overall"},
                   {"dataset_loader": "no_such_loader", "dataset_split": "test", "dataset_options": "{}",
                    "metric_family": "vqa_accuracy", "task_kind": "vqa"}, {}, [row])
    data = explorer_data([unit])
    s = data["tasks"]["t"]["samples"][0]
    assert s["thumb"].startswith("error:") and "no_such_loader" in s["thumb"]
    ans = s["by"]["0-shot · trial 0"]["tool_agent/mm_react"]
    assert ans["transcript"] == "Thought: ..." and ans["right"] is False
    assert "VQA accuracy > 0" in data["tasks"]["t"]["right"]


def test_report_on_missing_experiment_fails_cleanly(report_store, tmp_path):
    from harness.leaderboard.cli import report_cmd

    res = CliRunner().invoke(report_cmd, ["--results-dir", str(report_store["results"]), "--experiment", "nope",
                                          "--out", str(tmp_path)])
    assert res.exit_code != 0 and "no MLflow experiment 'nope'" in res.output


def test_compare_two_paradigms_with_the_paired_test(report_store):
    """`mmbench compare` on two nested runs of the same task gives the paired bootstrap result."""
    from mlflow import MlflowClient

    from harness.cli import main
    from tasks.metrics import paired_bootstrap

    client = MlflowClient(tracking_uri=report_store["uri"])
    exp = client.get_experiment_by_name("mmbench")
    runs = client.search_runs([exp.experiment_id], "tags.`mmbench.task` = 'world_vqa' and tags.`mmbench.shots` = '1'")
    by_paradigm = {}
    for r in runs:  # latest run per paradigm
        by_paradigm.setdefault(r.data.tags["mmbench.paradigm"], r)
    a, b = by_paradigm["text_conversion/pica"], by_paradigm["text_conversion/promptcap"]
    assert a.data.params["vqa_mode"] == b.data.params["vqa_mode"] == "evalai"  # every VQA result says its mode
    res = CliRunner().invoke(main, ["compare", a.info.run_id, b.info.run_id, "--results-dir", str(report_store["results"]),
                                    "--bootstrap", "500"])
    assert res.exit_code == 0, res.output
    assert "overall: text_conversion/pica = " in res.output and "p = " in res.output
    # the same numbers as the library function on the logged per-sample scores
    from harness.compare import _rows

    sa = {x["sample_id"]: x["score_overall"] for x in _rows(client, a.info.run_id)}
    sb = {x["sample_id"]: x["score_overall"] for x in _rows(client, b.info.run_id)}
    expected = paired_bootstrap(sa, sb, n_boot=500)
    assert f"difference A-B = {expected.mean_diff:+.4f}" in res.output
    other_task = client.search_runs([exp.experiment_id], "tags.`mmbench.task` = 'world_caption'")[0]
    bad = CliRunner().invoke(main, ["compare", a.info.run_id, other_task.info.run_id, "--results-dir",
                                    str(report_store["results"])])
    assert bad.exit_code != 0 and "different tasks" in bad.output
