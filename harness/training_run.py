"""``mmbench train``: train one connector with a suite's models and options, logged to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import ConfigError, ParadigmSpec, RunConfig
from harness.interface import Paradigm
from harness.tracking import Tracker, default_tracking_uri

if TYPE_CHECKING:  # pragma: no cover
    from harness.training import TrainResult


class TrainingError(RuntimeError):
    pass


def _spec_for(config: RunConfig, name: str, steps: int | None) -> ParadigmSpec:
    spec = next((p for p in config.paradigms if p.name == name), ParadigmSpec(name=name))
    if steps is None:
        return spec
    opts = dict(spec.options)
    opts["train"] = {**dict(opts.get("train", {})), "steps": steps}
    return ParadigmSpec(name=spec.name, options=opts, label=spec.label)


def log_training(tracker: Tracker, parent: str | None, label: str, paradigm: Paradigm) -> str | None:
    """A nested run with the loss curve, trainable parameters and training time, if it trained."""
    record = paradigm.training_record()
    if record is None or not record.result.loss_curve:  # untrained baselines have nothing to log
        return None
    result = record.result
    tags = {"mmbench.kind": "training", "mmbench.paradigm": label}
    run = tracker.start_child(parent, f"train {label}", tags) if parent else tracker.start_parent(f"train {label}", {}, tags)
    tracker.log_params(run, {
        "paradigm": label,
        "options": paradigm.options.model_dump(mode="json"),
        "checkpoint": str(record.checkpoint),
        "resumed_from": result.resumed_from,
    })
    tracker.log_series(run, "train_loss", result.loss_curve)
    _log_parts(tracker, run, "train", result)
    tracker.log_metrics(run, {"trainable_params": float(result.trainable_params), "train_seconds": result.seconds,
                              "train_steps": float(result.steps)})
    stage1 = record.stage1  # BLIP-2's stage 1, when it ran before this training
    if stage1 is not None and stage1.loss_curve:
        tracker.log_params(run, {"stage1_checkpoint": str(record.stage1_checkpoint),
                                 "stage1_resumed_from": stage1.resumed_from})
        tracker.log_series(run, "stage1_loss", stage1.loss_curve)
        _log_parts(tracker, run, "stage1", stage1)
        tracker.log_metrics(run, {"stage1_trainable_params": float(stage1.trainable_params),
                                  "stage1_seconds": stage1.seconds, "stage1_steps": float(stage1.steps)})
    tracker.end(run)
    return run


def _log_parts(tracker: Tracker, run: str, prefix: str, result: TrainResult) -> None:
    """Curves of a loss's named parts (e.g. ``stage1_itc``), kept by the training loop beside the total."""
    for name, curve in dict(result.extra.get("parts_curve", {})).items():
        tracker.log_series(run, f"{prefix}_{name}", curve)


def run_training(config: RunConfig, name: str, *, steps: int | None = None, tracking_uri: str | None = None) -> str:
    from harness.backbones import Backbones
    from harness.plan import plan_run

    plan = plan_run(config.model_copy(update={"paradigms": (_spec_for(config, name, steps),)}), [name], None)
    planned = plan.paradigms[0]
    if not planned.cls.has_training_step:
        raise TrainingError(f"{name} has no training step")
    from harness.models.llm import GenerationSettings

    paradigm = planned.cls(Backbones(config.models), planned.options, GenerationSettings())
    paradigm.prepare()
    results_dir = Path(config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(tracking_uri or config.tracking.uri or default_tracking_uri(results_dir),
                      config.tracking.experiment, results_dir / "mlartifacts")
    run = log_training(tracker, None, planned.label, paradigm)
    record = paradigm.training_record()
    if record is None or not record.result.loss_curve:
        return f"{name}: nothing trained (train.steps is 0: the untrained connector is evaluated as initialised)"
    r, s1 = record.result, record.stage1
    before = ""
    if s1 is not None and s1.loss_curve:
        parts = ", ".join(f"{k} {c[-1][1]:.3f}" for k, c in dict(s1.extra.get("parts_curve", {})).items())
        before = (f"stage 1: {s1.trainable_params:,} parameters, {s1.steps} steps, final loss {s1.loss_curve[-1][1]:.3f}"
                  f"{' (' + parts + ')' if parts else ''}, {s1.seconds:.0f} s; checkpoint {record.stage1_checkpoint}\n")
    return (f"{before}{name}: {r.trainable_params:,} trainable parameters, {r.steps} steps, "
            f"final loss {r.loss_curve[-1][1]:.3f}, {r.seconds:.0f} s; checkpoint {record.checkpoint}; "
            f"MLflow run {run}")


__all__ = ["ConfigError", "TrainingError", "log_training", "run_training"]
