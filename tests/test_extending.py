"""docs/architecture.md's recipes for adding a paradigm variant and a task, followed word for word:
the code blocks are read from the page, written to a temporary folder outside the checkout, found
through the documented environment variables and run through ``plan_run`` and a tiny real run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import registry
from harness.cache import ResultCache
from harness.config import ConfigError, parse_config
from harness.models.llm import GenerationSettings
from harness.plan import plan_run
from harness.runner import Runner
from tasks.spec import TASK_DIRS_ENV

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _doc_block(lang: str, first_line_start: str) -> tuple[str, str]:
    """(file name, text) of the page's ``lang`` code block whose first line is ``# <file name> ...``."""
    for block in re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        if block.startswith(first_line_start):
            return block.split()[1], block
    raise AssertionError(f"docs/architecture.md has no {lang} block starting {first_line_start!r}")


@pytest.fixture
def plugin_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The documented variant module and task file in folders of their own, announced as the docs say."""
    registry.paradigms()  # built-ins into the real table, then work on a copy
    monkeypatch.setattr(registry, "_PARADIGMS", dict(registry._PARADIGMS))
    code_dir, task_dir = tmp_path / "my_code", tmp_path / "my_tasks"
    code_dir.mkdir()
    task_dir.mkdir()
    module_file, code = _doc_block("python", "# blind.py")
    task_file, task = _doc_block("yaml", "# world_vqa_terse.yaml")
    (code_dir / module_file).write_text(code)
    (task_dir / task_file).write_text(task)
    module = module_file.removesuffix(".py")
    monkeypatch.syspath_prepend(str(code_dir))
    monkeypatch.setenv(registry.MODULES_ENV, module)
    monkeypatch.setenv(TASK_DIRS_ENV, str(task_dir))
    yield module
    sys.modules.pop(module, None)


def test_a_documented_variant_and_task_plan_and_run(plugin_dirs, tmp_path, tiny_llm_dir, tiny_llm) -> None:
    cfg = parse_config({
        "name": "extending", "seed": 0, "limit": 3, "bootstrap": 20, "results_dir": str(tmp_path / "results"),
        "paradigms": [{"name": "text_conversion/blind", "options": {"max_new_tokens": 3}}],
        "tasks": [{"name": "world_vqa_terse", "dataset_options": {"n_images": 4}}],
        "models": {"llm": {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}},
    })
    plan = plan_run(cfg)
    assert [p.cls.__module__ for p in plan.paradigms] == [plugin_dirs]
    assert plan.paradigms[0].cls.uses == ("llm",) and plan.tasks[0].spec.prompt == "Q: {question} A:"

    runner = Runner(plan, cache=ResultCache(tmp_path / "cache.sqlite"), progress=False)
    (result,) = runner.run()
    assert result.computed == 3 and result.n_failed == 0
    settings = GenerationSettings(3, ("\n",), True, 1.0, 0)
    for row in result.rows:  # the task's template, answered by the run's LLM without the image
        assert row["prompt"] == f"Q: {row['question']} A:"
        assert row["prediction"] == tiny_llm.generate([row["prompt"]], settings)[0].text.strip()
    assert len(result.metrics.per_sample[result.metrics.primary]) == 3  # scored by the task's metric

    with pytest.raises(ConfigError, match="max_new_tokens"):  # its Options are strict like any variant's
        plan_run(parse_config({**cfg.model_dump(mode="json"),
                               "paradigms": [{"name": "text_conversion/blind", "options": {"max_new_token": 3}}]}))


def test_the_cli_lists_them_and_names_a_module_it_cannot_import(plugin_dirs, monkeypatch) -> None:
    from harness.cli import main

    out = CliRunner().invoke(main, ["list"])
    assert out.exit_code == 0, out.output
    assert "text_conversion/blind" in out.output and "world_vqa_terse" in out.output
    monkeypatch.setenv(registry.MODULES_ENV, f"{plugin_dirs}, no_such_module_here")
    out = CliRunner().invoke(main, ["list"])
    assert out.exit_code == 1 and registry.MODULES_ENV in out.output and "'no_such_module_here'" in out.output
    assert "Traceback" not in out.output
