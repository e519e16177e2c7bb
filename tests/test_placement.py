"""``device_map: auto``: the hub LLM and VLM loaders hand it to accelerate (checked by the placement
accelerate records on the model), answers equal the single-device load, it stays out of config
hashes and cache keys, and a layout that cannot honour it stops before any compute."""

from __future__ import annotations

import pytest

from harness.config import ConfigError, parse_config
from harness.placement import placement_refusal

PROMPTS = ["The capital of France is", "Question: what colour is the sky? Answer:", "a photo of"]


def _suite(llm_dir, **llm) -> dict:
    return {
        "name": "placement", "paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "world_vqa"}],
        "models": {"llm": {"source": "local", "name": str(llm_dir), "dtype": "float32", **llm}},
    }


def _spy_from_pretrained(monkeypatch, cls) -> list[dict]:
    """The keyword arguments the loader really passed to transformers (which then really loads)."""
    seen: list[dict] = []
    orig = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        seen.append(kwargs)
        return orig(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return seen


@pytest.mark.slow
def test_llm_device_map_auto_is_loaded_by_accelerate_and_answers_identically(tiny_llm_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from harness.backbones import Backbones
    from harness.models.llm import GenerationSettings, LanguageModel

    one = LanguageModel.load("local", str(tiny_llm_dir), dtype="float32", device="cpu")
    seen = _spy_from_pretrained(monkeypatch, AutoModelForCausalLM)
    spread = Backbones(parse_config(_suite(tiny_llm_dir, device_map="auto")).models).llm  # the run's loader
    # accelerate planned the placement (on a CPU-only machine: every layer on "cpu", so nothing to dispatch)
    assert seen[-1]["device_map"] == "auto" and spread.device.type == "cpu"
    settings = GenerationSettings(max_new_tokens=6)
    assert spread.generate(PROMPTS, settings) == one.generate(PROMPTS, settings)
    assert spread.continuation_logprobs(PROMPTS, [" yes"] * 3) == one.continuation_logprobs(PROMPTS, [" yes"] * 3)


@pytest.mark.slow
def test_vlm_device_map_auto_is_loaded_by_accelerate_answers_identically_with_the_same_key(tmp_path, smollm2_dir,
                                                                                          monkeypatch):
    from transformers import AutoModelForImageTextToText

    from harness.models.llm import GenerationSettings
    from harness.registry import get_paradigm
    from harness.interface import Request
    from tests.support import save_tiny_idefics3, skimage_image

    folder = save_tiny_idefics3(tmp_path / "idefics3", smollm2_dir)
    reqs = [Request("a", "chelsea", skimage_image("chelsea"), "Question: what animal is it? Answer:", max_new_tokens=5),
            Request("c", "coffee", skimage_image("coffee"), "Write a short caption.", kind="caption", max_new_tokens=3)]
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    gen = GenerationSettings(max_new_tokens=5, stop=("\n",))
    one = cls(None, cls.Options(model=str(folder), dtype="float32", device="cpu"), gen)
    spread = cls(None, cls.Options(model=str(folder), dtype="float32", device_map="auto"), gen)
    one.prepare()
    seen = _spy_from_pretrained(monkeypatch, AutoModelForImageTextToText)
    spread.prepare()
    assert seen[-1]["device_map"] == "auto"
    assert [a.text for a in spread.answer_batch(reqs)] == [a.text for a in one.answer_batch(reqs)]
    # placement is not identity: the answers share their cache keys
    assert spread.fingerprint() == cls(None, cls.Options(model=str(folder), dtype="float32"), gen).fingerprint()


def test_device_map_stays_out_of_the_config_hash(tiny_llm_dir):
    plain = parse_config(_suite(tiny_llm_dir))
    spread = parse_config(_suite(tiny_llm_dir, device_map="auto"))
    assert spread.models.llm.device_map == "auto"
    assert spread.config_hash() == plain.config_hash()
    vlm = {"name": "trained_adapter/vlm_pretrained", "options": {"model": "some/vlm"}}
    with_map = {"name": "trained_adapter/vlm_pretrained", "options": {"model": "some/vlm", "device_map": "auto"}}
    a = parse_config({**_suite(tiny_llm_dir), "paradigms": [vlm]})
    b = parse_config({**_suite(tiny_llm_dir), "paradigms": [with_map]})
    assert a.config_hash() == b.config_hash()


def test_layouts_that_cannot_honour_device_map_are_named_with_the_fix(tiny_llm_dir):
    llm = parse_config(_suite(tiny_llm_dir, device_map="auto")).models.llm
    shared = placement_refusal("models.llm", llm, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, cuda=True)
    assert shared and "2 processes of this job run on this node" in shared and "--nproc_per_node 1" in shared
    # one process per node owns its node's GPUs; on CPU every process has its own memory anyway
    assert placement_refusal("models.llm", llm, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "1"}, cuda=True) is None
    assert placement_refusal("models.llm", llm, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, cuda=False) is None
    pinned = parse_config(_suite(tiny_llm_dir, device_map="auto", device="cpu")).models.llm
    assert "'models.llm.device' is 'cpu'" in placement_refusal("models.llm", pinned, {}, cuda=False)
    static = parse_config(_suite(tiny_llm_dir, device_map="auto", engine="static")).models.llm
    assert "static decode engine" in placement_refusal("models.llm", static, {}, cuda=False)


def test_a_refused_device_map_stops_the_run_before_anything_is_written(tmp_path, tiny_llm_dir, monkeypatch):
    import torch

    from harness.evaluate import run_evaluation

    results = tmp_path / "results"
    cfg = parse_config({**_suite(tiny_llm_dir, device_map="auto"), "results_dir": str(results), "limit": 2})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"models\.llm\.device_map.*--nproc_per_node 1"):
        run_evaluation(cfg, progress=False)
    assert not results.exists()  # before the process group, the cache, the tracking store or any model
