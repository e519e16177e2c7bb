"""``trained_adapter/vlm_pretrained`` on a tiny random Idefics3 built from a config and saved locally.

No pretrained interleaved VLM is reachable offline, so these tests check the plumbing (loading
through the Auto classes, chat-template prompts, interleaved shots, batching, errors), not quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from harness.config import format_validation_error
from harness.interface import Request, Shot
from harness.models.llm import GenerationSettings, ModelUnavailable
from harness.registry import get_paradigm
from tests.support import IMAGE_SEQ_LEN, save_tiny_idefics3, tiny_llama_text_config
from tests.support import skimage_image as _image

GEN = GenerationSettings(max_new_tokens=8, stop=("\n",))
@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory, smollm2_dir) -> Path:
    return save_tiny_idefics3(tmp_path_factory.mktemp("idefics3"), smollm2_dir)


@pytest.fixture(scope="module")
def vlm(idefics3_dir):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    p = cls(None, cls.Options(model=str(idefics3_dir), dtype="float32", device="cpu"), GEN)
    p.prepare()
    return p


def _record_generate(p, monkeypatch) -> list[dict]:
    """Capture what the processor handed to ``generate`` (the model's real inputs)."""
    seen: list[dict] = []
    orig = p.model.generate

    def spy(**kw):
        seen.append({k: v.clone() for k, v in kw.items() if torch.is_tensor(v)})
        return orig(**kw)

    monkeypatch.setattr(p.model, "generate", spy)
    return seen


REQS = [
    Request("a", "chelsea", _image("chelsea"), "Question: what animal is it? Answer:", max_new_tokens=5),
    Request("b", "none", None, "Question: ?"),
    Request("c", "coffee", _image("coffee"), "Write a short caption.", kind="caption", max_new_tokens=3),
    Request("d", "rocket", _image("rocket"), "Question: is it daytime? Answer:", max_new_tokens=6),
]


def test_loads_a_local_checkpoint_and_answers_caption_and_vqa_deterministically(vlm):
    assert vlm.uses == () and vlm.processor.tokenizer.padding_side == "left"
    first = vlm.answer_batch(REQS)
    again = vlm.answer_batch(REQS)
    assert [a.text for a in first] == [a.text for a in again]
    assert first[1].error == "ValueError: sample has no image"
    for a, r in zip(first, REQS):
        if r.image is None:
            continue
        assert a.error is None and a.text, a
        assert 1 <= a.llm_tokens_out <= r.max_new_tokens
        assert a.trainable_params == 0 and a.latency_s > 0 and a.llm_tokens_in > 0
        assert a.trace["model"] == vlm.options.model and a.trace["n_images"] == 1
        assert a.trace["image_tokens"] == IMAGE_SEQ_LEN
        assert r.prompt in a.trace["prompt"] and a.trace["prompt"].endswith("Assistant:")
    assert "\n" not in "".join(a.text for a in first)  # the run's stop string cuts


def test_batch_of_three_equals_one_at_a_time(vlm, monkeypatch):
    seen = _record_generate(vlm, monkeypatch)
    shots = (Shot("s", "astronaut", _image("astronaut"), "Question: who is it? Answer:", "an astronaut"),)
    reqs = [REQS[0], REQS[2], Request("e", "camera", _image("camera"), REQS[3].prompt, shots=shots, max_new_tokens=6)]
    together = vlm.answer_batch(reqs)
    alone = [vlm.answer_batch([r])[0] for r in reqs]
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.llm_tokens_out for a in together] == [a.llm_tokens_out for a in alone]
    assert [a.llm_tokens_in for a in together] == [a.llm_tokens_in for a in alone]
    batch_ids = seen[0]["input_ids"]
    assert batch_ids.shape[0] == 3
    # Left padding: every row ends with its prompt, the shorter rows are padded at the front.
    assert bool(seen[0]["attention_mask"][:, -1].all()) and not bool(seen[0]["attention_mask"][:, 0].all())


@pytest.mark.parametrize("k", [1, 2])
def test_k_shot_prompt_interleaves_k_plus_one_images(vlm, monkeypatch, k):
    seen = _record_generate(vlm, monkeypatch)
    demos = [("astronaut", "an astronaut in a suit"), ("coins", "old coins"), ("camera", "a man with a camera")]
    shots = tuple(Shot(f"s{j}", n, _image(n), "Write a short caption.", cap) for j, (n, cap) in enumerate(demos[:k]))
    zero = Request("q", "coffee", _image("coffee"), "Write a short caption.", kind="caption", max_new_tokens=4)
    few = Request("q", "coffee", _image("coffee"), "Write a short caption.", shots=shots, kind="caption", max_new_tokens=4)
    a0, ak = vlm.answer_batch([zero])[0], vlm.answer_batch([few])[0]
    assert ak.error is None and ak.trace["n_images"] == k + 1 and ak.trace["n_shots"] == k
    # The model really receives k+1 images and (k+1) x image_seq_len image tokens.
    image_id = vlm.processor.image_token_id
    assert int((seen[0]["input_ids"] == image_id).sum()) == IMAGE_SEQ_LEN
    assert int((seen[1]["input_ids"] == image_id).sum()) == (k + 1) * IMAGE_SEQ_LEN == ak.trace["image_tokens"]
    assert seen[1]["pixel_values"].shape[1] == k + 1 and seen[0]["pixel_values"].shape[1] == 1
    # Demonstrations are earlier user/assistant turns, in order, before the query turn.
    prompt = ak.trace["prompt"]
    positions = [prompt.index(f"Assistant: {cap}<end_of_utterance>") for _, cap in demos[:k]]
    assert positions == sorted(positions) and prompt.count("User:") == k + 1
    assert ak.llm_tokens_in > a0.llm_tokens_in
    assert ak.text != a0.text  # the demonstrations reach the model, not just the prompt string


def test_shot_without_image_is_shown_as_text(vlm, monkeypatch):
    seen = _record_generate(vlm, monkeypatch)
    shots = (
        Shot("s0", "astronaut", _image("astronaut"), "Question: who? Answer:", "an astronaut"),
        Shot("s1", "lost", None, "Question: what colour is the sky? Answer:", "blue"),
    )
    a = vlm.answer_batch([Request("q", "coffee", _image("coffee"), "Question: what is it? Answer:", shots=shots)])[0]
    assert a.error is None and a.trace["n_images"] == 2 and a.trace["text_only_shots"] == 1
    assert int((seen[0]["input_ids"] == vlm.processor.image_token_id).sum()) == 2 * IMAGE_SEQ_LEN
    assert "User: Question: what colour is the sky? Answer:<end_of_utterance>\nAssistant: blue" in a.trace["prompt"]


def test_max_new_tokens_option_overrides_the_task(idefics3_dir):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    p = cls(None, cls.Options(model=str(idefics3_dir), dtype="float32", device="cpu", max_new_tokens=2), GEN)
    a = p.answer_batch([REQS[3]])[0]
    assert a.error is None and a.llm_tokens_out <= 2


def test_fingerprint_names_the_weights_and_dtype(idefics3_dir, tmp_path, monkeypatch):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    local = cls(None, cls.Options(model=str(idefics3_dir), dtype="float32"), GEN).fingerprint()
    assert local["weights"].startswith(f"local:{idefics3_dir.name}:") and local["dtype"] == "float32"
    assert cls(None, cls.Options(model=str(idefics3_dir), dtype="bfloat16"), GEN).fingerprint() != local
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline a branch cannot be resolved: labelled unpinned
    hub = cls(None, cls.Options(model="HuggingFaceTB/SmolVLM-256M-Instruct@abc123"), GEN).fingerprint()
    assert hub["weights"] == "hub:HuggingFaceTB/SmolVLM-256M-Instruct@unpinned:abc123"
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert cls(None, cls.Options(model=f"HuggingFaceTB/SmolVLM-256M-Instruct@{sha}"), GEN).fingerprint()["weights"] \
        == f"hub:HuggingFaceTB/SmolVLM-256M-Instruct@{sha}"
    # A different folder with other weights gets a different digest.
    other = Path(shutil.copytree(idefics3_dir, tmp_path / "other"))
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b"\0")
    assert cls(None, cls.Options(model=str(other), dtype="float32"), GEN).fingerprint()["weights"] != local["weights"]


def test_missing_model_says_which_option_and_what_to_do(tmp_path):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    empty = tmp_path / "no_vlm_here"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match=r"option 'model': cannot load .*no_vlm_here.*local folder"):
        cls(None, cls.Options(model=str(empty)), GEN).prepare()
    with pytest.raises(ValidationError) as exc:
        cls.Options.model_validate({})
    assert "config key 'model': Field required" in format_validation_error(exc.value, cls.Options)


def test_bad_option_key_fails_validation_naming_it():
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    with pytest.raises(ValidationError) as exc:
        cls.Options.model_validate({"model": "x", "max_new_token": 3})
    msg = format_validation_error(exc.value, cls.Options)
    assert "unknown config key 'max_new_token'" in msg and "max_new_tokens" in msg and "trust_remote_code" in msg


LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _save_tiny_llava(folder: Path, tokenizer_dir: Path) -> Path:
    """A random LLaVA (2-layer CLIP ViT + MLP projector + 1-layer Llama): the other processor layout."""
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16
        ).to_dict(),
        text_config=tiny_llama_text_config(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_llava_style_checkpoint_answers_batch_invariantly_with_interleaved_shots(tmp_path, smollm2_dir, monkeypatch):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    folder = _save_tiny_llava(tmp_path / "llava", smollm2_dir)
    p = cls(None, cls.Options(model=str(folder), dtype="float32", device="cpu"), GEN)
    p.prepare()
    seen = _record_generate(p, monkeypatch)
    shots = (Shot("s", "astronaut", _image("astronaut"), "Write a short caption.", "an astronaut"),)
    reqs = [*REQS, Request("q", "coffee", _image("coffee"), "Write a short caption.", shots=shots, kind="caption", max_new_tokens=4)]
    together = p.answer_batch(reqs)
    alone = [p.answer_batch([r])[0] for r in reqs]
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.error is None for a in together] == [True, False, True, True, True] and together[0].text
    per_image = 4  # (32 / 16)^2 patches; the CLS feature is dropped ("default" strategy)
    assert together[4].trace["n_images"] == 2 and together[4].trace["image_tokens"] == 2 * per_image
    assert int((seen[0]["input_ids"] == p.processor.image_token_id).sum()) == (1 + 1 + 1 + 2) * per_image
    assert seen[0]["pixel_values"].shape[0] == 5  # LLaVA takes a flat list of images for the batch


def test_trust_remote_code_is_off_by_default_and_warns_when_on(idefics3_dir, caplog):
    cls = get_paradigm("trained_adapter/vlm_pretrained")
    assert cls.Options(model="x").trust_remote_code is False
    with caplog.at_level("WARNING", logger="paradigms.trained_adapter.vlm_pretrained"):
        cls(None, cls.Options(model=str(idefics3_dir), device="cpu", trust_remote_code=True), GEN).prepare()
    assert any("trust_remote_code=true" in r.getMessage() for r in caplog.records)
