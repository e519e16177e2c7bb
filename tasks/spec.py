"""Tasks as data: one YAML file per task (dataset + prompt + metric).

A task names a dataset loader with its options, the split it evaluates, the split demonstrations
come from, the prompt template and the metric family. Nothing here switches on a dataset's name.

The shipped tasks are the files in ``tasks/specs``; folders listed in the environment variable
``MMBENCH_TASK_DIRS`` (separated by ``os.pathsep``, ``:`` on Linux) add theirs, so a task can be
added without editing the checkout. Every file is checked when it loads: unknown keys, a prompt
placeholder the harness does not fill, a metric that does not fit the task kind stop with the file,
the key and the valid choices.
"""

from __future__ import annotations

import os
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPEC_DIR = Path(__file__).resolve().parent / "specs"
#: Environment variable naming extra folders of task YAML files (``os.pathsep``-separated).
TASK_DIRS_ENV = "MMBENCH_TASK_DIRS"

TaskKind = Literal["caption", "vqa", "multiple_choice", "binding"]
MetricName = Literal["caption", "vqa_accuracy", "choice_accuracy", "exact_match"]

#: The metrics (``tasks.metrics.METRICS``) that can score each task kind's answers.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "caption": ("caption",),
    "vqa": ("vqa_accuracy", "exact_match"),
    "multiple_choice": ("choice_accuracy",),
    "binding": ("exact_match",),
}
#: The placeholders :meth:`TaskSpec.render_prompt` fills.
PROMPT_PLACEHOLDERS: tuple[str, ...] = ("question", "choices", "context")
#: Placeholders a kind's prompt must contain, or the model never sees the question / the options.
REQUIRED_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "vqa": ("question",),
    "multiple_choice": ("question", "choices"),
}


def prompt_placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of a prompt template (``ValueError`` if it is not a valid template)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: TaskKind
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

    @field_validator("prompt")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        valid = ", ".join("{" + p + "}" for p in PROMPT_PLACEHOLDERS)
        try:
            names = prompt_placeholders(v)
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
        unknown = [n for n in names if n not in PROMPT_PLACEHOLDERS]
        if unknown:
            shown = ", ".join("{" + n + "}" for n in dict.fromkeys(unknown))
            raise ValueError(f"unknown placeholder(s) {shown}; valid placeholders: {valid}")
        if any(spec or conv for _, n, spec, conv in string.Formatter().parse(v) if n is not None):
            raise ValueError(f"placeholders take no conversion or format spec; valid placeholders: {valid}")
        return v

    @model_validator(mode="after")
    def _fits_kind(self) -> "TaskSpec":
        valid = KIND_METRICS[self.kind]
        if self.metric not in valid:
            raise ValueError(f"key 'metric': {self.metric!r} cannot score a {self.kind} task; "
                             f"valid metrics for {self.kind}: {', '.join(valid)}")
        missing = [p for p in REQUIRED_PLACEHOLDERS.get(self.kind, ()) if p not in prompt_placeholders(self.prompt)]
        if missing:
            raise ValueError(f"key 'prompt': a {self.kind} prompt must contain "
                             f"{', '.join('{' + m + '}' for m in missing)} (else the model never sees it)")
        return self

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
    """A task file that cannot be used, named with its path and the problem."""


def _load_file(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TaskSpecError(f"task file {path}: not valid UTF-8 YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskSpecError(f"task file {path}: must hold a mapping of keys (name, kind, dataset, prompt, metric, ...)")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise TaskSpecError("\n".join(f"task file {path}: {m}" for m in _problems(exc))) from None


def _problems(exc: ValidationError) -> list[str]:
    """One line per problem, naming the key (and the valid keys or choices pydantic reports)."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        if err["type"] == "extra_forbidden":
            out.append(f"unknown key '{loc}'; valid keys: {', '.join(TaskSpec.model_fields)}")
        elif loc:
            out.append(f"key '{loc}': {msg}")
        else:
            out.append(msg)
    return out


def task_dirs() -> tuple[Path, ...]:
    """The shipped ``tasks/specs`` folder, then every folder named in ``MMBENCH_TASK_DIRS``."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(TASK_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    for d in extra:
        if not d.is_dir():
            raise TaskSpecError(f"{TASK_DIRS_ENV} names {str(d)!r}, which is not a folder")
    return (SPEC_DIR, *dict.fromkeys(d for d in extra if d != SPEC_DIR))


def task_specs() -> dict[str, TaskSpec]:
    """Every task (shipped and from ``MMBENCH_TASK_DIRS``), by name; each file checked as it loads."""
    return dict(_load_dirs(task_dirs()))


@lru_cache(maxsize=4)
def _load_dirs(dirs: tuple[Path, ...]) -> tuple[tuple[str, TaskSpec], ...]:
    specs: dict[str, TaskSpec] = {}
    where: dict[str, Path] = {}
    for folder in dirs:
        for path in sorted(folder.glob("*.yaml")):
            spec = _load_file(path)
            if spec.name in specs:
                raise TaskSpecError(f"task {spec.name!r} defined twice: in {where[spec.name]} and in {path}")
            if spec.name.lower() == "mmbench":
                raise TaskSpecError(f"task file {path}: a task may not be called 'mmbench' (that is a different benchmark)")
            specs[spec.name], where[spec.name] = spec, path
    return tuple(specs.items())


def get_task(name: str) -> TaskSpec:
    specs = task_specs()
    if name not in specs:
        raise KeyError(f"unknown task {name!r}; choices: {', '.join(specs)} "
                       f"(tasks outside tasks/specs: set {TASK_DIRS_ENV})")
    return specs[name]
