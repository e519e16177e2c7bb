"""Cache and memo keys are pinned: a refactor that moves key code must leave every key as it was.

The expected values were computed by the runner before keys, shot selection and metrics moved out
of it (``Runner._key``, ``Runner._shot_memo_key``, ``Runner._metrics``, ``Runner._clipscore``) on
the fixed unit built here; a change to any of them makes every cached answer or memo unreachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.config import parse_config
from harness.interface import Paradigm
from harness.keys import keyed_sample, paradigm_fingerprint
from harness.plan import PlannedParadigm, PlannedTask, Unit
from tasks.base import Dataset, Sample
from tasks.metrics.scoring import UnitScoring
from tasks.shots import ShotSelector
from tasks.spec import TaskSpec

PROMPT = "Context: A  hint.\nQuestion: What  colour  is it? Short answer:"  # control characters -> spaces
#: (strategy, shots, trial) -> (answer key, shot memo key)
PINNED = {
    ("random", 0, 0): ("187eb8bbf41c51950f2a8f6812b25c9c", "93e61165078a9547"),
    ("random", 2, 1): ("0be7eb1415c60e93174933d41f4bf4f3", "9d75a99aafe0c975"),
    ("rices", 0, 0): ("187eb8bbf41c51950f2a8f6812b25c9c", "ad637f0887679efc"),
    ("rices", 2, 1): ("a049eb150dc9a5d071607f65c8b04c8b", "0d10930bea60016e"),
}
METRIC_MEMO, CLIPSCORE_MEMO = "05b4f3a72032fc2d", "7d1f7981ecb91209"


def _image(colour: str) -> Any:
    def load() -> Image.Image:
        return Image.new("RGB", (8, 6), colour)

    return load


def _fixture(strategy: str) -> tuple[Any, PlannedTask, Sample, tuple[Sample, ...], dict[str, Any]]:
    cfg = parse_config({
        "name": "keys", "seed": 3, "bootstrap": 20,
        "paradigms": [{"name": "text_conversion/pica"}],
        "tasks": [{"name": "photos_vqa"}],
        "in_context": {"shots": [0, 2], "strategy": strategy, "trials": 2},
    })
    spec = TaskSpec(name="keys_vqa", kind="vqa", description="pinned keys", dataset="photos",
                    prompt="{context}Question: {question} Short answer:", metric="vqa_accuracy", max_new_tokens=7)
    query = Sample("q1", "img/q1.png", _image("red"), question="What\x07 colour\x1b is it?",
                   answers=("red",) * 9 + ("maroon",), meta={"hint": "A\x00 hint."})
    support = tuple(Sample(f"s{i}", f"img/s{i}.png", _image(c), question=f"Is it {c}?", answers=("yes", "yes", "no"))
                    for i, c in enumerate(["blue", "green", "white"]))
    task = PlannedTask(spec, Dataset("keys", "test", "memory", (query,)), Dataset("keys", "train", "memory", support),
                       "task-fingerprint", {}, None, "annotations-digest")
    pfp = {"paradigm": {"paradigm": "text_conversion/pica", "options": {"k": 1}}, "backbones": {"llm": "llm-fp"}}
    return cfg, task, query, support, pfp


class _Memo:
    """Records the keys asked for; every metric is 'already stored', so nothing is computed."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def memo_get(self, kind: str, key: str) -> Any:
        self.asked.append((kind, key))
        return {"values": {}, "ci": {}, "per_sample": {}, "unavailable": {}, "primary": "x"}

    def memo_put(self, kind: str, key: str, value: Any) -> None:
        raise AssertionError("nothing is computed here")


@pytest.mark.parametrize("strategy, k, trial", list(PINNED))
def test_answer_and_shot_memo_keys_are_the_pinned_ones(strategy: str, k: int, trial: int, tmp_path: Path):
    cfg, task, query, support, pfp = _fixture(strategy)
    unit = Unit(PlannedParadigm(cfg.paradigms[0], Paradigm, None), task, k, trial)
    keyed = keyed_sample(unit, pfp, query, support[:k], cfg)
    selector = ShotSelector(_Memo(), strategy=strategy, seed=cfg.seed, scorer=lambda: None,
                            scorer_fingerprint=lambda: "scorer-fp", embeddings_dir=tmp_path)
    assert (keyed.key, selector.memo_key(task, query, k, trial)) == PINNED[(strategy, k, trial)]
    assert keyed.prompt == PROMPT and keyed.shots == support[:k] and keyed.sample is query


def test_metric_and_clipscore_memo_keys_are_the_pinned_ones():
    cfg, task, query, _, _ = _fixture("random")
    memo = _Memo()
    scoring = UnitScoring(memo, cfg, scorer=lambda: None, scorer_fingerprint=lambda: "scorer-fp")  # type: ignore[arg-type]
    scoring.score(task, [query], ["red"])
    assert memo.asked == [("metrics", METRIC_MEMO)]  # a VQA task: no CLIPScore
    scoring.clipscore(task, [query], ["red"])
    assert memo.asked[-1] == ("metrics", CLIPSCORE_MEMO)


def test_paradigm_fingerprint_holds_only_the_backbones_it_uses():
    class Reader:  # stands in for a Paradigm: only ``uses`` and ``fingerprint()`` are read
        uses = ("llm", "scorer")

        def fingerprint(self) -> dict[str, Any]:
            return {"paradigm": "text_conversion/reader"}

    fps = {"llm": "l", "scorer": "s", "vision_encoder": "v", "tools": "t"}
    assert paradigm_fingerprint(Reader(), fps) == {  # type: ignore[arg-type]
        "paradigm": {"paradigm": "text_conversion/reader"}, "backbones": {"llm": "l", "scorer": "s"}}
