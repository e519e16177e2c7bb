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
from harness.distributed import Distributed
from harness.placement import check_placement
from harness.report import results_frame, results_table
from harness.plan import Plan, plan_run
from harness.runner import Runner
from harness.unit_result import UnitResult
from harness.atomic import atomic_json, atomic_text, remove_stale_temps
from harness.tracking import (
    Tracker, TrackingError, backbone_params, default_tracking_uri, git_state, hardware, package_versions, redact_uri,
    redact_uris, summary_metrics,
)

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
    timings: dict[str, float] | None = None
    tracking_error: str | None = None
    """Set when MLflow logging failed mid-run: every answer is cached, but the store is incomplete."""


class _GuardedTracking:
    """Tracking calls that cannot stop the compute: the first failure is kept, later calls skipped.

    The tracking store is a mirror of the result cache, not where answers live; if it goes away
    mid-run the remaining units are still computed and cached, and a rerun logs them all.
    """

    def __init__(self) -> None:
        self.error: str | None = None

    def __call__(self, what: str, fn: Any, *args: Any) -> Any:
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any store failure: keep computing, report at the end
            self.error = f"{what}: {type(exc).__name__}: {exc}"
            log.error("MLflow logging failed (%s); computing continues, answers stay in the cache", self.error)
            return None


def reproducibility(config: RunConfig, runner: Runner) -> dict[str, Any]:
    return {
        "config_hash": config.config_hash(),
        "seed": config.seed,
        "packages": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "fingerprints": runner.fingerprints(),
    }


def _run_vqa_mode() -> str:
    from tasks.metrics import RUN_VQA_MODE

    return RUN_VQA_MODE


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
        **({"vqa_mode": _run_vqa_mode()} if u.task.spec.metric == "vqa_accuracy" else {}),
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
        "task_fingerprint": u.task.fingerprint,
        # Logged on every unit (the explorer reloads demonstrations from it); "" where there is none.
        "support_split": u.task.spec.support_split or "",
        "support_source": u.task.support.source if u.shots > 0 and u.task.support else "",
        "shot_strategy": r.shot_strategy or "",
        "prompt_template": u.task.spec.prompt,
        "paradigm_options": u.paradigm.options.model_dump(mode="json"),
        "config_hash": config_hash,
    }


def _perception(runner: Runner, r: UnitResult) -> dict[str, Any]:
    """``perception`` (oracle / experts / packaged) and ``experts`` (name=kind:model; ...) of paradigms
    that read vision experts, so a report can tell an oracle run from a real one."""
    setup = getattr(runner.instance(r.unit.paradigm), "perception_setup", None)
    return setup() if setup is not None else {}


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


def resource_usage(computed: int, model_seconds: float) -> dict[str, float | int | None]:
    """Peak memory of this process and model throughput, for the cost columns people compare."""
    import resource

    import torch

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
    return {
        "samples_computed": computed,
        "model_seconds": model_seconds,
        "samples_per_model_second": computed / model_seconds if model_seconds > 0 else None,
        "peak_rss_mb": peak_kb / 1024,
        "cuda_peak_allocated_mb": cuda_peak,
    }


def run_evaluation(
    config: RunConfig,
    *,
    paradigm_filter: Sequence[str] | None = None,
    task_filter: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    plan: Plan | None = None,
    retry_failed: bool = False,
) -> RunOutcome:
    """Run ``plan``; ``retry_failed`` recomputes answers cached as failed (``mmbench run --retry-failed``)."""
    plan = plan or plan_run(config, paradigm_filter, task_filter)
    check_placement(plan)  # device_map vs data-parallel ranks: refused before anything starts
    dist = Distributed.from_env()
    try:
        return _run(config, plan, dist, tracking_uri, progress, retry_failed)
    finally:
        dist.close()


def _run(config: RunConfig, plan: Plan, dist: Distributed, tracking_uri: str | None, progress: bool,
         retry_failed: bool) -> RunOutcome:
    rank, world = dist.rank, dist.world
    results_dir = Path(config.results_dir)
    if rank == 0:
        results_dir.mkdir(parents=True, exist_ok=True)
        from harness.models.llm import default_cache_dir

        remove_stale_temps(results_dir)
        remove_stale_temps(default_cache_dir())
    config_hash = config.config_hash()
    if rank != 0:
        # Workers compute their share of what rank 0's cache lacks and send it to rank 0, which alone
        # caches, scores and logs: a worker writes nothing under the results folder (its memo of shot
        # selections lives in memory for the run), so no file system is shared between ranks.
        with ResultCache(":memory:") as memo:
            runner = Runner(plan, cache=memo, progress=False, dist=dist, retry_failed=retry_failed)
            runner.run()
        return RunOutcome(config_hash, [], None, results_dir, "", loaded=tuple(runner.backbones.loaded()))
    cache = ResultCache(results_dir / "cache.sqlite")
    try:
        tracker = Tracker(
            uri=tracking_uri or config.tracking.uri or default_tracking_uri(results_dir),
            experiment=config.tracking.experiment,
            artifact_root=results_dir / "mlartifacts",
        )
        reaped = tracker.reap_zombies()
    except TrackingError:
        cache.close()
        raise
    except Exception as exc:  # noqa: BLE001 - the store was reachable a moment ago; fail before compute
        cache.close()
        raise TrackingError(f"MLflow tracking store {redact_uri(tracker.uri)!r} failed: {type(exc).__name__}: "
                            f"{redact_uri(str(exc))}") from None
    if reaped:
        log.warning("marked %d MLflow run(s) left RUNNING by a killed mmbench process as KILLED", len(reaped))
    results: list[UnitResult] = []
    guard = _GuardedTracking()

    def _log_child(r: UnitResult) -> None:
        child = tracker.start_child(parent, r.unit.name, _unit_tags(r), int(r.started_s * 1000) or None)
        opts = r.unit.paradigm.options.model_dump(mode="json")
        tracker.log_params(child, {**_unit_params(r, config_hash),
                                   **backbone_params(config.models, r.unit.paradigm.cls.uses, repro["fingerprints"], opts),
                                   **_perception(runner, r)})
        tracker.log_metrics(child, _unit_metrics(r))
        tracker.log_json(child, {"unavailable": dict(r.metrics.unavailable), "ci": {k: list(v) for k, v in r.metrics.ci.items()}}, "metrics_detail.json")
        tracker.log_table(child, r.rows, "predictions.jsonl")
        tracker.end(child, end_ms=int(r.ended_s * 1000) or None)

    def log_unit(r: UnitResult) -> None:
        results.append(r)
        guard(f"logging unit {r.unit.name!r}", _log_child, r)

    def log_prepared(label: str, paradigm: object) -> None:
        from harness.training_run import log_training

        guard(f"logging training of {label!r}", log_training, tracker, parent, label, paradigm)

    runner = Runner(plan, cache=cache, progress=progress, on_unit=log_unit, on_prepared=log_prepared, dist=dist,
                    retry_failed=retry_failed)
    repro = reproducibility(config, runner)
    repro["world_size"] = world
    try:
        parent = _start_parent(tracker, config, config_hash, plan, repro, world)
    except Exception as exc:  # noqa: BLE001 - before compute: stop with the store's message
        cache.close()
        raise TrackingError(f"MLflow tracking store {redact_uri(tracker.uri)!r} failed: {type(exc).__name__}: "
                            f"{redact_uri(str(exc))}") from None
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
        summary_dir = run_folder(results_dir, config_hash)
        table = results_table(results)
        frame = results_frame(results)
        if results:
            atomic_text(frame.to_csv(index=False), summary_dir / "results.csv")
            atomic_text(table + "\n", summary_dir / "results.md")
            atomic_text(json.dumps(repro, indent=1, sort_keys=True), summary_dir / "reproducibility.json")
            timings = {**runner.watch.seconds, "overhead_fraction_of_model": runner.watch.overhead_fraction()}
            atomic_text(json.dumps(timings, indent=1, sort_keys=True), summary_dir / "timings.json")
            guard("logging timings", tracker.log_metrics, parent, {f"seconds_{k}": v for k, v in timings.items()})
            usage = resource_usage(sum(r.computed for r in results), runner.watch.seconds.get("model", 0.0))
            atomic_json(usage, summary_dir / "resources.json")
            point_latest(summary_dir)
            guard("logging resources", tracker.log_metrics, parent,
                  {k: v for k, v in usage.items() if isinstance(v, (int, float))})
            served = getattr(runner.backbones.__dict__.get("llm"), "stats", None)  # a served LLM's calls
            if served is not None:
                guard("logging served-LLM calls", tracker.log_metrics, parent,
                      served.as_metrics(sum(r.computed for r in results)))
            guard("logging summary metrics", tracker.log_metrics, parent, summary_metrics(frame))
            guard("logging results.md", tracker.log_text, parent, table + "\n", "results.md")
            guard("logging results.csv", tracker.log_text, parent, frame.to_csv(index=False), "results.csv")
        guard("ending the parent run", tracker.end, parent, status if guard.error is None else "FAILED")
        cache.close()
        _report_failures(results)
    return RunOutcome(
        config_hash, results, parent, summary_dir, table,
        computed=sum(r.computed for r in results), cached=sum(r.cached for r in results),
        loaded=tuple(runner.backbones.loaded()), tracking_error=guard.error, timings=dict(runner.watch.seconds),
    )


def run_folder(results_dir: Path, config_hash: str) -> Path:
    """``runs/<UTC time>-<config hash>-<pid>/``: one folder per run, never shared with another run."""
    import os
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = results_dir / "runs" / f"{stamp}-{config_hash[:12]}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def point_latest(run_dir: Path) -> None:
    """``runs/latest`` -> the run's folder (a relative link, so a copied results folder keeps it)."""
    import os

    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f"latest.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError as exc:  # no symlinks on this file system: the folder names sort by time instead
        log.warning("cannot point %s at %s: %s", link, run_dir.name, exc)


def _report_failures(results: Sequence[UnitResult], per_unit: int = 10) -> None:
    """Name the failed samples and why on stderr: a count in the table alone hides bad data."""
    for r in results:
        failed = [row for row in r.rows if row["error"]]
        if not failed:
            continue
        lines = [f"  {row['sample_id']}: {row['error']}"
                 + ("  [transient: not cached, the next run retries it]" if row.get("transient") else "")
                 for row in failed[:per_unit]]
        more = f"\n  ... and {len(failed) - per_unit} more (see predictions.jsonl)" if len(failed) > per_unit else ""
        print(f"{r.unit.name}: {len(failed)} of {len(r.rows)} samples failed (scored as wrong):\n"
              + "\n".join(lines) + more, file=sys.stderr)


def _start_parent(tracker: Tracker, config: RunConfig, config_hash: str, plan: Plan, repro: dict[str, Any], world: int) -> str:
    """Open the run's parent MLflow run and log its config; any failure here happens before compute."""
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
    tracker.log_text(parent, yaml.safe_dump(redact_uris(config.model_dump(mode="json")), sort_keys=False), "config.yaml")
    tracker.log_json(parent, repro, "reproducibility.json")
    return parent
