"""The result cache is content-addressed: a replaced image, a fixed missing image or a fixed
annotation recomputes exactly that sample; transient failures (OOM, I/O) are never cached;
``retry_failed`` recomputes cached failures. Runs the real :class:`Runner` on an official-format
VQA folder with a recording paradigm (the runner's caching is under test, not a model)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from harness.cache import ResultCache
from harness.config import ParadigmSpec, parse_config
from harness.failures import TransientError, is_transient
from harness.plan import Plan, PlannedParadigm, plan_run
from harness.runner import Runner
from tests.fakes import Recorder, RecorderOptions
from tests.support import write_vqa_folder, write_vqa_image

pytestmark = pytest.mark.usefixtures("pinned_fingerprints")  # the runner's caching is under test, not identities


def _run(root: Path, results: Path, *, retry_failed: bool = False) -> tuple[list[str], dict[str, Any], Any]:
    cfg = parse_config({
        "name": "content-cache", "seed": 0, "batch_size": 2, "bootstrap": 10, "results_dir": str(results),
        "paradigms": [{"name": "text_conversion/pica"}],
        "tasks": [{"name": "vqav2_local", "dataset_options": {
            "root": str(root), "questions": "questions.json", "annotations": "annotations.json", "images_dir": "images"}}],
    })
    base = plan_run(cfg)
    plan = Plan(cfg, [PlannedParadigm(ParadigmSpec(name="text_conversion/recorder"), Recorder, RecorderOptions())], base.tasks)
    Recorder.asked = []
    with ResultCache(results / "cache.sqlite") as cache:
        (result,) = Runner(plan, cache=cache, progress=False, retry_failed=retry_failed).run()
        rows = {r["sample_id"]: r for r in result.rows}
        stored = {sid: json.loads(p) for sid, p in cache._db.execute("SELECT sample_id, payload FROM answers")}
    return sorted(Recorder.asked), rows, stored


def test_replaced_and_fixed_images_and_annotations_recompute_exactly_their_sample(tmp_path):
    root, results = tmp_path / "vqa", tmp_path / "r"
    write_vqa_folder(root)
    for i in (1, 2, 3):
        write_vqa_image(root, i, 40 * i)  # image 4 is missing
    asked, rows, _ = _run(root, results)
    assert asked == ["vqav2/1", "vqav2/2", "vqav2/3"] and "not found" in rows["vqav2/4"]["error"]
    assert _run(root, results)[0] == []  # nothing changed: all from the cache

    write_vqa_image(root, 2, 200)  # replace one image's bytes, same file name
    asked, rows, _ = _run(root, results)
    assert asked == ["vqav2/2"] and rows["vqav2/2"]["prediction"] == "200"

    write_vqa_image(root, 4, 10)  # fix the missing image
    asked, rows, _ = _run(root, results)
    assert asked == ["vqav2/4"] and rows["vqav2/4"]["error"] is None and rows["vqav2/4"]["prediction"] == "10"

    write_vqa_folder(root, answers={3: "white"})  # fix one sample's annotation: its answer and the metric change
    asked, rows, _ = _run(root, results)
    assert asked == ["vqav2/3"] and rows["vqav2/3"]["answers"][0] == "white"


def test_transient_failures_are_not_cached_and_retry_failed_recomputes_cached_failures(tmp_path):
    root, results = tmp_path / "vqa", tmp_path / "r"
    write_vqa_folder(root)
    for i in (1, 2, 3, 4):
        write_vqa_image(root, i, 30 * i)
    import torch

    Recorder.raise_for = {
        "vqav2/1": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "vqav2/2": OSError(errno.EIO, "Input/output error"),
        "vqav2/3": ValueError("prompt longer than the model's context"),
    }
    try:
        asked, rows, stored = _run(root, results)
    finally:
        Recorder.raise_for = {}
    assert asked == ["vqav2/4"]
    assert rows["vqav2/1"]["transient"] and "OutOfMemoryError" in rows["vqav2/1"]["error"]
    assert rows["vqav2/2"]["transient"] and "Input/output" in rows["vqav2/2"]["error"]
    assert not rows["vqav2/3"]["transient"] and "context" in rows["vqav2/3"]["error"]
    assert set(stored) == {"vqav2/3", "vqav2/4"}  # the OOM and the I/O error are not cached
    assert "context" in stored["vqav2/3"]["error"]

    asked, rows, _ = _run(root, results)  # transient ones are retried; the deterministic one is not
    assert asked == ["vqav2/1", "vqav2/2"] and rows["vqav2/3"]["error"]

    asked, rows, stored = _run(root, results, retry_failed=True)
    assert asked == ["vqav2/3"] and rows["vqav2/3"]["error"] is None and stored["vqav2/3"]["error"] is None


def test_a_paradigm_that_catches_an_oom_itself_does_not_cache_it(tmp_path):
    import torch

    root, results = tmp_path / "vqa", tmp_path / "r"
    write_vqa_folder(root)
    for i in (1, 2, 3, 4):
        write_vqa_image(root, i, 30 * i)
    Recorder.catch = True
    Recorder.raise_for = {"vqav2/1": torch.cuda.OutOfMemoryError("CUDA out of memory"),
                          "vqav2/2": ValueError("prompt longer than the model's context")}
    try:
        asked, rows, stored = _run(root, results)
    finally:
        Recorder.catch, Recorder.raise_for = False, {}
    assert rows["vqav2/1"]["transient"] and not rows["vqav2/2"]["transient"]
    assert set(stored) == {"vqav2/2", "vqav2/3", "vqav2/4"}
    assert _run(root, results)[0] == ["vqav2/1"]


@pytest.mark.parametrize("exc, transient", [
    (MemoryError(), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (TimeoutError("read timed out"), True),
    (ConnectionError("server closed"), True),
    (TransientError("HTTP 503 after 3 retries"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (FileNotFoundError(errno.ENOENT, "No such file"), False),
    (OSError("cannot identify image file"), False),  # PIL's decode error: no errno
    (ValueError("bad"), False),
])
def test_failure_classes(exc, transient):
    assert is_transient(exc) is transient


def test_io_error_behind_a_decode_error_is_transient():
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as inner:
            raise ValueError("cannot decode image x.jpg") from inner
    except ValueError as outer:
        assert is_transient(outer)


def test_hub_models_are_keyed_by_commit_and_labelled_unpinned_otherwise(tmp_path, monkeypatch):
    from harness.hub_pin import pinned_revision
    from harness.models.llm import llm_fingerprint

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pinned_revision.cache_clear()
    assert llm_fingerprint("hub", "org/lm") == "hub:org/lm@unpinned:main"
    sha = "0123456789abcdef0123456789abcdef01234567"
    refs = cache / "models--org--lm" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(sha)  # what `from_pretrained` would load, as the hub cache records it
    pinned_revision.cache_clear()
    assert llm_fingerprint("hub", "org/lm") == f"hub:org/lm@{sha}"
    (refs / "main").write_text(sha[::-1])  # main moved: the key moves with it
    pinned_revision.cache_clear()
    assert llm_fingerprint("hub", "org/lm") == f"hub:org/lm@{sha[::-1]}"
    assert pinned_revision("org/other", sha) == sha  # a commit is its own pin
