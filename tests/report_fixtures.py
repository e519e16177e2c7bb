"""MLflow stores for the report tests, written through the project's own tracking code.

``real_stores`` runs real (tiny) evaluations with two different LLMs; ``logged_store`` logs
prepared per-sample rows through :class:`harness.tracking.Tracker` with the same tags and params a
real run logs, for what a tiny model cannot produce on demand: n = 3 and n = 200 comparisons with
known differences, hostile strings from a crafted store, an oracle run, a price-based cost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.tracking import Tracker, default_tracking_uri


@dataclass
class Unit:
    """One nested run to log: per-sample primary scores (raw scale) plus what a real run logs."""

    paradigm: str
    task: str
    scores: Sequence[float]
    kind: str = "vqa"
    metric_family: str = "exact_match"
    primary: str = "accuracy"
    shots: int = 0
    trial: int = 0
    llm: str = "llm-a"
    predictions: Sequence[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    row_extra: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def log_units(results: Path, units: Sequence[Unit], *, parent_name: str = "fixture") -> str:
    """Log ``units`` under one parent run of experiment ``mmbench`` in ``results``; returns the parent id."""
    import numpy as np

    tracker = Tracker(default_tracking_uri(results), "mmbench", results / "mlartifacts")
    parent = tracker.start_parent(parent_name, {"config_hash": "fixture", "seed": 0}, {"mmbench.kind": "run"})
    for u in units:
        family, _, variant = u.paradigm.partition("/")
        tags = {"mmbench.paradigm": u.paradigm, "mmbench.family": family, "mmbench.variant": variant,
                "mmbench.task": u.task, "mmbench.shots": str(u.shots), "mmbench.trial": str(u.trial),
                "mmbench.primary_metric": u.primary, "mmbench.unavailable_metrics": "{}"}
        child = tracker.start_child(parent, f"{u.paradigm}|{u.task}|{u.shots}|{u.trial}", tags)
        tracker.log_params(child, {"paradigm": u.paradigm, "family": family, "variant": variant, "task": u.task,
                                   "task_kind": u.kind, "metric_family": u.metric_family, "shots": u.shots,
                                   "trial": u.trial, "dataset_loader": "world", "dataset_split": "test",
                                   "dataset_options": {}, "paradigm_options": {}, "task_fingerprint": f"fp-{u.task}",
                                   "backbone.llm": u.llm, **u.params})
        s = np.asarray(u.scores, dtype=float)
        preds = list(u.predictions) if u.predictions is not None else [f"answer {i}" for i in range(len(s))]
        rows = [{"sample_id": f"{u.task}/{i}", "question": f"question {i}?", "prompt": f"Q: question {i}? A:",
                 "prediction": preds[i], "answers": ["yes"], "references": [], "choices": [], "error": None,
                 "shots": [], "trace": {}, f"score_{u.primary}": float(s[i]), **u.row_extra} for i in range(len(s))]
        lo, hi = np.percentile(s, [2.5, 97.5]) if len(s) else (0.0, 0.0)
        tracker.log_metrics(child, {u.primary: float(s.mean()), f"{u.primary}_ci_low": float(lo),
                                    f"{u.primary}_ci_high": float(hi), "n_samples": float(len(s)),
                                    "n_failed": 0.0, **u.metrics})
        tracker.log_table(child, rows, "predictions.jsonl")
        tracker.end(child)
    tracker.end(parent)
    return parent


def paired_scores(n: int, a_right: int, b_right: int, both: int) -> tuple[list[float], list[float]]:
    """0/100 scores for two systems on ``n`` samples: ``both`` right for both, then A-only, then B-only."""
    a = [100.0] * both + [100.0] * (a_right - both) + [0.0] * (n - a_right)
    b = [100.0] * both + [0.0] * (a_right - both) + [100.0] * (b_right - both) + [0.0] * (n - a_right - b_right + both)
    assert len(a) == len(b) == n
    return a, b


def real_config(llm_dir: Path, results: Path) -> dict[str, Any]:
    tc = {"converters": [{"kind": "objects"}]}
    return {"paradigms": [{"name": "text_conversion/pica", "options": tc},
                          # chat template: a different prompt, so the two paradigms' answers differ
                          {"name": "text_conversion/promptcap", "options": {**tc, "use_chat_template": True}}],
            "tasks": [{"name": "world_vqa"}, {"name": "world_caption"}, {"name": "world_binding", "limit": 3}],
            "limit": 4, "in_context": {"shots": [0, 1]},
            "models": {"llm": {"source": "local", "name": str(llm_dir), "device": "cpu", "dtype": "float32"}},
            "results_dir": str(results), "bootstrap": 100}


def run_real(configs: Sequence[dict[str, Any]], cache: Path) -> list[Any]:
    """Run each config in-process with its own answer cache folder; returns the outcomes."""
    from harness.config import parse_config
    from harness.evaluate import run_evaluation

    old = os.environ.get("MMBENCH_CACHE")
    os.environ["MMBENCH_CACHE"] = str(cache)
    try:
        return [run_evaluation(parse_config(c), progress=False) for c in configs]
    finally:
        if old is None:
            os.environ.pop("MMBENCH_CACHE", None)
        else:
            os.environ["MMBENCH_CACHE"] = old
