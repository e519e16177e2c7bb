"""Significance in the report and in `mmbench compare`: valid at the n shown, no mark at small n.

Stores are real MLflow stores written through harness.tracking (tests/report_fixtures.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from tests.report_fixtures import Unit, log_units, paired_scores


def test_exact_sign_flip_equals_the_sign_test_on_discordant_pairs():
    from harness.leaderboard.stats import sign_flip_p

    # 3 samples all favouring A: only 2**3 sign patterns, two of them as extreme -> p = 0.25
    assert sign_flip_p([100, 100, 100])[0] == pytest.approx(0.25)
    assert sign_flip_p([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])[0] == pytest.approx(2 / 1024)
    # with equal magnitudes the permutation test is the two-sided exact binomial sign test
    for a_only, b_only in ((5, 1), (9, 3), (12, 4)):
        d = [1.0] * a_only + [-1.0] * b_only + [0.0] * 7
        assert sign_flip_p(d)[0] == pytest.approx(binomtest(a_only, a_only + b_only).pvalue)


def test_monte_carlo_permutation_matches_the_sign_test_at_large_n():
    from harness.leaderboard.stats import EXACT_MAX, sign_flip_p

    d = [1.0] * 60 + [-1.0] * 40 + [0.0] * 100
    p, how = sign_flip_p(d)
    assert len(d) > EXACT_MAX and "random" in how
    assert p == pytest.approx(binomtest(60, 100).pvalue, abs=0.01)  # 0.057
    p_small, _ = sign_flip_p([1.0] * 60 + [0.0] * 140)
    assert 0 < p_small <= 2 / 20_001  # never exactly 0


def test_holm_adjustment():
    from harness.leaderboard.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.2, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.2) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """n = 3 (A right on all 3, B on none) and n = 200 (clear gap; and a small one) stores."""
    out = {}
    root = tmp_path_factory.mktemp("stats_stores")
    a3, b3 = paired_scores(3, 3, 0, 0)
    out["n3"] = root / "n3"
    a8, b8 = paired_scores(8, 8, 0, 0)
    log_units(out["n3"], [Unit("p/a", "world_binding", a3, kind="binding"),
                          Unit("p/b", "world_binding", b3, kind="binding"),
                          Unit("p/a", "eight", a8, kind="binding"), Unit("p/b", "eight", b8, kind="binding")])
    out["n200"] = root / "n200"
    a, b = paired_scores(200, 150, 100, 90)   # A-only 60, B-only 10
    c, d = paired_scores(200, 105, 95, 50)    # A-only 55, B-only 45 (p ~ 0.37)
    log_units(out["n200"], [Unit("p/a", "clear", a), Unit("p/b", "clear", b),
                            Unit("p/a", "close", c), Unit("p/b", "close", d)])
    return out


def _report(results: Path, out: Path) -> Path:
    from harness.leaderboard.cli import report_cmd

    res = CliRunner().invoke(report_cmd, ["--results-dir", str(results), "--out", str(out), "--no-thumbnails"])
    assert res.exit_code == 0, res.output
    return out


def _top(out: Path, task: str) -> dict[str, str]:
    rows = list(csv.DictReader((out / "leaderboard.csv").open(encoding="utf-8")))
    return next(r for r in rows if r["task"] == task and r["next_best"])


@pytest.mark.slow
def test_n3_gets_no_star(stores, tmp_path):
    from tasks.metrics import paired_bootstrap

    out = _report(stores["n3"], tmp_path / "r")
    top = _top(out, "world_binding")
    assert float(top["p_value"]) == pytest.approx(0.25) and top["n_pairs"] == "3" and top["mark"] in ("", "nan")
    md = (out / "report.md").read_text(encoding="utf-8")
    gap = next(line for line in md.splitlines() if "gap best − next-best" in line and "n=3" in line)
    assert "p=0.25" in gap and "*" not in gap and "No mark is ever given with fewer than 10" in md
    # n = 8, all favouring A: exact p = 2/256 survives Holm, but 8 < 10 samples: still no mark
    eight = _top(out, "eight")
    assert float(eight["p_value"]) == pytest.approx(2 / 256) and float(eight["p_holm"]) < 0.05
    assert eight["mark"] in ("", "nan")
    # the old test (paired bootstrap) called this "significant": why it is not used
    assert paired_bootstrap([100.0] * 3, [0.0] * 3, n_boot=2000).p_value < 0.05


@pytest.mark.slow
def test_n200_star_only_where_the_gap_is_real(stores, tmp_path):
    out = _report(stores["n200"], tmp_path / "r")
    clear, close = _top(out, "clear"), _top(out, "close")
    assert float(clear["p_value"]) < 1e-3 and float(clear["p_holm"]) < 0.05 and clear["mark"] == "*"
    assert float(close["p_value"]) == pytest.approx(binomtest(55, 100).pvalue, abs=0.02)
    assert close["mark"] in ("", "nan")
    assert float(clear["gap_to_next"]) == pytest.approx(25.0)  # 75 % vs 50 %
    assert float(clear["diff_ci_low"]) > 0


@pytest.mark.slow
def test_compare_uses_the_same_test_and_the_tables_scale(tmp_path):
    from mlflow import MlflowClient

    from harness.cli import main
    from harness.tracking import default_tracking_uri

    results = tmp_path / "res"
    log_units(results, [Unit("p/a", "cap", [0.3, 0.2, 0.1775], kind="caption", metric_family="caption", primary="CIDEr"),
                        Unit("p/b", "cap", [0.0, 0.0, 0.0], kind="caption", metric_family="caption", primary="CIDEr")])
    client = MlflowClient(tracking_uri=default_tracking_uri(results))
    exp = client.get_experiment_by_name("mmbench")
    ids = {r.data.tags["mmbench.paradigm"]: r.info.run_id
           for r in client.search_runs([exp.experiment_id], "tags.`mmbench.task` = 'cap'")}
    res = CliRunner().invoke(main, ["compare", ids["p/a"], ids["p/b"], "--results-dir", str(results)])
    assert res.exit_code == 0, res.output
    assert "CIDEr: p/a = 22.58, p/b = 0.00 (n=3; ×100, as in the report)" in res.output
    assert "difference A-B = +22.58" in res.output and "p = 0.25" in res.output
    assert "not judged: fewer than 10 paired samples" in res.output
    out = _report(results, tmp_path / "r")
    top = _top(out, "cap")
    assert float(top["value"]) == pytest.approx(22.58333, abs=1e-3) and float(top["p_value"]) == pytest.approx(0.25)


@pytest.mark.slow
def test_ties_are_decided_on_full_precision(tmp_path):
    """0.01 and 0.04 both print as "0.0" at one decimal: the best gets bold and enough digits to show it."""
    results = tmp_path / "res"
    log_units(results, [Unit("p/a", "t", [0.04, 0.04], kind="vqa"), Unit("p/b", "t", [0.01, 0.01], kind="vqa"),
                        Unit("p/c", "t", [0.04, 0.04], kind="vqa")])
    out = _report(results, tmp_path / "r")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| p/a | **0.04 [0.04, 0.04]** |" in md and "| p/c | **0.04 [0.04, 0.04]** |" in md
    assert "| p/b | 0.01 [0.01, 0.01] |" in md


@pytest.mark.slow
def test_money_column_only_when_a_price_based_cost_was_logged(tmp_path):
    results = tmp_path / "res"
    log_units(results, [Unit("p/served", "t", [100.0, 0.0], metrics={"money_mean": 0.0025}),
                        Unit("p/local", "t", [0.0, 0.0], row_extra={"money": 0.5})])
    rows = list(csv.DictReader((_report(results, tmp_path / "r") / "cost.csv").open(encoding="utf-8")))
    assert {r["setup"]: float(r["money_per_sample"]) for r in rows} == {"p/served": 0.0025, "p/local": 0.5}
    plain = tmp_path / "plain"
    log_units(plain, [Unit("p/a", "t", [100.0, 0.0])])
    assert "money_per_sample" not in (_report(plain, tmp_path / "r2") / "cost.csv").read_text(encoding="utf-8")


@pytest.mark.slow
def test_scaling_view_orders_llms_by_size_and_keeps_every_paradigm(tmp_path):
    results = tmp_path / "res"
    units = [Unit(p, "t", [100.0 * (i % 2), 0.0, 100.0], llm=f"/models/SmolLM2-{size}-Instruct")
             for p in ("a/x", "b/y") for i, size in enumerate(("1.7B", "135M", "360M"))]
    log_units(results, units)
    out = _report(results, tmp_path / "r")
    rows = list(csv.DictReader((out / "scaling.csv").open(encoding="utf-8")))
    assert [r["backbone"] for r in rows if r["paradigm"] == "a/x"] == [
        "SmolLM2-135M-Instruct", "SmolLM2-360M-Instruct", "SmolLM2-1.7B-Instruct"]
    assert {r["paradigm"] for r in rows} == {"a/x", "b/y"} and {r["axis"] for r in rows} == {"llm"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| paradigm | SmolLM2-135M-Instruct | SmolLM2-360M-Instruct | SmolLM2-1.7B-Instruct |" in md
    assert "| a/x · llm=SmolLM2-1.7B-Instruct |" in md  # leaderboard rows name the LLM
