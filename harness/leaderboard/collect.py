"""Read mmbench runs back from an MLflow tracking store (sqlite file or a server).

Runs made on several machines can be logged to one store. An evaluation is identified by what was
compared: the paradigm (with its options), its backbones (LLM, scorer, experts, encoder, text
embedder), the data (task and its data fingerprint), shots and trial. Runs that differ in any of
these are separate rows; when several parent runs evaluated exactly the same thing, the one that
started last wins, so a rerun replaces old numbers and nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
    def backbones(self) -> dict[str, str]:
        """Role → backbone name (``llm``, ``scorer``, ``experts``, ``encoder``, …); empty for old runs.

        An ``experts`` run parameter (the configured expert set) wins over the toolbox name."""
        out = {k[len("backbone."):]: v for k, v in self.params.items() if k.startswith("backbone.")}
        if self.params.get("experts"):
            out["experts"] = self.params["experts"]
        return out

    @property
    def options_digest(self) -> str:
        """Short digest of the paradigm's options: two option sets under one label stay two rows."""
        import hashlib

        return hashlib.sha256(self.params.get("paradigm_options", "").encode()).hexdigest()[:6]

    @property
    def setup(self) -> tuple[str, tuple[tuple[str, str], ...], str]:
        """What was compared on the model side: paradigm, backbone set, paradigm options."""
        return (self.paradigm, tuple(sorted(self.backbones.items())), self.options_digest)

    @property
    def data(self) -> str:
        """The data side: task name plus the data fingerprint the run logged (if any)."""
        fp = self.params.get("task_fingerprint", "")
        return f"{self.task}@{fp[:10]}" if fp else self.task

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.setup, self.data, self.shots, self.trial)

    @property
    def is_oracle(self) -> bool:
        """An oracle run (human references given to the LLM as if an expert had produced them).

        Read from whichever record the run has: a ``perception`` param, the configured experts, or the
        paradigm options naming the ``reference_captions`` expert; False when none is logged."""
        if self.params.get("perception") == "oracle" or self.tags.get("mmbench.oracle") == "true":
            return True
        text = " ".join(self.params.get(k, "") for k in ("experts", "paradigm_options", "backbone.experts"))
        return "reference_captions" in text

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
    """The latest unit runs of the chosen experiments/runs and the parents they came from."""

    uri: str
    experiment: str
    units: list[UnitRun]
    parents: dict[str, ParentRun]
    superseded: int = 0
    selection: str = ""


def _download_json(client: Any, run_id: str, path: str, *, lines: bool) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # noqa: BLE001 - a missing artifact is reported as absent, not fatal
            return [] if lines else {}
        text = Path(local).read_text(encoding="utf-8")
    if lines:
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    return json.loads(text) if text.strip() else {}


def _experiment_ids(client: Any, uri: str, experiments: Sequence[str]) -> list[str]:
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise ValueError(f"no MLflow experiment {name!r} in {uri}; experiments there: {names}")
        ids.append(exp.experiment_id)
    return ids


def _chosen_parents(client: Any, exp_ids: list[str], runs: Sequence[str]) -> set[str]:
    """Parent run ids named by ``--runs`` (a run id or a parent run name); unknown names are an error."""
    parents = [r for r in _search(client, exp_ids, "") if "mlflow.parentRunId" not in r.data.tags]
    by_name: dict[str, list[str]] = {}
    for p in parents:
        by_name.setdefault(p.info.run_name or "", []).append(p.info.run_id)
    chosen: set[str] = set()
    for want in runs:
        hit = [p.info.run_id for p in parents if p.info.run_id == want] or by_name.get(want, [])
        if not hit:
            known = sorted(f"{p.info.run_name} ({p.info.run_id})" for p in parents)[:20]
            raise ValueError(f"no parent run {want!r} (id or name) in the chosen experiment(s); some there: {known}")
        chosen.update(hit)
    return chosen


def _search(client: Any, exp_ids: list[str], filter_string: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def load_store(uri: str, experiment: str | Sequence[str], *, runs: Sequence[str] = (),
               with_rows: bool = True) -> Store:
    """Finished mmbench unit runs of the experiment(s), latest per (setup, data, shots, trial).

    ``runs`` restricts to those parent runs (ids or names); empty = every run of the experiment(s).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    experiments = [experiment] if isinstance(experiment, str) else list(experiment)
    client = MlflowClient(tracking_uri=uri)
    exp_ids = _experiment_ids(client, uri, experiments)
    chosen = _chosen_parents(client, exp_ids, runs) if runs else None
    found = _search(client, exp_ids, "attributes.status = 'FINISHED'")
    latest: dict[tuple[Any, ...], UnitRun] = {}
    total = 0
    for r in found:
        tags = dict(r.data.tags)
        if "mlflow.parentRunId" not in tags or "mmbench.task" not in tags or "mmbench.paradigm" not in tags:
            continue
        if chosen is not None and tags["mlflow.parentRunId"] not in chosen:
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
    selection = f"parent runs {sorted(runs)}" if runs else "all runs"
    return Store(uri, ", ".join(experiments), units, parents, superseded=total - len(units), selection=selection)
