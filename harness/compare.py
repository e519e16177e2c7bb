"""Paired comparison of two logged runs on the same samples (per-sample scores from MLflow)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks.metrics import PairedResult, paired_bootstrap


def _rows(client: Any, run_id: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "predictions.jsonl", tmp)
        except Exception as exc:  # noqa: BLE001 - any store error means the run can't be compared
            raise ValueError(f"run {run_id}: no predictions.jsonl artifact ({exc})") from None
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def compare_runs(uri: str, run_a: str, run_b: str, metric: str | None, n_boot: int) -> tuple[PairedResult, str, tuple[str, str]]:
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
    return paired_bootstrap(scores[0], scores[1], n_boot=n_boot), name, labels  # type: ignore[return-value]
