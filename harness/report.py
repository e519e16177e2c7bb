"""Result tables printed at the end of a run (the full leaderboard report builds on these frames)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from harness.unit_result import UnitResult

#: Metrics pycocoevalcap reports on a 0–1 scale; papers (and our tables) print them ×100.
SCALE_100 = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}


def display_scale(metric: str) -> float:
    return 100.0 if metric in SCALE_100 else 1.0


def results_frame(results: Sequence["UnitResult"]) -> pd.DataFrame:
    """One row per (unit, metric): everything needed to compare paradigms."""
    rows = []
    for r in results:
        u = r.unit
        for metric, value in r.metrics.values.items():
            lo, hi = r.metrics.ci.get(metric, (float("nan"), float("nan")))
            rows.append(
                {
                    "paradigm": u.paradigm.label,
                    "family": u.paradigm.cls.family,
                    "task": u.task.spec.name,
                    "kind": u.task.spec.kind,
                    "shots": u.shots,
                    "trial": u.trial,
                    "shot_strategy": r.shot_strategy,
                    "metric": metric,
                    "primary": metric == r.metrics.primary,
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    **r.costs,
                }
            )
    return pd.DataFrame(rows)


def results_table(results: Sequence["UnitResult"]) -> str:
    """Paradigm × (task, shots) table of the primary metric, mean over trials, with 95% CI."""
    frame = results_frame(results)
    if frame.empty:
        return "(no results)"
    prim = frame[frame["primary"]]
    cells: dict[tuple[str, str], str] = {}
    columns: list[str] = []
    for (paradigm, task, shots, metric), g in prim.groupby(["paradigm", "task", "shots", "metric"], sort=False):
        s = display_scale(metric)
        col = f"{task} {metric} {shots}-shot"
        if col not in columns:
            columns.append(col)
        mean = g["value"].mean() * s
        if len(g) > 1:
            cell = f"{mean:.1f} ±{g['value'].std(ddof=1) * s:.1f} (n={len(g)} trials)"
        else:
            cell = f"{mean:.1f} [{g['ci_low'].iloc[0] * s:.1f}, {g['ci_high'].iloc[0] * s:.1f}]"
        failed = int(g["n_failed"].sum())
        if failed:
            cell += f" ({failed} failed)"
        cells[(paradigm, col)] = cell
    paradigms = list(dict.fromkeys(prim["paradigm"]))
    header = ["paradigm", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in paradigms:
        lines.append("| " + " | ".join([p, *(cells.get((p, c), "–") for c in columns)]) + " |")
    note = "Primary metric per task (caption metrics and accuracies ×100; VQA overall in %), 95% bootstrap CI in brackets."
    return "\n".join(lines) + "\n\n" + note
