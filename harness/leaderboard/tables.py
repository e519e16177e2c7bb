"""Report tables as pandas frames: leaderboard, scaling, in-context learning, few-shot, cost, failures.

Values are in the units papers print: caption metrics ×100 (pycocoevalcap logs 0–1), accuracies
already in percent. A row is a *setup*: paradigm × backbone set (LLM, scorer, experts, encoder) ×
paradigm options, on one data set (task + data fingerprint). With several trials (demonstration
draws) a cell is the mean over trials and its CI the mean of the trials' bootstrap bounds.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from harness.leaderboard.collect import FAILURE_COUNTERS, UnitRun
from harness.leaderboard.stats import holm, mark, paired_test
from harness.report import SCALE_100, display_scale

#: Metrics logged on a 0–1 scale (pycocoevalcap); shown ×100 like in papers.
CAPTION_0_1 = SCALE_100
#: The order of the leaderboard's per-task-kind sections (task kinds absent here follow, sorted).
TASK_KIND_ORDER = ("caption", "vqa", "binding", "multiple_choice")
#: Backbone roles in the order labels name them; the scaling view uses the first that varies.
ROLES = ("llm", "scorer", "encoder", "experts", "text_embedder")


def scale(metric: str) -> float:
    return display_scale(metric)


def short(value: str) -> str:
    """A backbone name for a label: a local folder's last part, a hub id's model part."""
    v = value.rstrip("/")
    return v.rsplit("/", 1)[-1] if v.startswith(("/", ".", "~")) else v


def setup_labels(units: Iterable[UnitRun]) -> dict[Any, str]:
    """Setup → row label: the paradigm, plus every backbone role whose value differs between setups
    of the report (and an options digest where one paradigm label ran with several option sets)."""
    setups = {u.setup for u in units}
    varying = []
    for role in ROLES:  # a role is named when one paradigm ran with several values of it
        per_paradigm: dict[str, set[str]] = defaultdict(set)
        for s in setups:
            per_paradigm[s[0]].add(dict(s[1]).get(role, ""))
        if any(len(v) > 1 for v in per_paradigm.values()):
            varying.append(role)
    by_core: dict[tuple[str, Any], set[str]] = defaultdict(set)
    for s in setups:
        by_core[(s[0], s[1])].add(s[2])
    out = {}
    for s in setups:
        parts = [s[0]]
        bb = dict(s[1])
        parts += [f"{role}={short(bb[role])}" for role in varying if role in bb]
        if len(by_core[(s[0], s[1])]) > 1:
            parts.append(f"options #{s[2]}")
        out[s] = " · ".join(parts)
    return out


def data_labels(units: Iterable[UnitRun]) -> dict[str, str]:
    """Data key → label: the task name, plus the fingerprint where one task ran on several data sets."""
    by_task: dict[str, set[str]] = defaultdict(set)
    for u in units:
        by_task[u.task].add(u.data)
    return {d: (d if len(ds) > 1 else t) for t, ds in by_task.items() for d in ds}


def _groups(units: Iterable[UnitRun]) -> dict[tuple[str, str, int], dict[Any, list[UnitRun]]]:
    """(task kind, data, shots) → setup → that setup's trials."""
    out: dict[tuple[str, str, int], dict[Any, list[UnitRun]]] = defaultdict(lambda: defaultdict(list))
    for u in units:
        out[(u.task_kind, u.data, u.shots)][u.setup].append(u)
    return out


def mean_scores(trials: Sequence[UnitRun], metric: str) -> dict[str, float]:
    """Per-sample score averaged over trials (only ids every trial scored)."""
    maps = [t.scores(metric) for t in trials]
    if not maps or not all(maps):
        return {}
    ids = set(maps[0]).intersection(*maps[1:])
    return {i: float(np.mean([m[i] for m in maps])) for i in maps[0] if i in ids}


def _test(a_trials: Sequence[UnitRun], b_trials: Sequence[UnitRun], metric: str, n_boot: int) -> dict[str, Any]:
    """Paired test A − B on the display scale, or NaNs and why not."""
    a, b = mean_scores(a_trials, metric), mean_scores(b_trials, metric)
    empty = {"p_value": float("nan"), "n_pairs": 0, "diff_ci_low": float("nan"), "diff_ci_high": float("nan"),
             "test": ""}
    if not a or not b:
        return {**empty, "test_note": "no per-sample scores"}
    if set(a) != set(b):
        return {**empty, "test_note": "different sample ids"}
    t = paired_test(a, b, n_boot=n_boot)
    s = scale(metric)
    return {"p_value": t.p_value, "n_pairs": t.n, "diff_ci_low": t.ci[0] * s, "diff_ci_high": t.ci[1] * s,
            "test": t.method, "test_note": ""}


def _cell(trials: Sequence[UnitRun], m: str) -> tuple[float, float, float, int, float] | None:
    vals = [t.metrics[m] for t in trials if m in t.metrics]
    if not vals:
        return None
    s = scale(m)
    return (float(np.mean(vals)) * s,
            float(np.mean([t.metrics.get(f"{m}_ci_low", np.nan) for t in trials])) * s,
            float(np.mean([t.metrics.get(f"{m}_ci_high", np.nan) for t in trials])) * s,
            len(vals), float(np.std(vals, ddof=1)) * s if len(vals) > 1 else float("nan"))


def _backbone_cols(setup: Any) -> dict[str, str]:
    bb = dict(setup[1])
    return {role: bb.get(role, "") for role in ROLES}


def leaderboard(units: Sequence[UnitRun], n_boot: int = 2000) -> pd.DataFrame:
    """Long frame: one row per (data, shots, setup, metric) with CI, best flag and gap test.

    "Best" is decided on full precision (exact equality for ties); the gap test compares the best
    setup with the next-best on per-sample scores. Per-answer-type VQA metrics are rows too (no test:
    only overall per-sample scores are logged)."""
    labels, dlabels = setup_labels(units), data_labels(units)
    rows = []
    for (kind, data, shots), by_s in _groups(units).items():
        metrics: list[str] = []
        for trials in by_s.values():
            metrics += [m for m in trials[0].metric_names() if m not in metrics]
        for m in metrics:
            cells = {s: c for s, trials in by_s.items() if (c := _cell(trials, m)) is not None}
            order = sorted(cells, key=lambda s: (-cells[s][0], labels[s]))
            top = cells[order[0]][0] if order else float("nan")
            test = {"p_value": float("nan"), "n_pairs": 0, "diff_ci_low": float("nan"), "diff_ci_high": float("nan"),
                    "test": "", "test_note": "only one setup"}
            if len(order) > 1:
                test = _test(by_s[order[0]], by_s[order[1]], m, n_boot) if "/" not in m else \
                    {**test, "test_note": "no per-sample scores for this breakdown"}
            for s in order:
                t0 = by_s[s][0]
                v, lo, hi, n, sd = cells[s]
                first = s == order[0]
                rows.append({
                    "task_kind": kind, "task": t0.task, "data": dlabels[data], "shots": shots, "setup": labels[s],
                    "paradigm": t0.paradigm, "family": t0.family, "variant": t0.variant, **_backbone_cols(s),
                    "oracle": t0.is_oracle, "metric": m, "primary": m == t0.primary, "value": v, "ci_low": lo,
                    "ci_high": hi, "n_trials": n, "trial_sd": sd, "best": v == top,
                    "next_best": labels[order[1]] if len(order) > 1 and first else "",
                    "gap_to_next": cells[order[0]][0] - cells[order[1]][0] if len(order) > 1 and first else float("nan"),
                    **{k: (val if first else (float("nan") if isinstance(val, float) else ("" if isinstance(val, str) else 0)))
                       for k, val in test.items()},
                    "n_samples": int(t0.metrics.get("n_samples", 0)),
                    "unavailable": t0.tags.get("mmbench.unavailable_metrics", "{}"),
                })
    frame = pd.DataFrame(rows)
    return _adjust(frame)


def _adjust(frame: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p over the frame's tests, and the significance mark (none below the minimum n)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["p_holm"] = holm([float(p) for p in frame["p_value"]])
    frame["mark"] = [mark(p, int(n)) for p, n in zip(frame["p_holm"], frame["n_pairs"])]
    return frame


def n_tests(frame: pd.DataFrame) -> int:
    return int(frame["p_value"].notna().sum()) if not frame.empty and "p_value" in frame else 0


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMbB])(?![a-zA-Z])")


def size_of(name: str) -> float | None:
    """Parameter count read from a model name (``SmolLM2-135M`` → 1.35e8, ``…-1.7B`` → 1.7e9)."""
    hits = _SIZE.findall(name)
    if not hits:
        return None
    num, unit = hits[-1]
    return float(num) * {"k": 1e3, "m": 1e6, "b": 1e9}[unit.lower()]


def scaling_axis(units: Sequence[UnitRun]) -> str | None:
    """The first backbone role that takes several values for one paradigm (LLM before scorer …)."""
    for role in ROLES:
        by_p: dict[str, set[str]] = defaultdict(set)
        for u in units:
            by_p[u.paradigm].add(u.backbones.get(role, ""))
        if any(len(v) > 1 for v in by_p.values()):
            return role
    return None


def scaling(units: Sequence[UnitRun], role: str) -> pd.DataFrame:
    """Primary metric per (task, shots, paradigm) across the values of one backbone role.

    Ordered by the size in the model name when every name carries one, else by name."""
    rows = []
    dlabels = data_labels(units)
    for (kind, data, shots), by_s in _groups(units).items():
        for s, trials in by_s.items():
            t0 = trials[0]
            c = _cell(trials, t0.primary)
            if c is None:
                continue
            value = dict(s[1]).get(role, "")
            rows.append({"task_kind": kind, "task": t0.task, "data": dlabels[data], "shots": shots,
                         "paradigm": t0.paradigm, "axis": role, "backbone": short(value) or "(not used)",
                         "backbone_full": value, "size": size_of(value) if value else None,
                         "metric": t0.primary, "value": c[0], "ci_low": c[1], "ci_high": c[2], "n_trials": c[3]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    sizes = frame.drop_duplicates("backbone_full")["size"]
    if sizes.notna().all():
        frame = frame.sort_values(["data", "shots", "size", "paradigm"])
    else:
        frame = frame.sort_values(["data", "shots", "backbone", "paradigm"])
    return frame.reset_index(drop=True)


def icl_gain(units: Sequence[UnitRun], n_boot: int = 2000) -> pd.DataFrame:
    """k-shot gain over 0-shot per (setup, data), paired over samples (trials averaged), with CI and test."""
    labels, dlabels = setup_labels(units), data_labels(units)
    by: dict[tuple[Any, str], dict[int, list[UnitRun]]] = defaultdict(lambda: defaultdict(list))
    for u in units:
        by[(u.setup, u.data)][u.shots].append(u)
    rows = []
    for (s, data), shots in sorted(by.items(), key=lambda kv: (kv[0][1], labels[kv[0][0]])):
        if 0 not in shots or len(shots) < 2:
            continue
        zero = shots[0]
        m = zero[0].primary
        sc = scale(m)
        base = mean_scores(zero, m)
        for k in sorted(k for k in shots if k > 0):
            cur = mean_scores(shots[k], m)
            row = {"task_kind": zero[0].task_kind, "task": zero[0].task, "data": dlabels[data], "setup": labels[s],
                   "paradigm": zero[0].paradigm, "metric": m, "shots": k, "n_trials": len(shots[k]),
                   "zero_shot": (_cell(zero, m) or (float("nan"),))[0],
                   "k_shot": (_cell(shots[k], m) or (float("nan"),))[0]}
            if base and cur and set(base) == set(cur):
                t = paired_test(cur, base, n_boot=n_boot)
                row.update(gain=t.mean_diff * sc, gain_ci_low=t.ci[0] * sc, gain_ci_high=t.ci[1] * sc,
                           p_value=t.p_value, n_pairs=t.n, test=t.method, test_note="")
            else:
                row.update(gain=row["k_shot"] - row["zero_shot"], gain_ci_low=float("nan"), gain_ci_high=float("nan"),
                           p_value=float("nan"), n_pairs=0, test="",
                           test_note="no paired per-sample scores (different samples or none logged)")
            rows.append(row)
    return _adjust(pd.DataFrame(rows))


def verdict(row: Any) -> str:
    """One-glance reading of an ICL gain row."""
    if row["n_pairs"] == 0:
        return "no paired test"
    if row["mark"]:
        return "learns from demonstrations" if row["gain"] > 0 else "demonstrations hurt"
    if row["n_pairs"] < 10:
        return "too few samples to tell"
    return "no significant change"


def fewshot(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Primary metric against number of shots per (data, setup): mean over trials, sd across trials, CI."""
    labels, dlabels = setup_labels(units), data_labels(units)
    rows = []
    for (kind, data, shots), by_s in _groups(units).items():
        for s, trials in by_s.items():
            m = trials[0].primary
            c = _cell(trials, m)
            if c is None:
                continue
            rows.append({"task_kind": kind, "task": trials[0].task, "data": dlabels[data], "setup": labels[s],
                         "paradigm": trials[0].paradigm, "shots": shots, "metric": m, "value": c[0], "ci_low": c[1],
                         "ci_high": c[2], "n_trials": c[3], "trial_sd": c[4]})
    return pd.DataFrame(rows).sort_values(["data", "setup", "shots"]).reset_index(drop=True) if rows else pd.DataFrame(rows)


def fewshot_tasks(frame: pd.DataFrame) -> list[str]:
    """Data sets with at least two shot counts (a curve needs two x values)."""
    if frame.empty:
        return []
    return sorted(d for d, g in frame.groupby("data") if g["shots"].nunique() >= 2)


#: Where a per-sample money figure is read from, in order: a metric (mean per sample), then row fields.
#: ``llm_cost``: a served LLM's price table applied to each response's token usage (harness/runner.py).
MONEY_METRICS = ("llm_cost_mean", "money_mean", "cost_mean", "cost_usd_mean")
MONEY_FIELDS = ("llm_cost", "money", "cost", "cost_usd")


def _money(trials: Sequence[UnitRun]) -> float:
    vals = []
    for t in trials:
        got = next((t.metrics[k] for k in MONEY_METRICS if k in t.metrics), None)
        if got is None:
            per = [float(v) for r in t.rows
                   if (v := next((r[f] for f in MONEY_FIELDS if isinstance(r.get(f), (int, float))
                                  and not isinstance(r.get(f), bool)), None)) is not None]
            got = float(np.mean(per)) if per else None
        if got is not None:
            vals.append(got)
    return float(np.mean(vals)) if vals else float("nan")


def cost(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Quality against cost per (data, setup, shots): seconds, LLM tokens, tool calls, trainable params,
    and money per sample when the runs logged a price-based cost (column absent otherwise)."""
    labels, dlabels = setup_labels(units), data_labels(units)
    rows = []
    for (kind, data, shots), by_s in _groups(units).items():
        for s, trials in by_s.items():
            m = trials[0].primary

            def avg(key: str) -> float:
                return float(np.mean([t.metrics.get(key, np.nan) for t in trials]))

            rows.append({"task_kind": kind, "task": trials[0].task, "data": dlabels[data], "setup": labels[s],
                         "paradigm": trials[0].paradigm, "shots": shots, "metric": m, "value": avg(m) * scale(m),
                         "seconds_per_sample": avg("latency_s_mean"),
                         "llm_tokens_per_sample": avg("llm_tokens_in_mean") + avg("llm_tokens_out_mean"),
                         "tool_calls_per_sample": avg("tool_calls_mean"),
                         "trainable_params": float(max(t.metrics.get("trainable_params", 0.0) for t in trials)),
                         "money_per_sample": _money(trials)})
    frame = pd.DataFrame(rows)
    if not frame.empty and frame["money_per_sample"].isna().all():
        frame = frame.drop(columns=["money_per_sample"])
    return frame


def failures(units: Sequence[UnitRun]) -> pd.DataFrame:
    """Per setup: samples evaluated and how many failed, broke the output format, hit limits."""
    labels = setup_labels(units)
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for u in units:
        acc[labels[u.setup]]["samples"] += u.metrics.get("n_samples", 0.0)
        for c in FAILURE_COUNTERS:
            acc[labels[u.setup]][c] += u.metrics.get(c, 0.0)
    rows = [{"setup": p, **{k: int(v) for k, v in d.items()}} for p, d in sorted(acc.items())]
    return pd.DataFrame(rows, columns=["setup", "samples", *FAILURE_COUNTERS])


def is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
