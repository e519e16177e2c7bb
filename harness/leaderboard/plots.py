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


def fewshot_png(frame: pd.DataFrame, task: str) -> bytes:
    """Primary metric vs shots for one task: one line per paradigm, shaded 95% CI band."""
    sub = frame[frame["task"] == task]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for paradigm, g in sub.groupby("paradigm", sort=True):
        g = g.sort_values("shots")
        line = ax.plot(g["shots"], g["value"], marker="o", label=paradigm)[0]
        ax.fill_between(g["shots"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15, linewidth=0)
    metric = sub["metric"].iloc[0] if len(sub) else ""
    ax.set_xlabel("shots (in-context examples)")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted(sub["shots"].unique()))
    ax.set_title(f"{task}: {metric} vs shots (mean over trials, 95% CI band)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


COST_AXES = (("seconds_per_sample", "seconds per sample", False),
             ("llm_tokens_per_sample", "LLM tokens per sample (in + out)", False),
             ("trainable_params", "trainable parameters", True))


def cost_png(frame: pd.DataFrame, task: str) -> bytes:
    """Primary metric against three costs for one task; each point is (paradigm, shots)."""
    sub = frame[frame["task"] == task]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    paradigms = sorted(sub["paradigm"].unique())
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(paradigms)}
    for ax, (col, label, symlog) in zip(axes, COST_AXES):
        for p in paradigms:
            g = sub[sub["paradigm"] == p]
            ax.scatter(g[col], g["value"], color=colors[p], label=p, s=28)
            for x, y, k in zip(g[col], g["value"], g["shots"]):
                ax.annotate(f"k={k}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if symlog:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    metric = sub["metric"].iloc[0] if len(sub) else ""
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{task}: quality vs cost (k = shots)", fontsize=9)
    return _png(fig)


def failures_png(frame: pd.DataFrame) -> bytes:
    """Stacked bars of failure counts per paradigm."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(frame))))
    left = np.zeros(len(frame))
    for col in ("n_failed", "parse_errors", "tool_failures", "budget_exhausted"):
        ax.barh(frame["paradigm"], frame[col], left=left, label=col)
        left += frame[col].to_numpy(dtype=float)
    ax.set_xlabel("count (all tasks, shots, trials)")
    ax.legend(fontsize=7)
    return _png(fig)
