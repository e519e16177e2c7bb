"""Read mmbench runs back from an MLflow tracking store (sqlite file or a server).

Runs made on several machines can be logged to one store; when several parent runs evaluated the
same (paradigm, task, shots, trial), the one that started last wins, so a rerun replaces old numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Counters summed in the failure table (logged as metrics on every nested run).
FAILURE_COUNTERS = ("n_failed", "parse_errors", "tool_failures", "budget_exhausted")


@dataclass
class UnitRun:
    """One nested run: a (paradigm, task, shots, trial) evaluation."""

    run_id: str
    parent_id: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.paradigm, self.task, self.shots, self.trial)

    @property
    def paradigm(self) -> str:
        return self.tags.get("mmbench.paradigm") or self.params.get("paradigm", "?")

    @property
    def family(self) -> str:
        return self.tags.get("mmbench.family") or self.params.get("family", "?")

    @property
    def variant(self) -> str:
        return self.tags.get("mmbench.variant") or self.params.get("variant", "?")

    @property
    def task(self) -> str:
        return self.tags.get("mmbench.task") or self.params.get("task", "?")

    @property
    def task_kind(self) -> str:
        return self.params.get("task_kind", "?")

    @property
    def metric_family(self) -> str:
        return self.params.get("metric_family", "?")

    @property
    def shots(self) -> int:
        return int(self.tags.get("mmbench.shots") or self.params.get("shots", 0))

    @property
    def trial(self) -> int:
        return int(self.tags.get("mmbench.trial") or self.params.get("trial", 0))

    @property
    def primary(self) -> str:
        return self.tags.get("mmbench.primary_metric", "")

    def metric_names(self) -> list[str]:
        """Quality metrics (those logged with a CI), primary first."""
        names = [k for k in self.metrics if f"{k}_ci_low" in self.metrics]
        return sorted(names, key=lambda m: (m != self.primary, names.index(m)))

    def scores(self, metric: str) -> dict[str, float]:
        """Per-sample scores by sample id (empty when the run logged none for this metric)."""
        col = f"score_{metric}"
        return {r["sample_id"]: float(r[col]) for r in self.rows if col in r and r[col] is not None}


@dataclass
class ParentRun:
    """One ``mmbench run`` invocation with its reproducibility record."""

    run_id: str
    name: str
    start_time: int
    params: dict[str, str]
    repro: dict[str, Any]


@dataclass
class Store:
    """The latest unit runs of an experiment and the parents they came from."""

    uri: str
    experiment: str
    units: list[UnitRun]
    parents: dict[str, ParentRun]
    superseded: int = 0


def _download_json(client: Any, run_id: str, path: str, *, lines: bool) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # noqa: BLE001 - a missing artifact is reported as absent, not fatal
            return [] if lines else {}
        text = Path(local).read_text(encoding="utf-8")
    if lines:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text) if text.strip() else {}


def load_store(uri: str, experiment: str, *, with_rows: bool = True) -> Store:
    """All finished mmbench unit runs of ``experiment``, latest per (paradigm, task, shots, trial)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"no MLflow experiment {experiment!r} in {uri}; experiments there: {names}")
    runs = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    latest: dict[tuple[str, str, int, int], UnitRun] = {}
    total = 0
    for r in runs:
        tags = dict(r.data.tags)
        if "mlflow.parentRunId" not in tags or "mmbench.task" not in tags or "mmbench.paradigm" not in tags:
            continue
        total += 1
        u = UnitRun(r.info.run_id, tags["mlflow.parentRunId"], int(r.info.start_time or 0), tags,
                    dict(r.data.params), dict(r.data.metrics))
        old = latest.get(u.key)
        if old is None or (u.start_time, u.run_id) > (old.start_time, old.run_id):
            latest[u.key] = u
    units = sorted(latest.values(), key=lambda u: (u.task_kind, u.task, u.shots, u.trial, u.paradigm))
    parents: dict[str, ParentRun] = {}
    for u in units:
        if with_rows:
            u.rows = _download_json(client, u.run_id, "predictions.jsonl", lines=True)
        if u.parent_id not in parents:
            p = client.get_run(u.parent_id)
            parents[u.parent_id] = ParentRun(
                p.info.run_id, p.info.run_name or p.info.run_id, int(p.info.start_time or 0), dict(p.data.params),
                _download_json(client, p.info.run_id, "reproducibility.json", lines=False),
            )
    return Store(uri, experiment, units, parents, superseded=total - len(units))
