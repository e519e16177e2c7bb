"""Training is a Paradigm method: ``training_record()`` says what ``prepare`` trained, and
``has_training_step`` which variants ``mmbench train`` may run; MLflow logs the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from harness.config import parse_config
from harness.interface import Paradigm, TrainingRecord
from harness.registry import paradigms
from harness.tracking import Tracker, default_tracking_uri
from harness.training import TrainResult
from harness.training_run import TrainingError, log_training, run_training


def test_variants_that_train_are_the_connectors_with_a_training_step():
    trains = {n for n, cls in paradigms().items() if cls.has_training_step}
    assert trains == {n for n, cls in paradigms().items() if hasattr(cls, "prepare_with")}  # the old probe
    assert {"trained_adapter/frozen", "trained_adapter/blip2"} <= trains
    assert not any(n.startswith(("tool_agent/", "text_conversion/", "guided_decoding/")) for n in trains)


def test_train_refuses_a_variant_without_a_training_step_before_any_work(tmp_path: Path):
    cfg = parse_config({"name": "t", "results_dir": str(tmp_path / "results"),
                        "paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "photos_vqa"}]})
    with pytest.raises(TrainingError, match="text_conversion/pica has no training step"):
        run_training(cfg, "text_conversion/pica")
    assert not (tmp_path / "results").exists()


class _Opts(BaseModel):
    lr: float = 0.1


class _Trained(Paradigm):
    family, variant, Options = "trained_adapter", "record_test", _Opts

    def __init__(self, record: TrainingRecord | None) -> None:
        self.options, self._record = _Opts(), record

    def training_record(self) -> TrainingRecord | None:
        return self._record

    def answer_batch(self, requests: Any) -> Any:  # never called
        raise AssertionError


def test_log_training_writes_the_record_to_a_nested_mlflow_run(tmp_path: Path):
    from mlflow import MlflowClient

    stage2 = TrainResult([(0, 2.0), (1, 1.5)], 2, 3.0, resumed_from=1, trainable_params=40,
                         extra={"parts_curve": {"itm": [(0, 0.5), (1, 0.4)]}})
    stage1 = TrainResult([(0, 4.0), (1, 3.0), (2, 2.5)], 3, 5.0, trainable_params=7)
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "exp", tmp_path / "mlartifacts")
    assert log_training(tracker, None, "frozen", _Trained(None)) is None  # nothing trained: no run
    untrained = TrainingRecord(TrainResult([], 0, 0.0, trainable_params=40), None)
    assert log_training(tracker, None, "frozen", _Trained(untrained)) is None
    run = log_training(tracker, None, "blip2", _Trained(TrainingRecord(stage2, tmp_path / "ckpt", stage1, tmp_path / "s1")))
    client = MlflowClient(tracking_uri=uri)
    data = client.get_run(run).data
    assert data.tags["mmbench.kind"] == "training" and data.tags["mmbench.paradigm"] == "blip2"
    assert data.params["checkpoint"] == str(tmp_path / "ckpt") and data.params["resumed_from"] == "1"
    assert data.params["stage1_checkpoint"] == str(tmp_path / "s1") and data.params["options"] == '{"lr": 0.1}'
    assert data.metrics["trainable_params"] == 40 and data.metrics["train_steps"] == 2
    assert data.metrics["stage1_trainable_params"] == 7 and data.metrics["stage1_steps"] == 3
    history = {k: [m.value for m in client.get_metric_history(run, k)]
               for k in ("train_loss", "train_itm", "stage1_loss")}
    assert history == {"train_loss": [2.0, 1.5], "train_itm": [0.5, 0.4], "stage1_loss": [4.0, 3.0, 2.5]}
