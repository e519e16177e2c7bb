"""Planning a run: every name, option and dataset index resolved before any model loads.

:func:`plan_run` turns a :class:`~harness.config.RunConfig` into a :class:`Plan` of
(paradigm × task × shots × trial) :class:`Unit` s; any problem raises
:class:`~harness.config.ConfigError`, so a bad config stops with non-zero exit before compute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.config import ConfigError, ParadigmSpec, RunConfig, format_validation_error, repo_root, stable_hash
from harness.interface import Paradigm
from harness.registry import FAMILIES, paradigms
from tasks.base import Dataset, Sample
from tasks.spec import TaskSpec, task_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedTask:
    spec: TaskSpec
    dataset: Dataset
    support: Dataset | None
    fingerprint: str
    options: dict[str, Any] = field(default_factory=dict)  # resolved dataset options (paths absolute)
    shots: tuple[int, ...] | None = None  # per-task override of in_context.shots
    annotations: str = ""  # digest of every sample's annotation content (query and support splits)


@dataclass(frozen=True)
class PlannedParadigm:
    spec: ParadigmSpec
    cls: type[Paradigm]
    options: Any

    @property
    def label(self) -> str:
        return self.spec.display


@dataclass(frozen=True)
class Unit:
    paradigm: PlannedParadigm
    task: PlannedTask
    shots: int
    trial: int

    @property
    def name(self) -> str:
        return f"{self.paradigm.label} | {self.task.spec.name} | {self.shots}-shot | trial {self.trial}"


@dataclass
class Plan:
    config: RunConfig
    paradigms: list[PlannedParadigm]
    tasks: list[PlannedTask]

    def units(self) -> list[Unit]:
        out = []
        for task in self.tasks:
            for p in self.paradigms:
                for k in shot_counts(task, self.config):
                    trials = self.config.in_context.trials if k > 0 else 1
                    for t in range(trials):
                        out.append(Unit(p, task, k, t))
        return out


def shot_counts(task: PlannedTask, config: RunConfig) -> list[int]:
    """Binding episodes carry their own demonstrations; other kinds use the configured k values."""
    if task.spec.kind == "binding":
        return [0]
    if task.support is None:
        return [0]
    return list(task.shots if task.shots is not None else config.in_context.shots)


def select_paradigms(config: RunConfig, wanted: Sequence[str] | None) -> list[ParadigmSpec]:
    """``wanted``: None/['all'] = the config's list; a family name = that family's variants."""
    table = paradigms()
    specs = list(config.paradigms)
    if not wanted or list(wanted) == ["all"]:
        return specs
    chosen: list[ParadigmSpec] = []
    for w in wanted:
        if w in FAMILIES:
            fam = [s for s in specs if s.family == w]
            chosen += fam or [ParadigmSpec(name=n) for n in table if n.startswith(w + "/")]
        elif w in table:
            chosen += [s for s in specs if s.name == w] or [ParadigmSpec(name=w)]
        else:
            raise ConfigError(
                f"unknown paradigm {w!r} for --paradigm; choices: all, {', '.join(FAMILIES)}, {', '.join(table)}"
            )
    return chosen


def plan_run(
    config: RunConfig,
    paradigm_filter: Sequence[str] | None = None,
    task_filter: Sequence[str] | None = None,
) -> Plan:
    """Resolve and validate everything that can be checked without loading a model."""
    from pydantic import ValidationError

    table = paradigms()
    planned: list[PlannedParadigm] = []
    for i, spec in enumerate(select_paradigms(config, paradigm_filter)):
        if spec.name not in table:
            raise ConfigError(f"config key 'paradigms[{i}].name': unknown paradigm {spec.name!r}; choices: {', '.join(table)}")
        cls = table[spec.name]
        try:
            opts = cls.Options.model_validate(spec.options)
        except ValidationError as exc:
            msg = format_validation_error(exc, cls.Options).replace("config key '", f"config key 'paradigms[{i}].options.")
            raise ConfigError(msg) from None
        planned.append(PlannedParadigm(spec, cls, opts))
    if config.models.llm.source == "openai":
        from harness.models.served_llm import served_llm_refusal

        for i, p in enumerate(planned):
            why = served_llm_refusal(p.spec.family, p.cls.uses)
            if why:
                raise ConfigError(f"config key 'paradigms[{i}]' ({p.spec.name}) cannot use models.llm.source: openai: {why}")
    labels = [p.label for p in planned]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"paradigm labels must be unique; got {labels} (set 'label' to tell variants apart)")

    refs = list(config.tasks)
    known = task_specs()
    if task_filter:
        by_name = {r.name: r for r in refs}
        from harness.config import TaskRef

        refs = [by_name.get(n) or TaskRef(name=n) for n in task_filter]
    tasks = []
    for i, ref in enumerate(refs):
        if ref.name not in known:
            raise ConfigError(f"config key 'tasks[{i}].name': unknown task {ref.name!r}; choices: {', '.join(known)}")
        tasks.append(_plan_task(known[ref.name], ref.dataset_options, ref.limit or config.limit, config, ref.shots,
                                ref.support_options))
    if not planned:
        raise ConfigError("no paradigm selected")
    if not tasks:
        raise ConfigError("no task selected")
    return Plan(config, planned, tasks)


def _resolve_paths(options: dict[str, Any]) -> dict[str, Any]:
    """Relative ``root`` options are read from the working directory, else the mmbench checkout."""
    out = dict(options)
    root = out.get("root")
    if isinstance(root, str) and not Path(root).is_absolute() and not Path(root).exists():
        candidate = repo_root() / root
        if candidate.exists():
            out["root"] = str(candidate)
    return out


def spread_subset(samples: Sequence[Sample], n: int) -> tuple[Sample, ...]:
    """``n`` samples evenly spaced through the split (deterministic, independent of the seed).

    Datasets list several questions per image next to each other; the first ``n`` would often all
    be about one image, so a small ``--limit`` takes every (len/n)-th sample instead.
    """
    step = len(samples) / n
    return tuple(samples[int(i * step)] for i in range(n))


def _no_support_hint(spec: TaskSpec) -> str:
    return f": {spec.support_note}" if spec.support_note else ""


def _plan_task(
    spec: TaskSpec, overrides: dict[str, Any], limit: int | None, config: RunConfig, shots: tuple[int, ...] | None = None,
    support_overrides: dict[str, Any] | None = None,
) -> PlannedTask:
    from tasks.datasets import load_dataset

    options = _resolve_paths({**spec.dataset_options, **overrides})
    if support_overrides and spec.support_dataset is None:
        raise ConfigError(f"task {spec.name!r} draws demonstrations from its own dataset; set dataset_options, not support_options")
    asked = max(shots if shots is not None else config.in_context.shots, default=0)
    if spec.kind != "binding" and asked > 0 and spec.support_split is None:
        raise ConfigError(
            f"task {spec.name!r} has no support split, so it cannot be run with {asked} shots; "
            f"set shots to 0 for it (tasks[].shots) or use a task with demonstrations "
            f"(see docs/datasets.md){_no_support_hint(spec)}"
        )
    support_loader, support_options = spec.dataset, options
    if spec.support_dataset is not None:  # demonstrations from another dataset: loaded only when asked for
        support_loader = spec.support_dataset
        support_options = _resolve_paths({**spec.support_dataset_options, **(support_overrides or {})})
    load_support = spec.support_split is not None and (spec.support_dataset is None or asked > 0)
    try:
        ds = load_dataset(spec.dataset, spec.split, options)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"task {spec.name!r}: cannot load dataset {spec.dataset!r}: {exc}") from None
    try:
        support = load_dataset(support_loader, spec.support_split, support_options) if load_support else None
    except (ValueError, OSError, KeyError) as exc:
        if asked == 0:  # not needed at 0 shots (e.g. only the val files of VQAv2 are on disk)
            log.info("task %s: demonstrations not loaded (%s); not needed at 0 shots", spec.name, exc)
            support = None
        else:
            where = "tasks[].support_options" if spec.support_dataset else "dataset_options"
            raise ConfigError(
                f"task {spec.name!r}: cannot load its demonstrations ({support_loader!r} split {spec.support_split!r}; "
                f"set {where}): {exc}"
            ) from None
    if len(ds) == 0:
        raise ConfigError(f"task {spec.name!r}: dataset {spec.dataset!r} split {spec.split!r} has zero samples")
    ids = [s.sample_id for s in ds.samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"task {spec.name!r}: duplicate sample ids in the dataset: {dup}")
    if limit and limit < len(ds):
        ds = Dataset(ds.name, ds.split, ds.source, spread_subset(ds.samples, limit), ds.license)
    max_k = max(shots if shots is not None else config.in_context.shots, default=0)
    if spec.kind != "binding" and max_k > 0 and config.in_context.strategy == "rices_qi" and spec.kind == "caption":
        raise ConfigError(
            f"in_context.strategy 'rices_qi' compares questions, but task {spec.name!r} is captioning; "
            "use 'rices' or 'random'"
        )
    if spec.kind != "binding" and max_k > 0 and support is not None and max_k > len(support):
        raise ConfigError(
            f"in_context.shots asks for {max_k} demonstrations but task {spec.name!r} has only "
            f"{len(support)} support samples (split {spec.support_split!r})"
        )
    # The fingerprint identifies the task's definition; the content of its annotation files is in
    # ``annotations`` (metric memo, shot memo, logged) and per sample in each answer's key, so a fix
    # to one sample's annotation recomputes that sample's answer only.
    annotations = stable_hash(
        [[s.sample_id, s.annotation_digest()] for s in ds.samples]
        + [[s.sample_id, s.annotation_digest()] for s in (support.samples if support else ())],
        n=20,
    )
    fp = stable_hash(
        {
            "task": spec.identity(),
            "options": options,
            "source": ds.source,
            "split": ds.split,
            "support": support.source if support else None,
            **({"support_options": support_options} if spec.support_dataset is not None and support else {}),
        }
    )
    return PlannedTask(spec, ds, support, fp, options, shots, annotations)
