"""What a unit leaves behind: its metrics, one prediction row per sample, and its cost means.

The rows are logged as ``predictions.jsonl`` and the costs as metrics of the unit's MLflow run,
where the report and leaderboard read them (harness/report.py, harness/leaderboard/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.config import RunConfig
from harness.interface import COUNTERS, Answer
from harness.keys import KeyedSample
from harness.models.served_llm import llm_cost
from harness.plan import Unit
from tasks.base import MetricResult


@dataclass
class UnitResult:
    unit: Unit
    metrics: MetricResult
    rows: list[dict[str, Any]]
    computed: int
    cached: int
    costs: dict[str, float] = field(default_factory=dict)
    shot_strategy: str | None = None  # how demonstrations were chosen (None at 0 shots)
    started_s: float = 0.0  # wall clock (epoch seconds) when the unit's work began / ended: real MLflow durations
    ended_s: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r["error"])


def shot_strategy(unit: Unit, config: RunConfig) -> str | None:
    """How the unit's demonstrations were chosen; None at 0 shots."""
    return config.in_context.strategy if unit.shots > 0 else None


def prediction_rows(
    unit: Unit, keyed: Sequence[KeyedSample], answers: Sequence[Answer], preds: Sequence[str],
    metrics: MetricResult, config: RunConfig,
) -> list[dict[str, Any]]:
    """One row per sample: what was asked, shown and answered, its costs and its per-sample scores.

    ``llm_cost`` is set with a served LLM's price table, or from a paradigm's own priced endpoint.
    """
    price = getattr(config.models.llm, "price", None)  # served LLMs with a price table only
    rows = []
    for p, a, pred in zip(keyed, answers, preds):
        s = p.sample
        row = {
            "sample_id": s.sample_id,
            "image_ref": s.image_ref,
            "question": s.question,
            "prompt": p.prompt,
            "shots": [x.sample_id for x in p.shots],
            "shot_strategy": shot_strategy(unit, config),
            "shot_answers": [x.gold_text for x in p.shots],
            "prediction": pred,
            "references": list(s.references),
            "answers": list(s.answers),
            "choices": list(s.choices),
            "error": a.error,
            "transient": a.transient,
            "latency_s": a.latency_s,
            "llm_tokens_in": a.llm_tokens_in,
            "llm_tokens_out": a.llm_tokens_out,
            "tool_calls": a.tool_calls,
            "trace": a.trace,
        }
        if price is not None:
            row["llm_cost"] = llm_cost(a.llm_tokens_in, a.llm_tokens_out, price)
        elif isinstance(a.trace, dict) and a.trace.get("llm_cost") is not None:  # a paradigm's own endpoint
            row["llm_cost"] = float(a.trace["llm_cost"])
        for m, scores in metrics.per_sample.items():
            if len(scores) == len(keyed):
                row[f"score_{m}"] = scores[len(rows)]
        rows.append(row)
    return rows


def unit_costs(answers: Sequence[Answer], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means per sample of latency, tokens and tool calls; failure counts; money when priced."""
    n = max(1, len(answers))
    costs = {
        "latency_s_mean": sum(a.latency_s for a in answers) / n,
        "llm_tokens_in_mean": sum(a.llm_tokens_in for a in answers) / n,
        "llm_tokens_out_mean": sum(a.llm_tokens_out for a in answers) / n,
        "tool_calls_mean": sum(a.tool_calls for a in answers) / n,
        "trainable_params": float(max((a.trainable_params for a in answers), default=0)),
        "n_failed": float(sum(1 for a in answers if a.error)),
        "n_transient": float(sum(1 for a in answers if a.transient)),
        "n_samples": float(len(answers)),
    }
    if any("llm_cost" in r for r in rows):  # money per sample at the configured price per million tokens
        costs["llm_cost_mean"] = sum(r.get("llm_cost", 0.0) for r in rows) / n
        costs["llm_cost_total"] = sum(r.get("llm_cost", 0.0) for r in rows)
    for counter in COUNTERS:  # summed over the unit's samples (a bool counts 1)
        costs[counter] = float(sum(int(getattr(a, counter)) for a in answers))
    return costs
