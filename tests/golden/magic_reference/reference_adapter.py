"""Adapter (written for mmbench): runs the authors' MAGIC (yxuansu/MAGIC, image_captioning/)
unchanged beside mmbench, with two shims for transformers 5's cache objects. None of their code is
stored here: point MAGIC_ROOT at a checkout of their repository (default: ./MAGIC next to this file).

Contract used by benchmarks/bench_magic.py --reference (and the golden of tests/test_magic_reference.py):
    make_reference(gpt2_dir, clip_dir, device="cpu") -> callable(image, *, k, alpha, beta, decoding_len, window)
        -> (token_ids_after_start_cut_at_eos, caption_text, raw_ids)

    python benchmarks/bench_magic.py --reference tests/golden/magic_reference/reference_adapter.py \
        --size base --images 9 --device cuda
"""
import os
import sys
import types

import torch

MAGIC_ROOT = os.environ.get("MAGIC_ROOT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "MAGIC"))
sys.path.insert(0, os.path.join(MAGIC_ROOT, "image_captioning", "language_model"))
sys.path.insert(0, os.path.join(MAGIC_ROOT, "image_captioning", "clip"))
# simctg.py imports plotting libraries it never uses in decoding
sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))

import utlis  # noqa: E402  (authors' code)
from simctg import SimCTG  # noqa: E402
from clip import CLIP  # noqa: E402


# --- shims: transformers 5 returns a DynamicCache, not tuples of (key, value) ---------------
def enlarge_past_key_values(past_key_values, beam_width):
    past_key_values.batch_repeat_interleave(beam_width)  # == their unsqueeze/expand/reshape
    return past_key_values


def select_past_key_values(past_key_values, beam_width, selected_idx):
    bsz = past_key_values.layers[0].keys.shape[0] // beam_width
    past_key_values.batch_select_indices(torch.arange(bsz) * beam_width + selected_idx)  # == split/index
    return past_key_values


_margins = []
_orig_rank = utlis.plug_and_play_fast_ranking


def _recording_rank(context_hidden, next_hidden, next_top_k_ids, next_top_k_probs, alpha, beta, batch_class_score, beam_width):
    """Their ranking, unchanged; also records best-minus-second score (how close each choice was)."""
    sel = _orig_rank(context_hidden, next_hidden, next_top_k_ids, next_top_k_probs, alpha, beta, batch_class_score, beam_width)
    nc = context_hidden / context_hidden.norm(dim=2, keepdim=True)
    nn_ = next_hidden / next_hidden.norm(dim=2, keepdim=True)
    pen = torch.matmul(nc, nn_.transpose(1, 2)).squeeze(-1).max(dim=-1)[0]
    sc = (1.0 - alpha) * next_top_k_probs.view(-1) - alpha * pen + beta * batch_class_score.view([beam_width])
    top2 = sc.topk(2).values
    _margins.append(float(top2[0] - top2[1]))
    return sel


utlis.plug_and_play_fast_ranking = _recording_rank
utlis.enlarge_past_key_values = enlarge_past_key_values
utlis.select_past_key_values = select_past_key_values

SOS, PAD = "<-start_of_text->", "<-pad->"


def full_mask_forward(model):
    """Their candidate step passes a [B*K, 1] all-ones mask with a cache of S tokens. On the
    transformers they used (4.x) it broadcast over all S+1 keys (= no masking); transformers 5
    reads a short mask differently (measured: hidden states change by ~2). Widen it to all ones."""
    inner = model.forward

    def forward(*args, attention_mask=None, **kw):
        cache = kw.get("past_key_values", kw.get("cache"))
        ids = kw.get("input_ids")
        if attention_mask is not None and cache is not None and cache.get_seq_length() > 0:
            if bool(attention_mask.all()):
                attention_mask = attention_mask.new_ones(ids.shape[0], cache.get_seq_length() + ids.shape[1])
        return inner(*args, attention_mask=attention_mask, **kw)

    model.forward = forward


def make_reference(gpt2_dir, clip_dir, device="cpu"):
    lm = SimCTG(str(gpt2_dir), SOS, PAD).eval().to(device)
    full_mask_forward(lm.model)
    clip = CLIP(str(clip_dir)).eval().to(device)
    start = torch.LongTensor(lm.tokenizer.convert_tokens_to_ids(lm.tokenizer.tokenize(SOS))).view(1, -1).to(device)
    captured = {}
    orig_parse = lm.parse_output_token_list

    def parse(output):  # record the raw ids the authors' parser sees, then parse as they do
        captured["raw"] = output.tolist()
        return orig_parse(output)

    lm.parse_output_token_list = parse

    def caption(image, *, k, alpha, beta, decoding_len, window=60):
        _margins.clear()
        text = lm.magic_search(start, k, alpha, decoding_len, beta, image, clip, window)
        raw = captured["raw"]
        ids = []
        for t in raw[start.shape[1]:]:
            if t == lm.eos_token_id:
                break
            ids.append(t)
        caption.margins = list(_margins)
        return ids, text, raw

    caption.lm, caption.clip, caption.start_ids = lm, clip, start[0].tolist()
    caption.device = device
    return caption
