"""Tiny random vision experts built from configs and saved like a user's local model folders.

Each builder writes a folder that ``from_pretrained`` reads through the real expert code
(harness/experts): weights are random, so outputs are arbitrary but deterministic. Sizes are the
smallest the architectures accept, to stay fast on 2 shared cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog", "please",
         "describe", "this", "image", "according", "to", "the", "given", "question", ":", "what", "is", "?",
         "color", "red", "blue", "how", "many", "2", "yes", "no"]  # fmt: skip
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _bert_tokenizer(d: Path, **kw):  # noqa: ANN003, ANN202
    from transformers import BertTokenizer

    (d / "vocab.txt").write_text("\n".join(WORDS))
    return BertTokenizer(str(d / "vocab.txt"), **kw)  # (in transformers 5 the tokenizers-backed one)


def _blip_config():  # noqa: ANN202
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=len(WORDS), bos_token_id=5, sep_token_id=3, pad_token_id=0, eos_token_id=3,
                         max_position_embeddings=64, **SMALL),
        vision_config=dict(image_size=32, patch_size=8, **SMALL),
        projection_dim=16,
    )


def _blip_processor(d: Path):  # noqa: ANN202
    from transformers import BlipImageProcessor, BlipProcessor

    return BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), _bert_tokenizer(d, bos_token="[DEC]"))


def _save_blip(d: Path, model_class: str, seed: int) -> Path:
    import transformers

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    getattr(transformers, model_class)(_blip_config()).save_pretrained(d)
    _blip_processor(d).save_pretrained(d)
    return d


def save_blip_captioner(d: Path, seed: int = 0) -> Path:
    return _save_blip(d, "BlipForConditionalGeneration", seed)


def save_blip_vqa(d: Path, seed: int = 0) -> Path:
    return _save_blip(d, "BlipForQuestionAnswering", seed)


def save_vilt_vqa(d: Path, seed: int = 0) -> Path:
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = ["yes", "no", "2", "red", "cat"]
    cfg = ViltConfig(vocab_size=len(WORDS), image_size=32, patch_size=8, max_image_length=-1, num_images=1,
                     max_position_embeddings=40, id2label=dict(enumerate(labels)),
                     label2id={lab: i for i, lab in enumerate(labels)}, **SMALL)
    ViltForQuestionAnswering(cfg).save_pretrained(d)
    ViltProcessor(ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8), _bert_tokenizer(d)).save_pretrained(d)
    return d


def save_detr(d: Path, seed: int = 0) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = ["cat", "dog", "ball"]
    cfg = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 16], depths=[1, 1, 1, 1],
                                     layer_type="basic", out_features=["stage4"]),
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=6,
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
    )
    DetrForObjectDetection(cfg).save_pretrained(d)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 48}).save_pretrained(d)
    return d


def save_owlvit(d: Path, seed: int = 0) -> Path:
    from transformers import CLIPTokenizer, OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # id 0 is padding: OWL-ViT treats a query whose first id is 0 as padding
    tokens = ["!", "<|startoftext|>", "<|endoftext|>", "a</w>", "c", "a", "t</w>", "d", "o", "g</w>", "ca", "do",
              "cat</w>", "dog</w>"]  # fmt: skip
    vocab = {t: i for i, t in enumerate(tokens)}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="!")
    cfg = OwlViTConfig(
        text_config=dict(vocab_size=len(tokens), max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, **SMALL),
        vision_config=dict(image_size=32, patch_size=8, **SMALL),
        projection_dim=32,
    )
    OwlViTForObjectDetection(cfg).save_pretrained(d)
    img = OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    OwlViTProcessor(image_processor=img, tokenizer=tok).save_pretrained(d)
    return d


def save_vit_classifier(d: Path, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = ["tabby, tabby cat", "golden retriever", "park bench"]
    cfg = ViTConfig(image_size=32, patch_size=8, id2label=dict(enumerate(labels)),
                    label2id={lab: i for i, lab in enumerate(labels)}, **SMALL)
    ViTForImageClassification(cfg).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d
