"""Paired comparison of two logged runs on the same samples (per-sample scores from MLflow).

On the same footing as the report: the same paired sign-flip permutation test (exact at small n),
the same minimum n for calling a difference significant, and the tables' scale (caption metrics ×100).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from dataclasses import dataclass

from harness.leaderboard.stats import ALPHA, MIN_N_STAR, PairedTest, paired_test
from harness.report import display_scale


@dataclass(frozen=True)
class Comparison:
    """A − B on the report's scale."""

    value_a: float
    value_b: float
    test: PairedTest
    scale: float
    n_boot: int

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def mean_diff(self) -> float:
        return self.test.mean_diff * self.scale

    @property
    def ci(self) -> tuple[float, float]:
        return (self.test.ci[0] * self.scale, self.test.ci[1] * self.scale)

    @property
    def p_value(self) -> float:
        return self.test.p_value

    def verdict(self) -> str:
        if self.n < MIN_N_STAR:
            return f"not judged: fewer than {MIN_N_STAR} paired samples (the report prints no mark either)"
        return f"significant at {ALPHA:.0%}" if self.p_value < ALPHA else f"not significant at {ALPHA:.0%}"


def format_comparison(res: Comparison, name: str, labels: tuple[str, str]) -> str:
    """What ``mmbench compare`` prints (two decimals, like the report's tables at ×100)."""
    return (f"{name}: {labels[0]} = {res.value_a:.2f}, {labels[1]} = {res.value_b:.2f} (n={res.n}; "
            f"{'×100, as in the report' if res.scale != 1 else 'as in the report'})\n"
            f"difference A-B = {res.mean_diff:+.2f}, 95% CI [{res.ci[0]:+.2f}, {res.ci[1]:+.2f}] (paired bootstrap, "
            f"{res.n_boot} resamples), p = {res.p_value:.4g} ({res.test.method}); {res.verdict()}")


def _rows(client: Any, run_id: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "predictions.jsonl", tmp)
        except Exception as exc:  # noqa: BLE001 - any store error means the run can't be compared
            raise ValueError(f"run {run_id}: no predictions.jsonl artifact ({exc})") from None
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def compare_runs(uri: str, run_a: str, run_b: str, metric: str | None, n_boot: int) -> tuple[Comparison, str, tuple[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = []
    for r in (run_a, run_b):
        try:
            runs.append(client.get_run(r))
        except Exception as exc:  # noqa: BLE001 - MlflowException (unknown id) or an unreachable store
            raise ValueError(f"no run with id {r!r} in the MLflow store ({type(exc).__name__}: {exc}); "
                             f"the ids are the nested runs' ids shown by `mmbench ui` or in the report") from None
    tasks = {r.data.tags.get("mmbench.task") for r in runs}
    if len(tasks) != 1:
        raise ValueError(f"the runs are on different tasks: {sorted(map(str, tasks))}")
    name = metric or runs[0].data.tags.get("mmbench.primary_metric", "")
    col = f"score_{name}"
    scores = []
    for r in runs:
        rows = _rows(client, r.info.run_id)
        if not rows or col not in rows[0]:
            avail = sorted(k[6:] for k in (rows[0] if rows else {}) if k.startswith("score_"))
            raise ValueError(f"run {r.info.run_id} has no per-sample scores for {name!r}; available: {avail}")
        scores.append({row["sample_id"]: float(row[col]) for row in rows})
    labels = tuple(r.data.tags.get("mmbench.paradigm", r.info.run_id) for r in runs)
    if set(scores[0]) != set(scores[1]):
        raise ValueError(f"the runs scored different samples ({len(set(scores[0]) ^ set(scores[1]))} ids not in both); "
                         "a paired test needs the same samples")
    s = display_scale(name)
    test = paired_test(scores[0], scores[1], n_boot=n_boot)
    mean = [sum(x.values()) / len(x) * s for x in scores]
    return Comparison(mean[0], mean[1], test, s, n_boot), name, labels  # type: ignore[return-value]
