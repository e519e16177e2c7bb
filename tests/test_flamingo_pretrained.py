"""``trained_adapter/flamingo_pretrained`` on a tiny random IDEFICS (v1) built from a config and saved locally.

No IDEFICS weights are reachable offline, so this checks the real loading and prompting code
(``IdeficsForVisionText2Text`` + ``IdeficsProcessor``, interleaved few-shot prompts, the image
tokens, batching, errors), not answer quality.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.interface import Request, Shot
from harness.models.llm import GenerationSettings, ModelUnavailable
from harness.registry import get_paradigm

GEN = GenerationSettings(max_new_tokens=6, stop=("\n",))


def _image(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _save_tiny_idefics(folder: Path, tokenizer_dir: Path) -> Path:
    """A random IDEFICS: 1-layer ViT, a 1-layer Perceiver Resampler, 2 LLaMA layers with a
    gated cross-attention block every layer (cross_layer_interval 1)."""
    from transformers import AutoTokenizer, IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]})
    proc = IdeficsProcessor(image_processor=IdeficsImageProcessor(image_size=32), tokenizer=tok)
    torch.manual_seed(0)
    cfg = IdeficsConfig(
        vocab_size=len(tok), additional_vocab_size=0, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=512, cross_layer_interval=1, use_resampler=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        alpha_initializer="ones",  # open tanh gates: the image must matter (the default, zeros, hides it)
        vision_config=dict(embed_dim=32, image_size=32, patch_size=8, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=8),
    )
    IdeficsForVisionText2Text(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def idefics_dir(tmp_path_factory, smollm2_dir) -> Path:
    return _save_tiny_idefics(tmp_path_factory.mktemp("idefics"), smollm2_dir)


def _paradigm(folder: Path, fmt: str = "instruct"):
    cls = get_paradigm("trained_adapter/flamingo_pretrained")
    return cls(None, cls.Options(model=str(folder), dtype="float32", device="cpu", format=fmt, batch_size=2), GEN)


@pytest.mark.slow
def test_answers_with_shots_as_earlier_image_text_chunks(idefics_dir, monkeypatch):
    p = _paradigm(idefics_dir)
    p.prepare()
    assert type(p.model).__name__ == "IdeficsForVisionText2Text"
    seen: list[dict] = []
    real = p.model.generate

    def spy(**kw):
        seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()})
        return real(**kw)

    monkeypatch.setattr(p.model, "generate", spy)
    shots = (Shot("d1", "rocket", _image("rocket"), "Caption:", "a rocket"),
             Shot("d2", "coffee", _image("coffee"), "Caption:", "a cup of coffee"))
    reqs = [Request("q0", "chelsea", _image("chelsea"), "Caption:", kind="caption", max_new_tokens=5),
            Request("q2", "chelsea", _image("chelsea"), "Caption:", shots=shots, kind="caption", max_new_tokens=5)]
    zero, two = p.answer_batch(reqs)
    assert zero.error is None and two.error is None
    assert two.trace["n_images"] == 3 and two.trace["image_tokens"] == 3 and zero.trace["image_tokens"] == 1
    prompt = two.trace["prompt"]
    # demonstrations in the given order, each an earlier User/Assistant chunk with its own image
    chunk = "User:<fake_token_around_image><image><fake_token_around_image>Caption:<end_of_utterance>\nAssistant:"
    assert prompt.count(chunk) == 3
    assert prompt.index("a rocket<end_of_utterance>") < prompt.index("a cup of coffee<end_of_utterance>")
    assert prompt.rstrip().endswith("Assistant:")
    # the model really received the three images (pixel_values) and which text sees which image
    kw = seen[0]
    assert kw["pixel_values"].shape[:2] == (2, 3) and kw["image_attention_mask"].shape[-1] == 3
    assert kw["bad_words_ids"] and 1 <= two.llm_tokens_out <= 5
    # ... and reads them through its gated cross-attention: other pixels, other next-token logits
    inputs = {k: kw[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_attention_mask")}
    with torch.no_grad():
        real_logits = p.model(**inputs).logits[:, -1]
        blank = p.model(**{**inputs, "pixel_values": torch.zeros_like(inputs["pixel_values"])}).logits[:, -1]
    assert not torch.allclose(real_logits, blank)
    # the shots change the answer's inputs: an equal request alone gives the same answer (batch invariance)
    alone = p.answer_batch([reqs[1]])[0]
    assert alone.text == two.text


def test_base_format_and_bad_samples_fail_alone(idefics_dir):
    p = _paradigm(idefics_dir, "base")
    shots = (Shot("d1", "rocket", _image("rocket"), "Output:", "a rocket"),)
    ok = Request("q", "coffee", _image("coffee"), "Output:", shots=shots, kind="caption", max_new_tokens=4)
    url = Request("u", "coffee", _image("coffee"), "https://example.com/x.png", kind="caption", max_new_tokens=4)
    no_img = Request("n", "none", None, "Output:", kind="caption")
    a, b, c = p.answer_batch([ok, url, no_img])
    assert a.error is None and a.trace["prompt"].count("<image>") == 2 and "User:" not in a.trace["prompt"]
    assert "Output: a rocket\n" in a.trace["prompt"]
    assert b.error and "URL" in b.error and c.error and "no image" in c.error


def test_missing_checkpoint_says_what_to_do(tmp_path):
    p = _paradigm(tmp_path / "nothing-here")
    with pytest.raises(ModelUnavailable, match="option 'model'"):
        p.prepare()
