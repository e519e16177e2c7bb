"""Shared fixtures: tiny random models built from configs, and the packaged real LLM."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data(name: str) -> Path:
    """Path to a dev/CI data set in ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"{p} is absent (development/CI data; see ../shared/data/README.md)")
    return p


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
    from harness.models.llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), vocab_from=smollm2_dir, seed=0)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_dir):
    from harness.models.llm import LanguageModel

    return LanguageModel.load("local", str(tiny_llm_dir), dtype="float32", device="cpu")


def tiny_llama_text_config(tok) -> dict:  # noqa: ANN001
    """The 1-layer random Llama inside every tiny VLM the tests build (BLIP-2, Idefics3, LLaVA)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    ).to_dict()


class MemoEncoder:
    """The real packaged encoder, with its (deterministic, frozen) features memoised per image
    content across a module's tests — encoding is the slowest part of the adapter tests on a shared CPU."""

    def __init__(self, encoder) -> None:
        self.encoder, self.model, self.feature_dim = encoder, encoder.model, encoder.feature_dim
        self.memo: dict[str, torch.Tensor] = {}

    def fingerprint(self) -> str:
        return self.encoder.fingerprint()

    def __getattr__(self, name: str):  # preprocess, device, ...: the real encoder's
        return getattr(self.encoder, name)

    def features(self, images):
        keys = [hashlib.sha256(im.tobytes()).hexdigest() + str(im.size) for im in images]
        todo = {k: im for k, im in zip(keys, images) if k not in self.memo}
        if todo:
            for k, f in zip(todo, self.encoder.features(list(todo.values()))):
                self.memo[k] = f
        return torch.stack([self.memo[k] for k in keys])


@pytest.fixture(scope="module")
def encoder() -> MemoEncoder:
    """EfficientNet-Lite0 from the packaged weights, memoised (one instance per test module)."""
    from harness.models.vision_encoder import load_efficientnet_lite0

    return MemoEncoder(load_efficientnet_lite0())
