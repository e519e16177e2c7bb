"""The static-KV-cache decode engine gives generate()'s greedy tokens, and is wired in honestly.

CPU float32 here; the CUDA-graph replay of the same step code is exercised (token agreement
included) by ``benchmarks/bench_decode.py`` on a GPU, via ``benchmarks/gpu_suite.sh`` (not yet run:
no GPU has been available to this project).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from harness.config import RunConfig
from harness.models.decode_engine import EngineUnsupported, StaticDecoder
from harness.models.llm import GenerationSettings, LanguageModel, engine_requested
from harness.models.packaged import ModelUnavailable

SMALL = dict(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
)
ARCHS = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 16}),
    "mistral_window6": (MistralForCausalLM, MistralConfig, {"sliding_window": 6}),
    "llama_mha": (LlamaForCausalLM, LlamaConfig, {"num_key_value_heads": 4}),
}


def _model(arch: str) -> torch.nn.Module:
    cls, cfg_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    model = cls(cfg_cls(**{**SMALL, **extra})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # peaked distributions: few near-ties, long varied continuations
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (3, 9), generator=g)
    att = torch.ones_like(ids)
    att[1, :3] = 0
    att[2, :5] = 0
    return ids.masked_fill(att == 0, 0), att


def _reference(model, ids, att, n, eos):
    out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=eos)
    new = out[:, ids.shape[1]:]
    if new.shape[1] < n:  # generate() stops when every row ended; the engine pads to n
        new = torch.cat([new, new.new_zeros(new.shape[0], n - new.shape[1])], dim=1)
    return new


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("chunk", [1, 4])
def test_engine_tokens_equal_generate_on_left_padded_batches(arch, chunk):
    model = _model(arch)
    ids, att = _batch()
    ref = _reference(model, ids, att, 21, eos=1)
    out = StaticDecoder(model, [1], 0, chunk=chunk).generate(ids, att, 21)
    assert torch.equal(out, ref)
    # The rows really differ in padding and produce varied text (the comparison is not vacuous).
    assert len(set(ref.flatten().tolist())) > 6


def test_engine_stops_rows_at_their_end_token_like_generate():
    model = _model("llama")
    ids, att = _batch()
    free = _reference(model, ids, att, 20, eos=1)
    eos = int(free[0, 5])  # a token row 0 produces: that row must end there
    ref = _reference(model, ids, att, 20, eos=eos)
    out = StaticDecoder(model, [eos], 0, chunk=4).generate(ids, att, 20)
    assert torch.equal(out, ref)
    assert (out[0, 6:] == 0).all() and out[0, 5] == eos


def test_engine_can_fail_when_a_step_is_wrong():
    """A broken rotary position (prompt padding ignored) must change tokens: the test has teeth."""
    model = _model("llama")
    ids, att = _batch()
    ref = _reference(model, ids, att, 12, eos=1)
    eng = StaticDecoder(model, [1], 0)
    assert torch.equal(eng.generate(ids, att, 12), ref)
    (buf,) = eng._buffers.values()
    with torch.inference_mode():
        buf.cos.copy_(torch.roll(buf.cos, 1, 0))
        buf.sin.copy_(torch.roll(buf.sin, 1, 0))
    assert not torch.equal(eng.generate(ids, att, 12), ref)


def test_engine_refuses_unsupported_architectures():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).eval()
    with pytest.raises(EngineUnsupported, match="gpt2"):
        StaticDecoder(gpt2, [0], 0)
    with pytest.raises(EngineUnsupported, match="CUDA"):
        StaticDecoder(_model("llama"), [1], 0, use_cuda_graphs=True)


def test_engine_choice_rules():
    assert engine_requested("auto", "cpu") == "hf"
    # auto = generate() on CUDA too, until a GPU measurement shows the static engine token-identical
    assert engine_requested("auto", "cuda:0", "llama") == "hf"
    assert engine_requested("auto", "cuda", "gpt2") == "hf"
    assert engine_requested("static", "cpu") == "static"
    assert engine_requested("hf", "cuda", "llama") == "hf"


def _lm(folder, engine):
    return LanguageModel.load("local", str(folder), dtype="float32", device="cpu", engine=engine)


@pytest.mark.slow
def test_language_model_reports_identical_generations_with_either_engine(tiny_llm_dir):
    hf, static = _lm(tiny_llm_dir, "hf"), _lm(tiny_llm_dir, "static")
    assert (hf.engine, static.engine) == ("hf", "static")
    prompts = [hf.chat_prompt(q) for q in ("What is in the kitchen?", "Name a colour.", "A dog runs on the grass and")]
    plain = hf.generate(prompts, GenerationSettings(max_new_tokens=24), batch_size=3)
    # Stop strings taken from the free-running text, so they really cut (and end rows early).
    stops = tuple(g.text.split()[2] for g in plain[:2] if len(g.text.split()) > 3)
    assert stops
    for settings in (GenerationSettings(max_new_tokens=24), GenerationSettings(max_new_tokens=24, stop=stops)):
        for bs in (1, 3):
            a = hf.generate(prompts, settings, batch_size=bs)
            b = static.generate(prompts, settings, batch_size=bs)
            assert a == b, (settings, bs)
    cut = static.generate(prompts, GenerationSettings(max_new_tokens=24, stop=stops), batch_size=3)
    assert any(g.finished and g.tokens_out < 24 for g in cut)


@pytest.mark.slow
def test_packaged_smollm2_engine_equals_generate(smollm2_dir):
    hf, static = _lm(smollm2_dir, "hf"), _lm(smollm2_dir, "static")
    prompts = [hf.chat_prompt(q) for q in ("Describe a kitchen.", "What colour is the sky?")]
    settings = GenerationSettings(max_new_tokens=20, stop=("\n",))
    assert hf.generate(prompts, settings, batch_size=2) == static.generate(prompts, settings, batch_size=2)


def test_sampling_falls_back_to_generate(tiny_llm_dir):
    static = _lm(tiny_llm_dir, "static")
    a = static.generate(["Hello"], GenerationSettings(max_new_tokens=8, greedy=False, temperature=1.0))
    b = _lm(tiny_llm_dir, "hf").generate(["Hello"], GenerationSettings(max_new_tokens=8, greedy=False, temperature=1.0))
    assert a == b


def test_sampling_is_seeded_per_prompt_and_independent_of_batching(tiny_llm_dir):
    lm = _lm(tiny_llm_dir, "hf")
    prompts = ["Hello", "A cat sat on", "The weather today is"]
    s0 = GenerationSettings(max_new_tokens=8, greedy=False, temperature=1.5, seed=0)
    torch.manual_seed(123)  # the global RNG plays no part
    together = lm.generate(prompts, s0, batch_size=3)
    torch.manual_seed(999)
    alone = [lm.generate([p], s0, batch_size=1)[0] for p in reversed(prompts)][::-1]
    assert together == alone
    other = lm.generate(prompts, GenerationSettings(max_new_tokens=8, greedy=False, temperature=1.5, seed=1), batch_size=3)
    assert other != together  # the run seed changes the samples


@pytest.mark.slow
def test_static_engine_whose_first_batch_differs_falls_back_to_generate(tiny_llm_dir, caplog):
    hf, static = _lm(tiny_llm_dir, "hf"), _lm(tiny_llm_dir, "static")
    real = static._decoder.generate

    def off_by_one(ids, att, n, stop_check=None):  # a fault in the fast path: first token changed
        out = real(ids, att, n, stop_check=stop_check).clone()
        out[:, 0] = (out[:, 0] + 1) % hf.model.config.vocab_size
        return out

    static._decoder.generate = off_by_one
    prompts = [hf.chat_prompt("Name a colour."), hf.chat_prompt("What is in the kitchen?")]
    settings = GenerationSettings(max_new_tokens=12)
    with caplog.at_level("WARNING"):
        got = static.generate(prompts, settings, batch_size=2)
    assert got == hf.generate(prompts, settings, batch_size=2)
    assert static.engine == "hf" and "differs from generate()" in caplog.text


def test_static_engine_on_unsupported_model_is_a_clear_error(tmp_path):
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder)

    class _Tok:
        padding_side = "left"
        pad_token = "<pad>"
        pad_token_id = 0
        eos_token_id = 0

    with pytest.raises(ModelUnavailable, match="engine 'static' unavailable"):
        LanguageModel(model, _Tok(), "fp", "gpt2", engine="static")
    assert LanguageModel(model, _Tok(), "fp", "gpt2", engine="auto").engine == "hf"


@pytest.mark.slow
def test_engine_key_and_hash(tmp_path):
    from harness.backbones import Backbones

    minimal = {"paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "photos_vqa"}]}
    base = RunConfig.model_validate(minimal)
    explicit_auto = RunConfig.model_validate({**minimal, "models": {"llm": {"engine": "auto"}}})
    static = RunConfig.model_validate({**minimal, "models": {"llm": {"engine": "static", "device": "cpu"}}})
    assert base.config_hash() == explicit_auto.config_hash()
    assert static.config_hash() != base.config_hash()
    fp_auto = Backbones(base.models, cache_dir=tmp_path).fingerprints()["llm"]
    fp_static = Backbones(static.models, cache_dir=tmp_path).fingerprints()["llm"]
    assert fp_static == fp_auto + ":static-engine"
    with pytest.raises(Exception, match="engine"):
        RunConfig.model_validate({**minimal, "models": {"llm": {"engine": "vllm"}}})


@pytest.mark.slow
def test_engine_keeps_a_bounded_number_of_shapes_and_stays_correct_when_reusing_them():
    model = _model("llama")
    ids, att = _batch()
    eng = StaticDecoder(model, [1], 0, max_shapes=2)
    ref3 = _reference(model, ids, att, 10, eos=1)
    ref1 = _reference(model, ids[:1], att[:1], 10, eos=1)
    ref_long = _reference(model, ids, att, 70, eos=1)
    for _ in range(2):  # the second round reuses (and evicts) cached buffers
        assert torch.equal(eng.generate(ids, att, 10), ref3)
        assert torch.equal(eng.generate(ids[:1], att[:1], 10), ref1)
        assert torch.equal(eng.generate(ids, att, 70), ref_long)
        assert len(eng._buffers) <= 2
