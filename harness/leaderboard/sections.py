"""Report content as renderer-neutral tables (rendered by both the Markdown and the HTML writer)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from harness.leaderboard.collect import ParentRun
from harness.published import MARKERS, published_for


@dataclass
class Table:
    """A titled table; ``best[i][j]`` marks a cell to highlight."""

    title: str
    header: list[str]
    rows: list[list[str]]
    best: list[list[bool]] = field(default_factory=list)
    note: str = ""


def fmt(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(p: float, note: str) -> str:
    if isinstance(p, float) and math.isnan(p):
        return f"n/a ({note})" if note else "n/a"
    star = " *" if p < 0.05 else ""
    return f"p={p:.3f}{star}"


def leaderboard_tables(frame: pd.DataFrame, family: str) -> list[Table]:
    """One table per (task, shots) of a family: paradigm × metric, value [95% CI], best marked."""
    out = []
    if frame.empty:
        return out
    sub = frame[frame["task_kind"] == family]
    for (task, shots), g in sub.groupby(["task", "shots"], sort=True):
        metrics = list(dict.fromkeys(g.sort_values("primary", ascending=False, kind="stable")["metric"]))
        paradigms = list(dict.fromkeys(g[g["metric"] == metrics[0]]["paradigm"]))
        paradigms += [p for p in dict.fromkeys(g["paradigm"]) if p not in paradigms]
        header = ["paradigm", *[f"{m} [95% CI]" + (" (primary)" if i == 0 else "") for i, m in enumerate(metrics)]]
        rows, best = [], []
        for p in paradigms:
            row, flags = [p], [False]
            for m in metrics:
                c = g[(g["paradigm"] == p) & (g["metric"] == m)]
                if c.empty:
                    row.append("–")
                    flags.append(False)
                    continue
                r = c.iloc[0]
                cell = f"{fmt(r['value'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
                if r["n_trials"] > 1:
                    cell += f" ±{fmt(r['trial_sd'])} sd, {r['n_trials']} trials"
                row.append(cell)
                flags.append(bool(r["best"]))
            rows.append(row)
            best.append(flags)
        gap_row, gap_flags = ["gap best − next-best (paired bootstrap)"], [False]
        for m in metrics:
            top = g[(g["metric"] == m) & (g["next_best"] != "")]
            if top.empty:
                gap_row.append("–")
            else:
                r = top.iloc[0]
                gap_row.append(f"+{fmt(r['gap_to_next'], 2)} vs {r['next_best']}, {_p(r['p_value'], r['test_note'])}")
            gap_flags.append(False)
        rows.append(gap_row)
        best.append(gap_flags)
        n = int(g["n_samples"].max())
        unavailable: dict[str, str] = {}
        for raw in g["unavailable"]:
            unavailable.update(json.loads(raw or "{}"))
        missing = "".join(f" Unavailable (not 0): {k} — {v}." for k, v in sorted(unavailable.items()))
        out.append(Table(f"{task} — {shots}-shot (n = {n} samples)", header, rows, best,
                         "Bold = best in the column (ties all bold). * = gap to the next-best significant at 5% "
                         "(two-sided paired bootstrap over per-sample scores on the same sample ids)." + missing))
    return out


def published_table(family: str) -> Table | None:
    rows = [[p.system, p.model, p.benchmark, p.metric, p.shots, str(p.value),
             f"[{p.marker}]", p.note] for p in published_for(family)]
    if not rows:
        return None
    markers = "; ".join(f"[{k}] {v}" for k, v in MARKERS.items())
    return Table(f"Published numbers ({family}) — NOT measured by mmbench",
                 ["system", "model", "benchmark", "metric", "shots", "published value", "marker", "setting"], rows,
                 note="Published results from other papers (BRIEF §3), on other models, data and protocols; "
                      f"context only, not comparable cell by cell with the leaderboard above. {markers}.")


def frame_table(title: str, frame: pd.DataFrame, columns: Sequence[str], note: str = "") -> Table:
    rows = []
    for _, r in frame.iterrows():
        rows.append([fmt(r[c], 3) if isinstance(r[c], float) else str(r[c]) for c in columns])
    return Table(title, list(columns), rows, note=note)


def repro_tables(parents: dict[str, ParentRun]) -> list[Table]:
    """One table per parent run that contributed numbers."""
    out = []
    for p in sorted(parents.values(), key=lambda p: p.start_time):
        r: dict[str, Any] = p.repro or {}
        git = r.get("git", {})
        rows = [["MLflow parent run", f"{p.name} ({p.run_id})"],
                ["config hash", str(r.get("config_hash", p.params.get("config_hash", "?")))],
                ["seed", str(r.get("seed", p.params.get("seed", "?")))],
                ["git commit", f"{git.get('commit', p.params.get('git_commit', '?'))} (uncommitted changes: {git.get('dirty', '?')})"]]
        rows += [[f"hardware: {k}", str(v)] for k, v in sorted(r.get("hardware", {}).items())]
        rows += [[f"package: {k}", str(v)] for k, v in sorted(r.get("packages", {}).items())]
        rows += [[f"model fingerprint: {k}", str(v)] for k, v in sorted(r.get("fingerprints", {}).items())]
        if not r:
            rows.append(["reproducibility.json", "missing from this parent run"])
        out.append(Table(f"Run {p.name}", ["field", "value"], rows))
    return out
