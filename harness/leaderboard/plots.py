"""Report figures drawn with matplotlib (Agg: no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _png(fig: "plt.Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def _style(i: int) -> dict:
    return {"color": plt.get_cmap("tab10")(i % 10), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)]}


def _pad_ylim(ax: "plt.Axes", lo: float, hi: float, min_span: float = 5.0) -> tuple[float, float]:
    """Keep a flat curve from being blown up to fill the axis (a ±0.04 axis on a 0–100 score); scores
    are never negative, so the axis does not go below 0 when no value does."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ax.get_ylim()
    mid, span = (lo + hi) / 2, max(hi - lo, min_span)
    bottom, top = mid - span * 0.6, mid + span * 0.6
    if lo >= 0 and bottom < 0:
        bottom, top = 0.0, max(top - bottom, span * 1.2)
    ax.set_ylim(bottom, top)
    return bottom, top


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label positions near ``ys`` (any order) at least ``gap`` apart, so direct labels never overlap."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = list(ys)
    for prev, cur in zip(order, order[1:]):
        out[cur] = max(out[cur], out[prev] + gap)
    return out


def fewshot_png(frame: pd.DataFrame, data: str) -> bytes:
    """Primary metric vs shots for one data set: one line per setup (own colour, marker and a label at
    its end); error bars = ±1 sd across trials where a point has several trials, else its 95% CI."""
    sub = frame[frame["data"] == data]
    setups = sorted(sub["setup"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.35 * max(8, len(setups))))
    lows, highs, ends = [], [], []
    for i, setup in enumerate(setups):
        g = sub[sub["setup"] == setup].sort_values("shots")
        sd = g["trial_sd"].to_numpy(dtype=float)
        use_sd = (g["n_trials"] > 1).to_numpy()
        err_lo = np.where(use_sd, sd, g["value"] - g["ci_low"])
        err_hi = np.where(use_sd, sd, g["ci_high"] - g["value"])
        st = _style(i)
        ax.errorbar(g["shots"] + (i - (len(setups) - 1) / 2) * 0.04, g["value"],
                    yerr=np.vstack([np.nan_to_num(err_lo), np.nan_to_num(err_hi)]), capsize=3, markersize=6,
                    linewidth=1.5, label=setup, **st)
        last = g.iloc[-1]
        ends.append((float(last["shots"]), float(last["value"]), setup, st["color"]))
        lows.append(float((g["value"] - np.nan_to_num(err_lo)).min()))
        highs.append(float((g["value"] + np.nan_to_num(err_hi)).max()))
    metric = sub["metric"].iloc[0] if len(sub) else ""
    shots = sorted(sub["shots"].unique())
    ax.set_xticks(shots)
    ax.set_xlim(min(shots) - 0.3, max(shots) + 0.3 + 0.35 * (max(shots) - min(shots) + 1))
    if lows:
        bottom, top = _pad_ylim(ax, min(lows), max(highs))
        label_y = _spread([y for _, y, _, _ in ends], (top - bottom) * 0.06)
        for (x, y, setup, color), ly in zip(ends, label_y):
            ax.annotate(setup, (x, y), xytext=(x + 0.15, ly), textcoords="data", fontsize=7, color=color,
                        va="center", arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6})
        ax.set_ylim(bottom, max(top, max(label_y) + (top - bottom) * 0.05))
    ax.set_xlabel("shots (in-context examples)")
    ax.set_ylabel(f"{metric} (report scale)")
    ax.set_title(f"{data}: {metric} vs shots (mean over trials; bars: ±1 sd over trials, or 95% CI with one trial)",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def scaling_png(frame: pd.DataFrame, data: str, shots: int) -> bytes:
    """All paradigms on one chart across one backbone role's values: grouped bars, 95% CIs as error bars."""
    sub = frame[(frame["data"] == data) & (frame["shots"] == shots)]
    values = list(dict.fromkeys(sub["backbone"]))
    paradigms = sorted(sub["paradigm"].unique())
    width = 0.8 / max(1, len(paradigms))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(values) + 2.5), 3.8))
    x = np.arange(len(values))
    for i, p in enumerate(paradigms):
        g = sub[sub["paradigm"] == p].set_index("backbone").reindex(values)
        st = _style(i)
        pos = x + (i - (len(paradigms) - 1) / 2) * width
        ax.bar(pos, g["value"], width * 0.9, color=st["color"], label=p, hatch=("", "//", "..", "xx")[i // 10 % 4])
        ax.errorbar(pos, g["value"], yerr=np.vstack([np.nan_to_num(g["value"] - g["ci_low"]),
                                                    np.nan_to_num(g["ci_high"] - g["value"])]),
                    fmt="none", ecolor="black", capsize=3, linewidth=1)
        for x_, v in zip(pos, g["value"]):  # the value on each bar: a 0 stays readable
            if np.isfinite(v):
                ax.annotate(f"{v:.1f}", (x_, v), xytext=(0, 2), textcoords="offset points", ha="center",
                            fontsize=6)
    axis, metric = sub["axis"].iloc[0], sub["metric"].iloc[0]
    _pad_ylim(ax, float(np.nanmin(sub["ci_low"].fillna(sub["value"]))), float(np.nanmax(sub["ci_high"].fillna(sub["value"]))))
    ax.set_xticks(x)
    ax.set_xticklabels(values, fontsize=8, rotation=15 if len(values) > 4 else 0)
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{metric} (report scale)")
    ax.set_title(f"{data}, {shots}-shot: {metric} by {axis} (bars: 95% CI)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


COST_AXES = (("seconds_per_sample", "seconds per sample", False),
             ("llm_tokens_per_sample", "LLM tokens per sample (in + out)", False),
             ("trainable_params", "trainable parameters", True))


def cost_png(frame: pd.DataFrame, task: str) -> bytes:
    """Primary metric against three costs for one data set; each point is (setup, shots)."""
    sub = frame[frame["data"] == task]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    paradigms = sorted(sub["setup"].unique())
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(paradigms)}
    for ax, (col, label, symlog) in zip(axes, COST_AXES):
        for p in paradigms:
            g = sub[sub["setup"] == p]
            ax.scatter(g[col], g["value"], color=colors[p], label=p, s=28)
            for x, y, k in zip(g[col], g["value"], g["shots"]):
                ax.annotate(f"k={k}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if symlog:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    metric = sub["metric"].iloc[0] if len(sub) else ""
    axes[0].set_ylabel(metric)
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"{task}: quality vs cost (k = shots)", fontsize=9)
    return _png(fig)


def failures_png(frame: pd.DataFrame) -> bytes:
    """Stacked bars of failure counts per paradigm."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(frame))))
    left = np.zeros(len(frame))
    for col in ("n_failed", "parse_errors", "tool_failures", "budget_exhausted"):
        ax.barh(frame["setup"], frame[col], left=left, label=col)
        left += frame[col].to_numpy(dtype=float)
    ax.set_xlabel("count (all tasks, shots, trials)")
    ax.legend(fontsize=7)
    return _png(fig)
