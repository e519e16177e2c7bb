"""``mmbench run`` end to end: plan, open cache and tracking, run units, log, summarise."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from harness.cache import ResultCache
from harness.config import RunConfig
from harness.report import results_frame, results_table
from harness.runner import Plan, Runner, UnitResult, plan_run
from harness.tracking import Tracker, default_tracking_uri, git_state, hardware, package_versions

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    config_hash: str
    results: list[UnitResult]
    parent_run_id: str | None
    summary_dir: Path
    table: str
    computed: int = 0
    cached: int = 0
    loaded: tuple[str, ...] = ()


def reproducibility(config: RunConfig, runner: Runner) -> dict[str, Any]:
    return {
        "config_hash": config.config_hash(),
        "seed": config.seed,
        "packages": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "fingerprints": runner.fingerprints(),
    }


def _unit_params(r: UnitResult, config_hash: str) -> dict[str, Any]:
    u = r.unit
    ds = u.task.dataset
    return {
        "paradigm": u.paradigm.label,
        "paradigm_name": u.paradigm.spec.name,
        "family": u.paradigm.cls.family,
        "variant": u.paradigm.cls.variant,
        "task": u.task.spec.name,
        "task_kind": u.task.spec.kind,
        "metric_family": u.task.spec.metric,
        "shots": u.shots,
        "trial": u.trial,
        "dataset": ds.name,
        "dataset_split": ds.split,
        "dataset_loader": u.task.spec.dataset,
        "dataset_options": u.task.options,
        "dataset_source": ds.source,
        "dataset_size": len(ds),
        "dataset_license": ds.license,
        "support_size": len(u.task.support) if u.task.support else 0,
        "prompt_template": u.task.spec.prompt,
        "paradigm_options": u.paradigm.options.model_dump(mode="json"),
        "config_hash": config_hash,
    }


def _unit_metrics(r: UnitResult) -> dict[str, float]:
    m: dict[str, float] = {}
    for k, v in r.metrics.values.items():
        m[k] = v
        if k in r.metrics.ci:
            lo, hi = r.metrics.ci[k]
            m[f"{k}_ci_low"], m[f"{k}_ci_high"] = lo, hi
    m.update(r.costs)
    m["n_computed"] = float(r.computed)
    m["n_cached"] = float(r.cached)
    return m


def _unit_tags(r: UnitResult) -> dict[str, str]:
    u = r.unit
    return {
        "mmbench.paradigm": u.paradigm.label,
        "mmbench.family": u.paradigm.cls.family,
        "mmbench.variant": u.paradigm.cls.variant,
        "mmbench.task": u.task.spec.name,
        "mmbench.shots": str(u.shots),
        "mmbench.trial": str(u.trial),
        "mmbench.primary_metric": r.metrics.primary,
        "mmbench.unavailable_metrics": json.dumps(dict(r.metrics.unavailable)),
    }


def distributed_context() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch; initialises the process group."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def run_evaluation(
    config: RunConfig,
    *,
    paradigm_filter: Sequence[str] | None = None,
    task_filter: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    plan: Plan | None = None,
) -> RunOutcome:
    plan = plan or plan_run(config, paradigm_filter, task_filter)
    rank, world = distributed_context()
    results_dir = Path(config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    config_hash = config.config_hash()
    cache = ResultCache(results_dir / "cache.sqlite")
    if rank != 0:
        # Workers only compute their shard into the shared cache; rank 0 scores and logs.
        runner = Runner(plan, cache=cache, progress=False, shard=(rank, world))
        try:
            runner.run()
        finally:
            cache.close()
        return RunOutcome(config_hash, [], None, results_dir, "", loaded=tuple(runner.backbones.loaded()))
    tracker = Tracker(
        uri=tracking_uri or config.tracking.uri or default_tracking_uri(results_dir),
        experiment=config.tracking.experiment,
        artifact_root=results_dir / "mlartifacts",
    )
    results: list[UnitResult] = []

    def log_unit(r: UnitResult) -> None:
        results.append(r)
        child = tracker.start_child(parent, r.unit.name, _unit_tags(r))
        tracker.log_params(child, _unit_params(r, config_hash))
        tracker.log_metrics(child, _unit_metrics(r))
        tracker.log_json(child, {"unavailable": dict(r.metrics.unavailable), "ci": {k: list(v) for k, v in r.metrics.ci.items()}}, "metrics_detail.json")
        tracker.log_table(child, r.rows, "predictions.jsonl")
        tracker.end(child)

    runner = Runner(plan, cache=cache, progress=progress, on_unit=log_unit, shard=(rank, world))
    repro = reproducibility(config, runner)
    repro["world_size"] = world
    parent = tracker.start_parent(
        f"{config.name}-{config_hash[:8]}",
        params={
            "config_hash": config_hash,
            "seed": config.seed,
            "paradigms": [p.label for p in plan.paradigms],
            "tasks": [t.spec.name for t in plan.tasks],
            "shots": list(config.in_context.shots),
            "git_commit": repro["git"]["commit"],
            "world_size": world,
        },
        tags={"mmbench.kind": "run", "mmbench.config_hash": config_hash},
    )
    tracker.log_text(parent, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")
    tracker.log_json(parent, repro, "reproducibility.json")
    status = "FAILED"
    try:
        runner.run()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        n = cache.count()
        print(
            f"\nInterrupted. {n} answers are safe in {cache.path}; run the same command again to resume.",
            file=sys.stderr,
        )
        raise
    finally:
        summary_dir = results_dir / "runs" / config_hash
        summary_dir.mkdir(parents=True, exist_ok=True)
        table = results_table(results)
        frame = results_frame(results)
        if results:
            frame.to_csv(summary_dir / "results.csv", index=False)
            (summary_dir / "results.md").write_text(table + "\n", encoding="utf-8")
            (summary_dir / "reproducibility.json").write_text(json.dumps(repro, indent=1, sort_keys=True))
            tracker.log_text(parent, table + "\n", "results.md")
            tracker.log_text(parent, frame.to_csv(index=False), "results.csv")
        tracker.end(parent, status)
        cache.close()
    return RunOutcome(
        config_hash, results, parent, summary_dir, table,
        computed=sum(r.computed for r in results), cached=sum(r.cached for r in results),
        loaded=tuple(runner.backbones.loaded()),
    )
