"""Helpers shared by test modules: plain functions and classes (fixtures live in conftest.py,
test doubles in fakes.py). Also used by the benchmarks, which build the same tiny models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path to a dev/CI data set in ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"{p} is absent (development/CI data; see ../shared/data/README.md)")
    return p


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


def save_tiny_llm(folder: Path, *, vocab_from: Path | None = None, seed: int = 0) -> Path:
    """Write a tiny random Llama model + tokenizer to ``folder`` (a local model folder for tests and benchmarks).

    The tokenizer is copied from ``vocab_from`` (a folder with a tokenizer) so text round-trips.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(vocab_from) if vocab_from else None
    vocab = len(tok) if tok is not None else 256
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=getattr(tok, "bos_token_id", None),
        eos_token_id=getattr(tok, "eos_token_id", None),
    )
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tok is not None:
        tok.save_pretrained(folder)
    (folder / "mmbench_tiny.json").write_text(json.dumps({"seed": seed, "random_init": True}))
    return folder


def skimage_image(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs, as RGB."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


#: Captions written for these skimage photographs (no dataset ships captions for them).
SKIMAGE_CAPTIONS = {
    "astronaut": "an astronaut in a white suit smiling in front of a flag",
    "coffee": "a cup of coffee on a saucer on a table",
    "chelsea": "a ginger tabby cat looking up to the side",
    "rocket": "a rocket standing on its launch pad under a blue sky",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "coins": "old coins laid out in rows on a dark background",
}


def adapter_backbones(llm: Any, cache: Path, encoder: Any) -> Any:
    """Backbones whose LLM and vision encoder are the given (tiny or packaged, already loaded) ones."""
    from harness.backbones import Backbones
    from harness.config import ModelsConfig

    bb = Backbones(ModelsConfig(), cache_dir=cache)
    bb.__dict__["llm"] = llm  # the run's shared LLM (a tiny or packaged local model here)
    bb.__dict__["vision_encoder"] = encoder
    return bb


def fast_adapter_options(cls: Any, **train: Any) -> Any:
    """A trained-adapter variant's options with a 4-step training run (checkpoint every 2 steps)."""
    from harness.training import TrainOptions

    return cls.Options(train=TrainOptions(**{"steps": 4, "batch_size": 3, "save_every": 2, **train}))


def write_vqa_image(root: Path, image_id: int, shade: int) -> None:
    """A uniform grey COCO-named image in a VQA folder (see :func:`write_vqa_folder`)."""
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(root / "images" / f"COCO_val2014_{image_id:012d}.jpg")


def write_vqa_folder(root: Path, n: int = 4, answers: dict[int, str] | None = None) -> None:
    """Questions and annotations of ``n`` samples in the official VQAv2 JSON format (answer "grey"
    unless ``answers`` says otherwise); images are written by :func:`write_vqa_image`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    qs = [{"image_id": i, "question": f"What is {i}?", "question_id": i} for i in range(1, n + 1)]
    anns = [{"question_id": i, "image_id": i, "answers": [{"answer": (answers or {}).get(i, "grey")}] * 10}
            for i in range(1, n + 1)]
    (root / "questions.json").write_text(json.dumps({"questions": qs, "data_subtype": "val2014"}))
    (root / "annotations.json").write_text(json.dumps({"annotations": anns}))


#: image tokens per image of the tiny Idefics3 below
IMAGE_SEQ_LEN = 4  # (32 px / 8 px patches)^2 = 16 patches, pixel-shuffled by scale_factor 2 -> 4 tokens
#: The published Idefics3 chat template (HuggingFaceM4/Idefics3-8B-Llama3).
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def save_tiny_idefics3(folder: Path, tokenizer_dir: Path) -> Path:
    """A random Idefics3 (1-layer ViT + pixel-shuffle connector + 1-layer Llama), saved like a user's copy."""
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<global-img>"]})  # the processor adds the others
    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    proc = Idefics3Processor(ip, tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=IDEFICS3_TEMPLATE)
    torch.manual_seed(0)
    cfg = Idefics3Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
        ),
        text_config=tiny_llama_text_config(tok),
        scale_factor=2,
        image_token_id=proc.image_token_id,
    )
    Idefics3ForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
