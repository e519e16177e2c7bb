"""Stand-in for OpenAI's ``clip`` package that serves a transformers ``CLIPModel`` folder (env ``ZC_CLIP_DIR``).

Used only beside the ZeroCap reference (``run_reference.py``, transformers 4.30 venv); never imported by
mmbench. The authors' code calls ``clip.load``, ``clip.tokenize``, ``model.encode_image``,
``model.encode_text`` and ``model.transformer.parameters()``: exactly those exist here, computed as
mmbench's ``HFClipScorer`` computes them (projection of the pooled output; the tokenizer and image
settings saved with the tiny CLIP), so both sides use the same scorer. ``tokenize`` keeps the clip
package's contract: start and end tokens, zero-padded to 77, an error (not truncation) when longer.
``encode_text`` passes no attention mask, as OpenAI's CLIP: the causal mask alone, pooled at the
first end token. The folder's ``tokenizer.json`` is the tiny CLIP's, with merges written as
``"a b"`` strings for tokenizers 0.13 (``make_zerocap_golden.py`` does that).
"""

import json
import os

import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

_DIR = os.environ["ZC_CLIP_DIR"]
_TOK = None


def _tokenizer():
    global _TOK
    if _TOK is None:
        _TOK = CLIPTokenizerFast.from_pretrained(_DIR)
    return _TOK


def tokenize(texts, context_length=77, truncate=False):
    if isinstance(texts, str):
        texts = [texts]
    ids = _tokenizer()(list(texts), add_special_tokens=True)["input_ids"]
    out = torch.zeros(len(ids), context_length, dtype=torch.long)
    for i, t in enumerate(ids):
        if len(t) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {texts[i]} is too long for context length {context_length}")
            t = t[:context_length]
            t[-1] = _tokenizer().eos_token_id
        out[i, : len(t)] = torch.tensor(t)
    return out


class _CLIP(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.transformer = model.text_model  # the reference zeroes this module's gradients

    def encode_image(self, pixels):
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    def encode_text(self, ids):
        return self.model.text_projection(self.model.text_model(input_ids=ids).pooler_output)


def load(name, device="cpu", download_root=None, jit=False):
    """``name`` is ignored (the reference asks for ViT-B/32): the tiny CLIP at ``ZC_CLIP_DIR`` is served."""
    model = CLIPModel.from_pretrained(_DIR).eval()
    cfg = json.load(open(os.path.join(_DIR, "processor_config.json")))["image_processor"]
    cfg.pop("image_processor_type", None)
    proc = CLIPImageProcessor(**cfg)

    def preprocess(image):
        return proc(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    return _CLIP(model).to(device), preprocess
