"""Shared fixtures: tiny random models built from configs, the packaged real LLM, and a real report store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import SKIMAGE_CAPTIONS, MemoEncoder, save_tiny_llm, skimage_image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2 converted to safetensors (in the user cache; converted once)."""
    from harness.models.llm import _convert_packaged, default_cache_dir

    return _convert_packaged("smollm2-135m-instruct", default_cache_dir())


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from harness.models.llm import LanguageModel

    return LanguageModel.load("local", str(smollm2_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved like a user's local model folder."""
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), vocab_from=smollm2_dir, seed=0)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_dir):
    from harness.models.llm import LanguageModel

    return LanguageModel.load("local", str(tiny_llm_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def encoder() -> MemoEncoder:
    """EfficientNet-Lite0 from the packaged weights, memoised (one instance per test module)."""
    from harness.models.vision_encoder import load_efficientnet_lite0

    return MemoEncoder(load_efficientnet_lite0())


@pytest.fixture(scope="session")
def default_backbone_fingerprints() -> dict[str, str]:
    """The default models' backbone identities, computed once per session."""
    from harness.backbones import Backbones
    from harness.config import ModelsConfig

    return Backbones(ModelsConfig()).fingerprints()


@pytest.fixture()
def pinned_fingerprints(default_backbone_fingerprints, monkeypatch) -> None:
    """Every ``Backbones`` reports the default models' identities without recomputing them: hashing
    the packaged tools' files takes seconds per Runner. Only for tests on the default models that
    need the identities stable, not computed (runner and cache behaviour)."""
    from harness.backbones import Backbones

    monkeypatch.setattr(Backbones, "fingerprints", lambda self: dict(default_backbone_fingerprints))


@pytest.fixture(scope="module")
def skimage_pairs() -> list:
    """(id, image loader, caption) training pairs on six real skimage photographs."""
    from paradigms.trained_adapter.data import CaptionPair

    return [CaptionPair(k, (lambda k=k: skimage_image(k)), c) for k, c in SKIMAGE_CAPTIONS.items()]


@pytest.fixture(scope="session")
def report_store(tmp_path_factory, tiny_llm_dir, smollm2_dir) -> dict[str, Any]:
    """Real tiny evaluations in one store: LLM A twice (the second from cache, superseding the first)
    and LLM B once, then `mmbench report` over all of it (the report, UI and browser tests read it)."""
    from click.testing import CliRunner

    from harness.leaderboard.cli import report_cmd
    from harness.tracking import default_tracking_uri
    from tests.report_fixtures import real_config, run_real

    root = tmp_path_factory.mktemp("report_store")
    results = root / "results"
    llm_b = save_tiny_llm(tmp_path_factory.mktemp("tiny_llm_b"), vocab_from=smollm2_dir, seed=1)
    first, second, other = run_real([real_config(tiny_llm_dir, results), real_config(tiny_llm_dir, results),
                                     real_config(llm_b, results)], root / "cache")
    out = root / "report"
    res = CliRunner().invoke(report_cmd, ["--results-dir", str(results), "--out", str(out), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    return dict(results=results, uri=default_tracking_uri(results), out=out, first=first.parent_run_id,
                second=second.parent_run_id, other=other.parent_run_id, llm_a=tiny_llm_dir.name,
                llm_b=llm_b.name, cli_output=res.output)
