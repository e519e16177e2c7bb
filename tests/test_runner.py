"""The runner's own behaviour, through its public API (``plan_run`` + ``Runner``): a resumed run
computes only the samples the cache lacks; each batch's answers are cached before the next batch
starts; a bad sample fails alone (the rest of the batch is answered, the run goes on); transient
failures are not cached; cached failures are recomputed only with ``retry_failed``.

A real paradigm (PICa, OCR converter) runs on an official-format VQAv2 folder; its LLM is the
scripted :class:`tests.fakes.FakeLLM` and its tool box returns a fixed OCR reading, so every answer is
known in advance and the runner is what is under test.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from harness.backbones import Backbones
from harness.cache import ResultCache
from harness.config import parse_config
from harness.models.tools import TextLine, TextLines
from harness.plan import plan_run
from harness.runner import Runner
from tests.fakes import FakeLLM, ScriptedTools
from tests.support import write_vqa_folder, write_vqa_image

N = 6


def _question_number(prompt: str) -> int:
    """Which sample a PICa prompt asks about (its last "What is i?" is the query; shots come first)."""
    return int(re.findall(r"What is (\d+)\?", prompt)[-1])


def _honest(prompt: str) -> str:
    """The right answer for every sample (the annotations say "grey" everywhere)."""
    return " grey\nQuestion: next"


@pytest.fixture()
def vqa(tmp_path: Path, pinned_fingerprints: None) -> Path:
    root = tmp_path / "vqa"
    write_vqa_folder(root, n=N)
    for i in range(1, N + 1):
        write_vqa_image(root, i, 20 * i)
    return root


def _run(root: Path, results: Path, reply: Callable[[str], str], *, batch_size: int = 2,
         retry_failed: bool = False) -> tuple[FakeLLM, Any]:
    """One ``mmbench run``-equivalent: plan the config, run it on fake backbones, return the LLM
    (its calls) and the unit's result."""
    cfg = parse_config({
        "name": "runner-test", "seed": 0, "batch_size": batch_size, "bootstrap": 10, "results_dir": str(results),
        "paradigms": [{"name": "text_conversion/pica", "options": {"converters": [{"kind": "ocr"}]}}],
        "tasks": [{"name": "vqav2_local", "dataset_options": {
            "root": str(root), "questions": "questions.json", "annotations": "annotations.json", "images_dir": "images"}}],
    })
    llm = FakeLLM(reply)
    backbones = Backbones(cfg.models, seed=cfg.seed)
    backbones.__dict__["llm"] = llm
    backbones.__dict__["tools"] = ScriptedTools({"text_reader": TextLines((TextLine("STOP", 0.95, (0.7, 0.1, 0.8, 0.2)),))})
    with ResultCache(results / "cache.sqlite") as cache:
        (result,) = Runner(plan_run(cfg), cache=cache, backbones=backbones, progress=False,
                           retry_failed=retry_failed).run()
    return llm, result


def _asked(llm: FakeLLM) -> list[int]:
    """Sample numbers the LLM was asked about, in call order (a retried sample appears again)."""
    return [_question_number(p) for prompts, _ in llm.calls for p in prompts]


def _rows(result: Any) -> dict[int, dict[str, Any]]:
    return {int(r["sample_id"].rsplit("/", 1)[1]): r for r in result.rows}


def _cached(results: Path) -> dict[int, str | None]:
    """sample number -> cached error (None for an answer), read by a second connection."""
    with sqlite3.connect(results / "cache.sqlite") as db:
        rows = db.execute("SELECT sample_id, payload FROM answers").fetchall()
    return {int(sid.rsplit("/", 1)[1]): json.loads(p)["error"] for sid, p in rows}


def test_each_batch_is_cached_before_the_next_and_a_resumed_run_computes_only_the_rest(vqa, tmp_path):
    results = tmp_path / "r"
    seen_in_cache: list[dict[int, str | None]] = []

    def interrupted_at_third_batch(prompt: str) -> str:
        n = _question_number(prompt)
        if n in (3, 5):  # first sample of batches 2 and 3: what another process sees in the cache now
            seen_in_cache.append(_cached(results))
        if n == 5:
            raise KeyboardInterrupt  # Ctrl-C during batch 3
        return _honest(prompt)

    with pytest.raises(KeyboardInterrupt):
        _run(vqa, results, interrupted_at_third_batch)
    assert seen_in_cache == [{1: None, 2: None}, {1: None, 2: None, 3: None, 4: None}]
    assert _cached(results) == {1: None, 2: None, 3: None, 4: None}  # batch 3 wrote nothing

    llm, result = _run(vqa, results, _honest)
    assert _asked(llm) == [5, 6]  # only what the cache lacked
    assert (result.computed, result.cached) == (2, 4)
    assert all(r["prediction"] == "grey" and r["error"] is None for r in result.rows)

    llm, again = _run(vqa, results, _honest)
    assert llm.calls == [] and (again.computed, again.cached) == (0, N)
    assert again.metrics.values == result.metrics.values and result.metrics.values == {"overall": 100.0}


def test_a_bad_sample_fails_alone_with_its_reason_and_counts_as_wrong(vqa, tmp_path):
    def overlong_four(prompt: str) -> str:
        if _question_number(prompt) == 4:
            raise ValueError("input of 9000 tokens exceeds the context")
        return _honest(prompt)

    llm, result = _run(vqa, tmp_path / "r", overlong_four, batch_size=3)
    rows = _rows(result)
    assert rows[4]["error"] == "ValueError: input of 9000 tokens exceeds the context" and rows[4]["prediction"] == ""
    assert all(rows[i]["error"] is None and rows[i]["prediction"] == "grey" for i in (1, 2, 3, 5, 6))
    # batch 1 whole; batch 2 failed as a whole, then one request at a time isolated sample 4
    assert _asked(llm) == [1, 2, 3, 4, 5, 6, 4, 5, 6]
    assert result.costs["n_failed"] == 1.0 and result.metrics.values["overall"] == pytest.approx(100 * 5 / 6)
    assert _cached(tmp_path / "r")[4] == "ValueError: input of 9000 tokens exceeds the context"


def test_transient_failures_are_reported_not_cached_and_recomputed_next_run(vqa, tmp_path):
    results = tmp_path / "r"

    def oom_on_two(prompt: str) -> str:
        if _question_number(prompt) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _honest(prompt)

    _, result = _run(vqa, results, oom_on_two)
    row = _rows(result)[2]
    assert row["transient"] and "OutOfMemoryError" in row["error"] and result.costs["n_transient"] == 1.0
    assert 2 not in _cached(results) and len(_cached(results)) == N - 1

    llm, result = _run(vqa, results, _honest)
    assert _asked(llm) == [2] and _rows(result)[2]["prediction"] == "grey" and result.costs["n_failed"] == 0.0


def test_cached_failures_are_kept_unless_retry_failed(vqa, tmp_path):
    results = tmp_path / "r"

    def broken_three(prompt: str) -> str:
        if _question_number(prompt) == 3:
            raise ValueError("malformed image")
        return _honest(prompt)

    _run(vqa, results, broken_three)
    assert _cached(results)[3] == "ValueError: malformed image"

    llm, result = _run(vqa, results, _honest)  # a plain rerun trusts the cached failure
    assert llm.calls == [] and _rows(result)[3]["error"] == "ValueError: malformed image"

    llm, result = _run(vqa, results, _honest, retry_failed=True)
    assert _asked(llm) == [3] and _rows(result)[3]["prediction"] == "grey" and result.costs["n_failed"] == 0.0
    assert _cached(results)[3] is None  # the fresh answer replaced the failure
