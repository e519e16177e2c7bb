"""Every shipped task file names a registered loader, a split it has and a metric fit for its kind;
a task file with an unknown key, an unknown prompt placeholder or a metric that cannot score its
kind is refused when it loads, naming the file, the key and the valid choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tasks.datasets import LOADERS
from tasks.metrics import METRICS
from tasks.spec import KIND_METRICS, TASK_DIRS_ENV, TaskSpecError, get_task, task_specs


@pytest.mark.parametrize("name", sorted(task_specs()))
def test_task_spec_is_consistent(name):
    spec = task_specs()[name]
    assert spec.dataset in LOADERS, f"{name}: loader {spec.dataset!r} not registered"
    loader = LOADERS[spec.dataset]
    assert spec.split in loader.splits, f"{name}: split {spec.split!r} not in {loader.splits}"
    if spec.support_split:
        assert spec.support_split in loader.splits
    assert spec.metric in METRICS and spec.metric in KIND_METRICS[spec.kind]  # also checked at load
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


def test_every_metric_scores_some_kind_and_every_kind_has_a_metric() -> None:
    assert {m for ms in KIND_METRICS.values() for m in ms} == set(METRICS)
    assert set(KIND_METRICS) == {"caption", "vqa", "multiple_choice", "binding"}


# ------------------------------------------------------------------ task files outside tasks/specs
GOOD: dict[str, Any] = {
    "name": "my_world_vqa", "kind": "vqa", "description": "synthetic VQA, my prompt", "dataset": "world",
    "dataset_options": {"task": "vqa"}, "split": "test", "support_split": "train",
    "prompt": "Q: {question} A:", "metric": "vqa_accuracy", "max_new_tokens": 4,
}


def _spec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *specs: dict[str, Any]) -> Path:
    folder = tmp_path / "my_tasks"
    folder.mkdir(exist_ok=True)
    for i, spec in enumerate(specs):
        (folder / f"task{i}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv(TASK_DIRS_ENV, str(folder))
    return folder


def _load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **change: Any) -> str:
    folder = _spec_dir(tmp_path, monkeypatch, {**GOOD, **change})
    with pytest.raises(TaskSpecError) as info:
        task_specs()
    msg = str(info.value)
    assert str(folder / "task0.yaml") in msg, msg  # the file is named
    return msg


def test_a_task_folder_from_the_environment_adds_its_tasks(tmp_path, monkeypatch) -> None:
    _spec_dir(tmp_path, monkeypatch, GOOD)
    assert get_task("my_world_vqa").render_prompt("What colour?") == "Q: What colour? A:"
    assert "vqav2_val" in task_specs()  # the shipped ones stay
    monkeypatch.delenv(TASK_DIRS_ENV)
    assert "my_world_vqa" not in task_specs()
    with pytest.raises(KeyError, match=TASK_DIRS_ENV):
        get_task("my_world_vqa")


def test_an_unknown_placeholder_fails_at_load_with_the_valid_ones(tmp_path, monkeypatch) -> None:
    msg = _load_error(tmp_path, monkeypatch, prompt="Question: {q} Short answer:")
    assert "key 'prompt'" in msg and "{q}" in msg
    assert all(p in msg for p in ("{question}", "{choices}", "{context}"))


def test_other_malformed_prompts_fail_at_load(tmp_path, monkeypatch) -> None:
    assert "not a valid template" in _load_error(tmp_path, monkeypatch, prompt="Question: {question Short answer:")
    assert "unknown placeholder" in _load_error(tmp_path, monkeypatch, prompt="{question} {}")  # positional
    assert "format spec" in _load_error(tmp_path, monkeypatch, prompt="{question!r}")
    msg = _load_error(tmp_path, monkeypatch, prompt="Answer briefly:")  # the model would never see the question
    assert "key 'prompt'" in msg and "must contain {question}" in msg
    msg = _load_error(tmp_path, monkeypatch, kind="multiple_choice", metric="choice_accuracy")
    assert "must contain {choices}" in msg


def test_a_metric_that_cannot_score_the_kind_fails_at_load(tmp_path, monkeypatch) -> None:
    msg = _load_error(tmp_path, monkeypatch, metric="caption")
    assert "key 'metric'" in msg and "'caption' cannot score a vqa task" in msg
    assert "vqa_accuracy, exact_match" in msg
    msg = _load_error(tmp_path, monkeypatch, metric="bleu")
    assert "key 'metric'" in msg and "'caption'" in msg and "'vqa_accuracy'" in msg  # pydantic lists the choices


def test_unknown_keys_and_clashing_names_fail_at_load(tmp_path, monkeypatch) -> None:
    msg = _load_error(tmp_path, monkeypatch, promt="typo")
    assert "unknown key 'promt'" in msg and "prompt" in msg.split("valid keys:")[1]
    folder = _spec_dir(tmp_path, monkeypatch, GOOD, {**GOOD, "description": "another"})
    with pytest.raises(TaskSpecError, match="'my_world_vqa' defined twice: in .*task0.yaml and in .*task1.yaml"):
        task_specs()
    (folder / "task1.yaml").write_text(yaml.safe_dump({**GOOD, "name": "vqav2_val"}))
    with pytest.raises(TaskSpecError, match="'vqav2_val' defined twice"):
        task_specs()
    monkeypatch.setenv(TASK_DIRS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(TaskSpecError, match="nowhere.*not a folder"):
        task_specs()


def test_the_cli_reports_a_bad_task_file_without_a_traceback(tmp_path, monkeypatch) -> None:
    from harness.cli import main

    _spec_dir(tmp_path, monkeypatch, {**GOOD, "prompt": "Q: {q} A:"})
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 1 and "unknown placeholder(s) {q}" in res.output and "Traceback" not in res.output
