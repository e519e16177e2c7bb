"""Failure counters are Answer fields: summed per unit, kept through the cache, read from answers
cached when they were still trace entries."""

from __future__ import annotations

import json

from harness.interface import Answer
from harness.unit_result import unit_costs


def test_counters_survive_the_cache_round_trip():
    a = Answer("cat", parse_errors=2, tool_failures=1, budget_exhausted=True, trace={"steps": 3})
    back = Answer.from_dict(json.loads(json.dumps(a.to_dict(), sort_keys=True)))  # as the result cache stores it
    assert back == a


def test_answers_cached_with_counters_in_the_trace_keep_their_counts():
    # what the cache holds for an agent answer computed before the counters became fields
    old = {"text": "cat", "latency_s": 0.5, "llm_tokens_in": 10, "llm_tokens_out": 2, "tool_calls": 1,
           "trainable_params": 0, "error": None,
           "trace": {"tool_calls": 1, "parse_errors": 2, "budget_exhausted": True, "steps": 3}}
    a = Answer.from_dict(old)
    assert (a.parse_errors, a.tool_failures, a.budget_exhausted) == (2, 0, True)
    assert a.trace == old["trace"]  # the logged trace is left as it was
    plain = Answer.from_dict({"text": "dog", "trace": {"parse_errors": None}})
    assert (plain.parse_errors, plain.tool_failures, plain.budget_exhausted) == (0, 0, False)


def test_unit_costs_sum_the_counters_over_samples():
    answers = [
        Answer("a", parse_errors=1, budget_exhausted=True),
        Answer("b", tool_failures=2, budget_exhausted=True),
        Answer.failed("no image"),
        Answer.from_dict({"text": "c", "trace": {"parse_errors": 3, "budget_exhausted": False}}),
    ]
    costs = unit_costs(answers, [{} for _ in answers])
    assert (costs["parse_errors"], costs["tool_failures"], costs["budget_exhausted"]) == (4.0, 2.0, 2.0)
    assert costs["n_failed"] == 1.0 and costs["n_samples"] == 4.0
