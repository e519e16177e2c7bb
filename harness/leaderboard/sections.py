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
    """A titled table; ``best[i][j]`` marks a cell to highlight; ``sort[i][j]`` is the number a
    column sort uses for a cell (None: sort by its text); ``footer`` rows stay below the sorted body."""

    title: str
    header: list[str]
    rows: list[list[str]]
    best: list[list[bool]] = field(default_factory=list)
    note: str = ""
    sort: list[list[float | None]] = field(default_factory=list)
    footer: list[list[str]] = field(default_factory=list)


def fmt(x: Any, digits: int | str = 1) -> str:
    """``digits`` decimals, or ``"e"`` for 3 significant digits in scientific notation."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2e}" if digits == "e" else f"{x:.{digits}f}"


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def digits_to_separate(best: Sequence[float], others: Sequence[float], start: int = 1, most: int = 4) -> int | str:
    """Fewest decimals (≥ ``start``) at which no bold value prints the same as a non-bold one, or
    ``"e"`` (3 significant digits, scientific) when even ``most`` decimals cannot tell them apart.

    Ties are decided on full precision; this keeps the page from showing a bold "0.0" beside a
    plain "0.0" that is not a tie."""
    for d in range(start, most + 1):
        shown = {f"{b:.{d}f}" for b in best}
        if not any(f"{o:.{d}f}" in shown for o in others):
            return d
    return "e"


def p_text(p: float, p_holm: float, n: int, mark_: str, note: str = "") -> str:
    if isinstance(p, float) and math.isnan(p):
        return f"n/a ({note})" if note else "n/a"
    return f"p={p:.3g}, p_holm={p_holm:.3g}, n={n}{' ' + mark_ if mark_ else ''}"


def leaderboard_tables(frame: pd.DataFrame, family: str, rule: str) -> list[Table]:
    """One table per (data, shots) of a family: setup × metric, value [95% CI], best marked."""
    out: list[Table] = []
    if frame.empty:
        return out
    sub = frame[frame["task_kind"] == family]
    for (data, shots), g in sub.groupby(["data", "shots"], sort=True):
        metrics = list(dict.fromkeys(g.sort_values("primary", ascending=False, kind="stable")["metric"]))
        setups = list(dict.fromkeys(g[g["metric"] == metrics[0]]["setup"]))
        setups += [p for p in dict.fromkeys(g["setup"]) if p not in setups]
        oracle = set(g[g["oracle"]]["setup"])
        header = ["setup", *[f"{m} [95% CI]" + (" (primary)" if i == 0 else "") for i, m in enumerate(metrics)]]
        digits = {}
        for m in metrics:
            gm = g[g["metric"] == m]
            digits[m] = digits_to_separate(list(gm[gm["best"]]["value"]), list(gm[~gm["best"]]["value"]))
        rows, best, sort = [], [], []
        for p in setups:
            row, flags, keys = [p + (" (oracle)" if p in oracle else "")], [False], [None]
            for m in metrics:
                c = g[(g["setup"] == p) & (g["metric"] == m)]
                if c.empty:
                    row.append("–")
                    flags.append(False)
                    keys.append(None)
                    continue
                r = c.iloc[0]
                d = digits[m]
                cell = f"{fmt(r['value'], d)} [{fmt(r['ci_low'], d)}, {fmt(r['ci_high'], d)}]"
                if r["n_trials"] > 1:
                    cell += f" ±{fmt(r['trial_sd'])} sd, {r['n_trials']} trials"
                row.append(cell)
                flags.append(bool(r["best"]))
                keys.append(_num(r["value"]))
            rows.append(row)
            best.append(flags)
            sort.append(keys)
        gap_row = ["gap best − next-best"]
        for m in metrics:
            top = g[(g["metric"] == m) & (g["next_best"] != "")]
            if top.empty:
                gap_row.append("–")
                continue
            r = top.iloc[0]
            ci = (f" [{fmt(r['diff_ci_low'], 2)}, {fmt(r['diff_ci_high'], 2)}]"
                  if not math.isnan(r["diff_ci_low"]) else "")
            gap_row.append(f"+{fmt(r['gap_to_next'], 2)}{ci} vs {r['next_best']}; "
                           f"{p_text(r['p_value'], r['p_holm'], int(r['n_pairs']), r['mark'], r['test_note'])}")
        n = int(g["n_samples"].max())
        unavailable: dict[str, str] = {}
        for raw in g["unavailable"]:
            unavailable.update(json.loads(raw or "{}"))
        missing = "".join(f" Unavailable (not 0): {k} — {v}." for k, v in sorted(unavailable.items()))
        oracle_note = (" (oracle) = the LLM was given the human reference captions as if an expert had "
                       "produced them: an upper bound for perfect perception, not a result." if oracle else "")
        out.append(Table(f"{data} — {shots}-shot (n = {n} samples)", header, rows, best,
                         "Bold = best in the column, decided on full precision (ties all bold; decimals are added "
                         "until a bold value never prints like a plain one). Gap row: best minus next-best with "
                         "the 95% paired bootstrap CI of the difference. " + rule + oracle_note + missing,
                         sort=sort, footer=[gap_row]))
    return out


def scaling_table(frame: pd.DataFrame, data: str, shots: int) -> Table:
    """Paradigm × backbone value for one data set and shot count (primary metric, 95% CI)."""
    g = frame[(frame["data"] == data) & (frame["shots"] == shots)]
    values = list(dict.fromkeys(g["backbone"]))
    paradigms = sorted(set(g["paradigm"]))
    rows, sort = [], []
    for p in paradigms:
        row, keys = [p], [None]
        for v in values:
            c = g[(g["paradigm"] == p) & (g["backbone"] == v)]
            if c.empty:
                row.append("–")
                keys.append(None)
            else:
                r = c.iloc[0]
                row.append(f"{fmt(r['value'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]")
                keys.append(_num(r["value"]))
        rows.append(row)
        sort.append(keys)
    axis, metric = g["axis"].iloc[0], g["metric"].iloc[0]
    return Table(f"Scaling: {data} — {shots}-shot, {metric} by {axis}", ["paradigm", *values], rows,
                 note=f"Each column is one {axis}; ordered by the size in the model name when every name has one. "
                      "Cells: value [95% CI].", sort=sort)


def icl_table(frame: pd.DataFrame, rule: str) -> Table:
    """One row per (data, setup, k): k-shot gain over 0-shot with a paired CI and a verdict."""
    from harness.leaderboard.tables import verdict

    rows, sort = [], []
    for _, r in frame.iterrows():
        rows.append([r["data"], r["setup"], str(r["shots"]), r["metric"], fmt(r["zero_shot"]), fmt(r["k_shot"]),
                     f"{r['gain']:+.1f} [{fmt(r['gain_ci_low'])}, {fmt(r['gain_ci_high'])}]",
                     p_text(r["p_value"], r["p_holm"], int(r["n_pairs"]), r["mark"], r["test_note"]), verdict(r)])
        sort.append([None, None, float(r["shots"]), None, _num(r["zero_shot"]), _num(r["k_shot"]), _num(r["gain"]),
                     _num(r["p_value"]), None])
    return Table("In-context learning: k-shot gain over 0-shot",
                 ["data", "setup", "k", "metric", "0-shot", "k-shot", "gain [95% paired CI]", "test", "reading"],
                 rows, note="Gain = mean over samples of (k-shot score, averaged over trials) − (0-shot score), on the "
                            "same samples; CI = 95% paired bootstrap. " + rule, sort=sort)


def published_table(family: str) -> Table | None:
    rows = [[p.system, p.model, p.benchmark, p.metric, p.shots, str(p.value),
             f"[{p.marker}]", p.note] for p in published_for(family)]
    if not rows:
        return None
    markers = "; ".join(f"[{k}] {v}" for k, v in MARKERS.items())
    return Table(f"Published numbers ({family}) — NOT measured by mmbench",
                 ["system", "model", "benchmark", "metric", "shots", "published value", "marker", "setting"], rows,
                 note="Published results from other papers, on other models, data and protocols; "
                      f"context only, not comparable cell by cell with the leaderboard above. {markers}.")


def frame_table(title: str, frame: pd.DataFrame, columns: Sequence[str], note: str = "", digits: int = 3) -> Table:
    rows, sort = [], []
    columns = [c for c in columns if c in frame.columns]
    for _, r in frame.iterrows():
        rows.append([fmt(r[c], digits) if isinstance(r[c], float) else str(r[c]) for c in columns])
        sort.append([_num(r[c]) if isinstance(r[c], (int, float)) and not isinstance(r[c], bool) else None
                     for c in columns])
    return Table(title, list(columns), rows, note=note, sort=sort)


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
