"""Tasks as data: one YAML file in ``tasks/specs`` per task (dataset + prompt + metric).

A task names a dataset loader with its options, the split it evaluates, the split demonstrations
come from, the prompt template and the metric family. Nothing here switches on a dataset's name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_DIR = Path(__file__).resolve().parent / "specs"

MetricName = Literal["caption", "vqa_accuracy", "choice_accuracy", "exact_match"]


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["caption", "vqa", "multiple_choice", "binding"]
    description: str
    dataset: str
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    split: str = "test"
    support_split: str | None = "train"
    prompt: str
    metric: MetricName
    max_new_tokens: int = Field(16, ge=1)
    support_dataset: str | None = None
    """A different loader for the demonstrations (NoCaps: COCO Karpathy train); default: ``dataset``."""
    support_dataset_options: dict[str, Any] = Field(default_factory=dict)
    """Options of ``support_dataset`` (a config adds its own with ``tasks[].support_options``)."""
    support_note: str = ""
    """Why there is no support split, and where to get demonstrations (shown when shots are asked for)."""
    breakdown: Literal["scienceqa"] | None = None
    """Per-group accuracies added to the results (see tasks/metrics/breakdowns.py)."""

    def identity(self) -> dict[str, Any]:
        """The spec as it enters the task fingerprint. ``support_note`` (documentation) and
        ``breakdown`` (extra metrics over the same answers) change no answer, so they are left
        out, and fingerprints of tasks that existed before them stay as they were."""
        d = self.model_dump(mode="json")
        d.pop("support_note", None)
        d.pop("breakdown", None)
        if d.get("support_dataset") is None and not d.get("support_dataset_options"):
            d.pop("support_dataset", None)
            d.pop("support_dataset_options", None)
        return d

    def render_prompt(self, question: str = "", choices: tuple[str, ...] = (), hint: str = "") -> str:
        """Fill ``{question}``, ``{choices}`` and ``{context}`` — ``Context: <hint>`` and a line break
        when the sample has a text hint (ScienceQA's), else nothing (as lmms-eval words it)."""
        opts = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        context = f"Context: {hint.strip()}\n" if hint.strip() else ""
        return self.prompt.format(question=question, choices=opts, context=context)


class TaskSpecError(ValueError):
    pass


def _load_file(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return TaskSpec.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise TaskSpecError(f"task file {path.name}: {exc}") from exc


@lru_cache(maxsize=1)
def task_specs() -> dict[str, TaskSpec]:
    """All task specs shipped with mmbench, by name."""
    specs: dict[str, TaskSpec] = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        spec = _load_file(path)
        if spec.name in specs:
            raise TaskSpecError(f"task {spec.name!r} defined twice")
        if spec.name.lower() == "mmbench":
            raise TaskSpecError("a task may not be called 'mmbench' (that is a different benchmark)")
        specs[spec.name] = spec
    return specs


def get_task(name: str) -> TaskSpec:
    specs = task_specs()
    if name not in specs:
        raise KeyError(f"unknown task {name!r}; choices: {', '.join(specs)}")
    return specs[name]
