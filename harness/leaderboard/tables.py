"""Report tables as pandas frames: leaderboard with CIs and significance, few-shot, cost, failures.

Values are in the units papers print: caption metrics ×100 (pycocoevalcap logs 0–1), accuracies
already in percent. With several trials (demonstration draws) a cell is the mean over trials and its
CI is the mean of the trials' bootstrap bounds.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from harness.leaderboard.collect import FAILURE_COUNTERS, UnitRun
from tasks.metrics import paired_bootstrap

#: Metrics logged on a 0–1 scale (pycocoevalcap); shown ×100 like in papers.
CAPTION_0_1 = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}
#: The order of the task-family sections.
FAMILIES = ("caption", "vqa", "binding", "multiple_choice")


def scale(metric: str) -> float:
    return 100.0 if metric in CAPTION_0_1 else 1.0


def _groups(units: Iterable[UnitRun]) -> dict[tuple[str, str, int], dict[str, list[UnitRun]]]:
    """(task kind, task, shots) → paradigm → that paradigm's trials."""
    out: dict[tuple[str, str, int], dict[str, list[UnitRun]]] = defaultdict(lambda: defaultdict(list))
    for u in units:
        out[(u.task_kind, u.task, u.shots)][u.paradigm].append(u)
    return out


def mean_scores(trials: Sequence[UnitRun], metric: str) -> dict[str, float]:
    """Per-sample score averaged over trials (only ids every trial scored)."""
    maps = [t.scores(metric) for t in trials]
    if not maps or not all(maps):
        return {}
    ids = set(maps[0]).intersection(*maps[1:])
    return {i: float(np.mean([m[i] for m in maps])) for i in maps[0] if i in ids}


def _significance(best: Sequence[UnitRun], other: Sequence[UnitRun], metric: str, n_boot: int) -> tuple[float, str]:
    """p-value of best vs next-best by the paired bootstrap, or NaN and why not."""
    a, b = mean_scores(best, metric), mean_scores(other, metric)
    if not a or not b:
        return float("nan"), "no per-sample scores"
    if set(a) != set(b):
        return float("nan"), "different sample ids"
    return paired_bootstrap(a, b, n_boot=n_boot, seed=0).p_value, ""


def leaderboard(units: Sequence[UnitRun], n_boot: int = 2000) -> pd.DataFrame:
    """Long frame: one row per (task, shots, paradigm, metric) with CI, best flag and gap test."""
    rows = []
    for (kind, task, shots), by_p in _groups(units).items():
        metrics: list[str] = []
        for trials in by_p.values():
            metrics += [m for m in trials[0].metric_names() if "/" not in m and m not in metrics]
        for m in metrics:
            s = scale(m)
            cells = {}
            for p, trials in by_p.items():
                vals = [t.metrics[m] for t in trials if m in t.metrics]
                if not vals:
                    continue
                cells[p] = (float(np.mean(vals)) * s,
                            float(np.mean([t.metrics.get(f"{m}_ci_low", np.nan) for t in trials])) * s,
                            float(np.mean([t.metrics.get(f"{m}_ci_high", np.nan) for t in trials])) * s,
                            len(vals), float(np.std(vals, ddof=1)) * s if len(vals) > 1 else float("nan"))
            order = sorted(cells, key=lambda p: -cells[p][0])
            top = cells[order[0]][0] if order else float("nan")
            gap, p_value, why = float("nan"), float("nan"), "only one paradigm"
            if len(order) > 1:
                gap = cells[order[0]][0] - cells[order[1]][0]
                p_value, why = _significance(by_p[order[0]], by_p[order[1]], m, n_boot)
            for p in order:
                t0 = by_p[p][0]
                v, lo, hi, n, sd = cells[p]
                is_best = bool(np.isclose(v, top))
                rows.append({
                    "task_kind": kind, "task": task, "shots": shots, "paradigm": p, "family": t0.family,
                    "variant": t0.variant, "metric": m, "primary": m == t0.primary, "value": v, "ci_low": lo,
                    "ci_high": hi, "n_trials": n, "trial_sd": sd, "best": is_best,
                    "next_best": order[1] if len(order) > 1 and p == order[0] else "",
                    "gap_to_next": gap if p == order[0] else float("nan"),
                    "p_value": p_value if p == order[0] else float("nan"),
                    "test_note": why if p == order[0] else "",
                    "n_samples": int(t0.metrics.get("n_samples", 0)),
                    "unavailable": t0.tags.get("mmbench.unavailable_metrics", "{}"),
                })
    return pd.DataFrame(rows)


def fewshot(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Primary metric against number of shots, mean over trials, per (task, paradigm)."""
    rows = []
    for (kind, task, shots), by_p in _groups(units).items():
        for p, trials in by_p.items():
            m = trials[0].primary
            vals = [t.metrics[m] for t in trials if m in t.metrics]
            if not vals:
                continue
            s = scale(m)
            rows.append({"task_kind": kind, "task": task, "paradigm": p, "shots": shots, "metric": m,
                         "value": float(np.mean(vals)) * s,
                         "ci_low": float(np.mean([t.metrics.get(f"{m}_ci_low", np.nan) for t in trials])) * s,
                         "ci_high": float(np.mean([t.metrics.get(f"{m}_ci_high", np.nan) for t in trials])) * s,
                         "n_trials": len(vals)})
    return pd.DataFrame(rows).sort_values(["task", "paradigm", "shots"]) if rows else pd.DataFrame(rows)


def cost(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Quality against cost per (task, paradigm, shots): seconds/sample, LLM tokens, trainable params."""
    rows = []
    for (kind, task, shots), by_p in _groups(units).items():
        for p, trials in by_p.items():
            m = trials[0].primary

            def avg(key: str) -> float:
                return float(np.mean([t.metrics.get(key, np.nan) for t in trials]))

            rows.append({"task_kind": kind, "task": task, "paradigm": p, "shots": shots, "metric": m,
                         "value": avg(m) * scale(m), "seconds_per_sample": avg("latency_s_mean"),
                         "llm_tokens_per_sample": avg("llm_tokens_in_mean") + avg("llm_tokens_out_mean"),
                         "tool_calls_per_sample": avg("tool_calls_mean"),
                         "trainable_params": float(max(t.metrics.get("trainable_params", 0.0) for t in trials))})
    return pd.DataFrame(rows)


def failures(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Per paradigm: samples evaluated and how many failed, broke the output format, hit limits."""
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for u in units:
        acc[u.paradigm]["samples"] += u.metrics.get("n_samples", 0.0)
        for c in FAILURE_COUNTERS:
            acc[u.paradigm][c] += u.metrics.get(c, 0.0)
    rows = [{"paradigm": p, **{k: int(v) for k, v in d.items()}} for p, d in sorted(acc.items())]
    return pd.DataFrame(rows, columns=["paradigm", "samples", *FAILURE_COUNTERS])
