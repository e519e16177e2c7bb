"""`mmbench report` on a real MLflow store made by a real (tiny) evaluation run in-process."""

from __future__ import annotations

import csv
import re

import pytest
from click.testing import CliRunner

@pytest.mark.slow
def test_report_writes_html_markdown_and_csv(report_store):
    out = report_store["out"]
    for name in ("report.html", "report.md", "leaderboard.csv", "fewshot.csv", "cost.csv", "failures.csv",
                 "published.csv", "icl_gain.csv", "scaling.csv"):
        assert (out / name).stat().st_size > 0, name
    figures = sorted(p.name for p in out.glob("*.png"))
    assert any(f.startswith("fewshot_world_vqa-") for f in figures), figures
    assert any(f.startswith("scaling_world_caption_0-") for f in figures), figures
    assert "report.html" in report_store["cli_output"]


@pytest.mark.slow
def test_latest_parent_run_wins_only_for_the_same_setup(report_store):
    """The cached rerun with LLM A supersedes the first run; LLM B's run is a setup of its own."""
    from harness.leaderboard.collect import load_store

    store = load_store(report_store["uri"], "mmbench", with_rows=False)
    per_run = 2 * (2 * 2 + 1)  # 2 paradigms × (2 tasks × 2 shot counts + binding, whose episodes are its shots)
    assert len(store.units) == 2 * per_run
    assert store.superseded == per_run
    assert {u.parent_id for u in store.units} == {report_store["second"], report_store["other"]}
    llms = {u.backbones["llm"].rsplit("/", 1)[-1] for u in store.units}
    assert llms == {report_store["llm_a"], report_store["llm_b"]}
    assert all(u.params["task_fingerprint"] and u.backbones["experts"] == "objects=packaged" for u in store.units)


@pytest.mark.slow
def test_runs_option_selects_parent_runs(report_store, tmp_path):
    from harness.leaderboard.cli import report_cmd

    out = tmp_path / "only_b"
    res = CliRunner().invoke(report_cmd, ["--results-dir", str(report_store["results"]), "--out", str(out),
                                          "--runs", report_store["other"], "--no-thumbnails"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open(encoding="utf-8")))
    assert {r["llm"].rsplit("/", 1)[-1] for r in rows} == {report_store["llm_b"]}
    assert not (out / "scaling.csv").exists()  # one LLM: no scaling view
    bad = CliRunner().invoke(report_cmd, ["--results-dir", str(report_store["results"]), "--out", str(tmp_path / "x"),
                                          "--runs", "no-such-run"])
    assert bad.exit_code != 0 and "no parent run 'no-such-run'" in bad.output


@pytest.mark.slow
def test_two_llms_side_by_side_and_in_the_scaling_view(report_store):
    a, b = report_store["llm_a"], report_store["llm_b"]
    rows = list(csv.DictReader((report_store["out"] / "leaderboard.csv").open(encoding="utf-8")))
    prim = [r for r in rows if r["task"] == "world_vqa" and r["metric"] == "overall" and r["shots"] == "0"]
    assert sorted(r["setup"] for r in prim) == sorted(f"{p} · llm={x}" for p in ("text_conversion/pica",
                                                                            "text_conversion/promptcap") for x in (a, b))
    sc = list(csv.DictReader((report_store["out"] / "scaling.csv").open(encoding="utf-8")))
    assert {r["axis"] for r in sc} == {"llm"}
    cap0 = [r for r in sc if r["task"] == "world_caption" and r["shots"] == "0"]
    assert {(r["paradigm"], r["backbone"]) for r in cap0} == {(p, x) for p in ("text_conversion/pica",
                                                                           "text_conversion/promptcap") for x in (a, b)}
    md = (report_store["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Scaling: paradigms across llm" in md
    assert f"| paradigm | {a} | {b} |" in md or f"| paradigm | {b} | {a} |" in md


@pytest.mark.slow
def test_leaderboard_csv_has_setups_cis_and_honest_significance(report_store):
    rows = list(csv.DictReader((report_store["out"] / "leaderboard.csv").open(encoding="utf-8")))
    assert {"ci_low", "ci_high", "best", "p_value", "p_holm", "mark", "n_pairs", "gap_to_next", "llm", "experts"} <= set(rows[0])
    prim = [r for r in rows if r["task"] == "world_vqa" and r["metric"] == "overall" and r["shots"] == "0"]
    assert any(r["best"] == "True" for r in prim)
    top = [r for r in prim if r["next_best"]]
    assert len(top) == 1 and 0.0 < float(top[0]["p_value"]) <= 1.0 and top[0]["n_pairs"] == "4"
    assert all(r["mark"] in ("", "nan") for r in rows)  # 4 samples: never a significance mark
    assert {r["metric"] for r in rows if r["task"] == "world_caption"} >= {"CIDEr", "Bleu_4", "ROUGE_L"}
    # VQA per-answer-type scores are shown (no test: only overall per-sample scores are logged)
    types = [r for r in rows if r["task"] == "world_vqa" and r["metric"].startswith("perAnswerType/")]
    assert types and all(r["test_note"] in ("", "no per-sample scores for this breakdown") for r in types)
    md = (report_store["out"] / "report.md").read_text(encoding="utf-8")
    assert "perAnswerType/other [95% CI]" in md


@pytest.mark.slow
def test_icl_summary_pairs_k_shot_with_zero_shot(report_store):
    rows = list(csv.DictReader((report_store["out"] / "icl_gain.csv").open(encoding="utf-8")))
    vqa = [r for r in rows if r["task"] == "world_vqa"]
    assert len(vqa) == 4 and {r["shots"] for r in vqa} == {"1"}
    for r in vqa:  # the gain is the difference of the two cells, with a paired CI around it
        assert float(r["gain"]) == pytest.approx(float(r["k_shot"]) - float(r["zero_shot"]), abs=1e-9)
        assert float(r["gain_ci_low"]) <= float(r["gain"]) <= float(r["gain_ci_high"])
    assert not [r for r in rows if r["task"] == "world_binding"]  # no 0-shot binding: no gain row
    md = (report_store["out"] / "report.md").read_text(encoding="utf-8")
    assert "In-context learning: k-shot gain over 0-shot" in md and "too few samples to tell" in md


@pytest.mark.slow
def test_markdown_tables_and_published_numbers_are_separate(report_store):
    md = (report_store["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Leaderboard: caption" in md and "## Leaderboard: vqa" in md and "## Leaderboard: binding" in md
    assert "CIDEr [95% CI] (primary)" in md and "overall [95% CI] (primary)" in md
    assert f"| text_conversion/pica · llm={report_store['llm_a']} |" in md
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
    assert re.search(r"!\[few-shot curve world_vqa\]\(fewshot_world_vqa-[0-9a-f]{6}\.png\)", md)
    # binding has one shot count: listed, no curve
    assert "single shot count (no curve): world_binding" in md and "few-shot curve world_binding" not in md
    assert "No money column" in md


@pytest.mark.slow
def test_html_is_self_contained(report_store):
    html = (report_store["out"] / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "<script src" not in html
    assert html.count("data:image/png;base64,") >= 5
    assert "data:image/jpeg;base64," in html  # explorer thumbnails reloaded from the world dataset
    assert 'class="published"' in html and "NOT measured by mmbench" in html


@pytest.mark.slow
def test_parent_run_has_summary_metrics_and_nested_runs_real_durations(report_store):
    from mlflow import MlflowClient

    from harness.tracking import EXPERIMENT_KIND_TAG

    client = MlflowClient(tracking_uri=report_store["uri"])
    exp = client.get_experiment_by_name("mmbench")
    assert exp.tags.get(EXPERIMENT_KIND_TAG[0]) == EXPERIMENT_KIND_TAG[1]
    parent = client.get_run(report_store["first"])
    key = "world_caption/0-shot/text_conversion/pica/CIDEr"
    assert key in parent.data.metrics and f"{key}_ci_low" in parent.data.metrics
    child = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{report_store['first']}' and "
                                                    "tags.`mmbench.task` = 'world_caption' and tags.`mmbench.shots` = '0'")[0]
    assert child.data.metrics["CIDEr"] * 100 == pytest.approx(parent.data.metrics[
        f"world_caption/0-shot/{child.data.tags['mmbench.paradigm']}/CIDEr"])
    # the nested run opens when its work began: before its parent's logging of it, spanning real compute
    seconds = (child.info.end_time - child.info.start_time) / 1000
    compute = child.data.metrics["latency_s_mean"] * child.data.metrics["n_samples"]
    assert child.data.metrics["n_computed"] == 4 and seconds >= 0.9 * compute > 0


def test_explorer_reports_images_it_cannot_reload_and_shows_partial_credit():
    from harness.leaderboard.collect import UnitRun
    from harness.leaderboard.explorer import explorer_data

    rows = [{"sample_id": "x/1", "prediction": "a cat", "score_overall": 0.0, "trace": {"transcript": "Thought: ..."}},
            {"sample_id": "x/2", "prediction": "two", "score_overall": 30.0, "trace": {}},
            {"sample_id": "x/3", "prediction": "yes", "score_overall": 100.0, "trace": {}}]
    unit = UnitRun("r1", "p1", 0, {"mmbench.paradigm": "tool_agent/mm_react", "mmbench.task": "t",
                                   "mmbench.shots": "0", "mmbench.trial": "0", "mmbench.primary_metric": "overall"},
                   {"dataset_loader": "no_such_loader", "dataset_split": "test", "dataset_options": "{}",
                    "metric_family": "vqa_accuracy", "task_kind": "vqa"}, {}, rows)
    data = explorer_data([unit])
    s = data["tasks"]["t"]["samples"][0]
    assert s["thumb"].startswith("error:") and "no_such_loader" in s["thumb"]
    ans = [x["by"]["0-shot · trial 0"]["tool_agent/mm_react"] for x in data["tasks"]["t"]["samples"]]
    assert ans[0]["sections"] == [{"label": "tool calls and observations", "text": "Thought: ..."}]
    assert [a["verdict"] for a in ans] == ["wrong", "partial", "right"]
    assert ans[1]["score_text"] == "partial credit: VQA accuracy 30.0 of 100"
    assert "partial credit" in data["tasks"]["t"]["right"] and data["tasks"]["t"]["answers_label"] == "Human answers"


def test_explorer_reads_each_paradigms_trace():
    from harness.leaderboard.explorer import trace_sections

    conv = trace_sections({"context": "objects: a red cube", "prompts": ["P1"], "generations": ["cube"], "chosen": 0,
                           "shots": [{"sample_id": "s1", "context": "objects: a ball", "answer": "ball"}]})
    assert [c["label"] for c in conv] == ["converted text (what the LLM read instead of the image)",
                                          "demonstrations as converted text", "LLM prompt", "generations (ensemble members)"]
    assert conv[1]["text"] == "[s1] objects: a ball → ball"
    zc = trace_sections({"lm_prompt": "Image of a", "beams": ["dog", "cat"], "beam_lm_scores": [-1.0, -2.0],
                         "beam_scorer_sims": [0.3, 0.1], "chosen_beam": 0, "scorer": "clip"})
    assert zc[1]["text"].splitlines()[0] == "→ dog: LM -1.0, sim 0.3" and zc[-1]["label"] == "other trace fields"
    mc = trace_sections({"candidates": ["red", "blue"], "logprobs": [-0.1, -3.0]})
    assert mc[0]["text"] == "red: -0.1\nblue: -3.0"


def test_oracle_runs_are_detected_and_their_gap_shown():
    from harness.leaderboard.collect import UnitRun
    from harness.leaderboard.explorer import explorer_data

    def unit(run: str, params: dict, score: float) -> UnitRun:
        return UnitRun(run, "p1", 0, {"mmbench.paradigm": "text_conversion/pica", "mmbench.task": "c",
                                      "mmbench.shots": "0", "mmbench.trial": "0", "mmbench.primary_metric": "CIDEr"},
                       {"metric_family": "caption", "task_kind": "caption", **params}, {},
                       [{"sample_id": "c/1", "prediction": "x", "score_CIDEr": score, "trace": {}}])

    real = unit("r1", {"paradigm_options": '{"converters": [{"kind": "objects"}]}'}, 0.2)
    oracle = unit("r2", {"paradigm_options": '{"converters": [{"kind": "reference_captions"}]}'}, 0.9)
    newer = unit("r3", {"perception": "oracle"}, 0.9)
    assert not real.is_oracle and oracle.is_oracle and newer.is_oracle
    gaps = explorer_data([real, oracle], thumbnails=False)["tasks"]["c"]["oracle_gaps"]
    assert len(gaps) == 1 and gaps[0]["gap"] == pytest.approx(70.0)


@pytest.mark.slow
def test_report_on_missing_experiment_fails_cleanly(report_store, tmp_path):
    from harness.leaderboard.cli import report_cmd

    res = CliRunner().invoke(report_cmd, ["--results-dir", str(report_store["results"]), "--experiment", "nope",
                                          "--out", str(tmp_path)])
    assert res.exit_code != 0 and "no MLflow experiment 'nope'" in res.output


@pytest.mark.slow
def test_compare_two_paradigms_with_the_paired_test(report_store):
    """`mmbench compare` on two nested runs of the same task: the report's test on the report's scale."""
    from mlflow import MlflowClient

    from harness.cli import main
    from harness.compare import _rows
    from harness.leaderboard.stats import paired_test

    client = MlflowClient(tracking_uri=report_store["uri"])
    exp = client.get_experiment_by_name("mmbench")
    runs = client.search_runs([exp.experiment_id], f"tags.`mmbench.task` = 'world_caption' and tags.`mmbench.shots` = '1' "
                                                   f"and tags.mlflow.parentRunId = '{report_store['second']}'")
    by_paradigm = {r.data.tags["mmbench.paradigm"]: r for r in runs}
    a, b = by_paradigm["text_conversion/pica"], by_paradigm["text_conversion/promptcap"]
    vqa = client.search_runs([exp.experiment_id], f"tags.`mmbench.task` = 'world_vqa' "
                                                  f"and tags.mlflow.parentRunId = '{report_store['second']}'")
    assert vqa and all(r.data.params["vqa_mode"] == "evalai" for r in vqa)  # every VQA result says its mode
    assert "vqa_mode" not in a.data.params  # a caption result has no VQA mode
    res = CliRunner().invoke(main, ["compare", a.info.run_id, b.info.run_id, "--results-dir", str(report_store["results"]),
                                    "--bootstrap", "500"])
    assert res.exit_code == 0, res.output
    sa = {x["sample_id"]: x["score_CIDEr"] for x in _rows(client, a.info.run_id)}
    sb = {x["sample_id"]: x["score_CIDEr"] for x in _rows(client, b.info.run_id)}
    expected = paired_test(sa, sb, n_boot=500)
    assert f"CIDEr: text_conversion/pica = {a.data.metrics['CIDEr'] * 100:.2f}" in res.output
    assert f"difference A-B = {expected.mean_diff * 100:+.2f}" in res.output and f"p = {expected.p_value:.4g}" in res.output
    assert "not judged: fewer than 10 paired samples" in res.output
    other_task = client.search_runs([exp.experiment_id], "tags.`mmbench.task` = 'world_vqa'")[0]
    bad = CliRunner().invoke(main, ["compare", a.info.run_id, other_task.info.run_id, "--results-dir",
                                    str(report_store["results"])])
    assert bad.exit_code != 0 and "different tasks" in bad.output
