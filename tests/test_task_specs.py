"""Every shipped task file names a registered loader, a split it has and a metric fit for its kind."""

from __future__ import annotations

import pytest

from tasks.datasets import LOADERS
from tasks.metrics import METRICS
from tasks.spec import get_task, task_specs

KIND_METRICS = {
    "caption": {"caption"},
    "vqa": {"vqa_accuracy", "exact_match"},
    "multiple_choice": {"choice_accuracy"},
    "binding": {"exact_match"},
}


@pytest.mark.parametrize("name", sorted(task_specs()))
def test_task_spec_is_consistent(name):
    spec = task_specs()[name]
    assert spec.dataset in LOADERS, f"{name}: loader {spec.dataset!r} not registered"
    loader = LOADERS[spec.dataset]
    assert spec.split in loader.splits, f"{name}: split {spec.split!r} not in {loader.splits}"
    if spec.support_split:
        assert spec.support_split in loader.splits
    assert spec.metric in METRICS and spec.metric in KIND_METRICS[spec.kind]
    assert name.lower() != "mmbench"
    if spec.kind in ("vqa", "multiple_choice"):
        assert "{question}" in spec.prompt
    if spec.kind == "multiple_choice":
        assert "{choices}" in spec.prompt
    spec.render_prompt("q?", ("a", "b"))  # the template formats without error


def test_choices_render_as_lettered_options():
    spec = task_specs()["aokvqa_mc"]
    assert spec.render_prompt("What?", ("cat", "dog")) == "Question: What? Options: (A) cat (B) dog Answer:"


def test_scienceqa_prompts_put_the_hint_first_as_context() -> None:
    spec = get_task("scienceqa_local")
    assert spec.render_prompt("Which is hot?", ("ice", "fire"), "It is summer.") == (
        "Context: It is summer.\nQuestion: Which is hot? Options: (A) ice (B) fire Answer:"
    )
    assert spec.render_prompt("Which is hot?", ("ice", "fire"), "  ") == "Question: Which is hot? Options: (A) ice (B) fire Answer:"
    assert get_task("scienceqa_img").prompt == spec.prompt
    assert get_task("okvqa_local").render_prompt("Why?", (), "ignored") == "Question: Why? Short answer:"
