"""Guided decoding (MAGIC, ZeroCap): the score rule, cache reuse, batch invariance, real captions.

Constructed cases use ``TrigramScorer``: a real, deterministic text similarity (character-trigram
vectors) whose "image" embedding is the vector of a description we choose, so the scorer's
preference is known in advance. Real-image tests use the project's offline scorer.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image

from harness.interface import Request, Shot
from harness.models.llm import GenerationSettings, cut_at_stop
from paradigms.guided_decoding.common import encode_left_padded, eos_ids
from paradigms.guided_decoding.magic import Magic, MagicOptions
from paradigms.guided_decoding.magic_search import magic_rank, magic_search
from paradigms.guided_decoding.zerocap import ZeroCap, ZeroCapOptions
from paradigms.guided_decoding.zerocap_search import ZeroCapSettings, shift_context, _cache_from
from paradigms.guided_decoding.lm_step import head_logits, trunk_forward
from paradigms.guided_decoding.common import positions_from_mask
from tests.fakes import TrigramScorer

GEN = GenerationSettings(max_new_tokens=16, stop=("\n",))


@dataclass
class Shared:
    llm: Any
    scorer: Any


IMG = Image.new("RGB", (16, 16), (120, 80, 40))
TARGETS = {"dog": "a dog runs on the grass", "kids": "two children play football", "car": "a red car"}


def _requests() -> list[Request]:
    reqs = [Request(f"s-{i}", i, IMG, "Write a short caption for this image.", kind="caption") for i in TARGETS]
    shot = Shot("shot", "car", IMG, "Question: what colour is it? Short answer:", "red")
    reqs.append(
        Request("q", "dog", IMG, "Question: which animal is this? Short answer:", shots=(shot,), kind="vqa",
                question="which animal is this?", max_new_tokens=5)
    )
    return reqs


# ----------------------------------------------------------------------------- MAGIC
def test_cut_at_stop_is_the_earliest_stop_whatever_the_order() -> None:
    """The one cutting rule of every decoder (local and served LLM, MAGIC, ZeroCap, adapters)."""
    assert cut_at_stop("a dog.\nQuestion: b", ("Question:", "\n")) == ("a dog.", True)
    assert cut_at_stop("a dog.\nQuestion: b", ("\n", "Question:")) == ("a dog.", True)
    assert cut_at_stop("a dog\n", ("", ".")) == ("a dog\n", False)  # an empty stop string matches nothing
    assert cut_at_stop("Q: a\nb", ("Q:",)) == ("", True)  # a stop at position 0 still cuts


def test_magic_rank_hand_checked() -> None:
    """Three candidates; each term decides in turn, with numbers one can check by hand."""
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    ctx = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])  # two context states (one pointing along y)
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # cos max: 1, 1, 0.7071
    mask = torch.ones(1, 2, dtype=torch.bool)
    flat = torch.zeros(1, 3)
    # beta = 0, alpha = 0: pure LM -> candidate 0
    assert int(magic_rank(probs, ctx, mask, cand, flat, 0.0, 0.0)[0]) == 0
    # alpha = 0.8: scores 0.1-0.8, 0.06-0.8, 0.04-0.5657 -> candidate 2 (least degenerate)
    sel, terms = magic_rank(probs, ctx, mask, cand, flat, 0.8, 0.0)
    assert int(sel) == 2
    assert torch.allclose(terms["penalty"], torch.tensor([[1.0, 1.0, 2**-0.5]]), atol=1e-6)
    # scorer strongly prefers candidate 1: softmax([0, 10, 0]) ~ [0, 1, 0]; beta = 2 wins
    pref = torch.tensor([[0.0, 10.0, 0.0]])
    sel, terms = magic_rank(probs, ctx, mask, cand, pref, 0.1, 2.0)
    assert int(sel) == 1
    expected = 0.9 * probs - 0.1 * terms["penalty"] + 2.0 * torch.softmax(pref, -1)
    assert torch.allclose(terms["score"], expected)
    # a padded context position must not count in the penalty
    pad_mask = torch.tensor([[True, False]])
    _, terms = magic_rank(probs, ctx, pad_mask, cand, flat, 0.5, 0.0)
    assert torch.allclose(terms["penalty"], torch.tensor([[1.0, 0.0, 2**-0.5]]), atol=1e-6)


def test_magic_kv_cache_reuse_equals_recomputing_prefix(tiny_llm) -> None:
    tok = tiny_llm.tokenizer
    scorer = TrigramScorer(TARGETS)
    img = scorer.embed_images([None, None], ["dog", "car"])
    prompts = ["Write a short caption for this image.\nA", "Caption:"]  # different lengths -> padding
    ids, mask = encode_left_padded(tok, prompts, tiny_llm.device)

    def s_logits(rows, gen, cands):
        texts = [tok.decode(g + [c]) for g, cs in zip(gen, cands.tolist()) for c in cs]
        emb = scorer.embed_texts(texts).view(len(rows), cands.shape[1], -1)
        return 100.0 * torch.einsum("bd,bkd->bk", img[list(rows)], emb)

    kw = dict(k=8, alpha=0.1, beta=2.0, max_new_tokens=8, scorer_logits=s_logits, stop_ids=eos_ids(tiny_llm))
    cached = magic_search(tiny_llm.model, ids, mask, reuse_cache=True, **kw)
    naive = magic_search(tiny_llm.model, ids, mask, reuse_cache=False, **kw)
    assert cached.ids == naive.ids
    assert all(len(x) == 8 for x in cached.ids)
    for a, b in zip(cached.steps, naive.steps):
        for sa, sb in zip(a, b):
            assert sa["lm_rank"] == sb["lm_rank"] and abs(sa["penalty"] - sb["penalty"]) < 1e-3


def test_magic_scorer_steers_choice(tiny_llm) -> None:
    """beta > 0 must change what the random tiny LM would pick, toward the image's description."""
    scorer = TrigramScorer(TARGETS)
    req = [_requests()[0]]
    plain = Magic(Shared(tiny_llm, scorer), MagicOptions(k=20, beta=0.0), GEN).answer_batch(req)[0]
    guided = Magic(Shared(tiny_llm, scorer), MagicOptions(k=20, beta=2.0), GEN).answer_batch(req)[0]
    target = scorer.vec(TARGETS["dog"])
    assert plain.text != guided.text
    assert float(scorer.vec(guided.text) @ target) > float(scorer.vec(plain.text) @ target)
    assert max(s["lm_rank"] for s in guided.trace["steps"]) > 0  # not plain greedy


def test_magic_batch_invariant_and_failures(tiny_llm) -> None:
    scorer = TrigramScorer(TARGETS)
    para = Magic(Shared(tiny_llm, scorer), MagicOptions(k=10, decode_batch=8), GEN)
    reqs = _requests()
    bad = Request("bad", "none", None, "Write a short caption for this image.", kind="caption")
    batch = para.answer_batch([reqs[0], bad, *reqs[1:]])
    assert batch[1].error and not batch[1].text
    alone = [para.answer_batch([r])[0] for r in reqs]
    assert [a.text for a in alone] == [a.text for a in batch[:1] + batch[2:]]
    assert all(a.error is None and a.text for a in alone)
    assert alone[0].text.startswith("A")  # caption prefix kept
    assert "what colour is it? Short answer: red" in alone[3].trace["lm_prompt"]  # shot as Q/A text
    assert alone[3].llm_tokens_out <= 5
    assert scorer.images_embedded.count("dog") <= 1 + len(reqs)  # once per image per call


def test_magic_options_defaults_are_published() -> None:
    o = MagicOptions()
    assert (o.k, o.alpha, o.beta, o.scorer_window) == (45, 0.1, 2.0, 60)
    with pytest.raises(Exception):
        MagicOptions(topk=3)


# ----------------------------------------------------------------------------- ZeroCap
def test_zerocap_shift_moves_distribution_toward_scorer_target(tiny_llm) -> None:
    tok = tiny_llm.tokenizer
    ids, mask = encode_left_padded(tok, ["Image of a"], tiny_llm.device)
    pos = positions_from_mask(mask)
    with torch.no_grad():
        _, cache = trunk_forward(tiny_llm.model, ids[:, :-1], mask[:, :-1], pos[:, :-1], None)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        h0, _ = trunk_forward(tiny_llm.model, ids[:, -1:], mask, pos[:, -1:], _cache_from(kv))
        logp0 = torch.log_softmax(head_logits(tiny_llm.model, h0[:, -1]), -1)
    cand = logp0.topk(50, -1).indices
    wanted = int(cand[0, 30])  # a token the LM ranks 31st; the "scorer" wants only it

    def target_fn(probs):
        t = torch.zeros(1, 50)
        t[0, 30] = 1.0
        return cand, t

    s = ZeroCapSettings(steps=3, step_size=0.3)
    shifted = shift_context(tiny_llm.model, kv, mask, ids[:, -1:], pos[:, -1:], logp0, target_fn, s)
    with torch.no_grad():
        h1, _ = trunk_forward(tiny_llm.model, ids[:, -1:], mask, pos[:, -1:], _cache_from(shifted))
        logp1 = torch.log_softmax(head_logits(tiny_llm.model, h1[:, -1]), -1)
    assert float(logp1[0, wanted]) > float(logp0[0, wanted]) + 0.1
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(kv, shifted))
    # with zero steps nothing moves
    same = shift_context(tiny_llm.model, kv, mask, ids[:, -1:], pos[:, -1:], logp0, target_fn, ZeroCapSettings(steps=0))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(kv, same))


def test_zerocap_batch_invariant_caption_and_vqa(tiny_llm) -> None:
    scorer = TrigramScorer(TARGETS)
    opts = ZeroCapOptions(beam=2, steps=1, top_candidates=16, max_new_tokens=4)
    para = ZeroCap(Shared(tiny_llm, scorer), opts, GEN)
    reqs = _requests()
    batch = para.answer_batch(reqs)
    alone = [para.answer_batch([r])[0] for r in reqs]
    assert [a.text for a in batch] == [a.text for a in alone]
    assert batch[0].text.startswith("Image of a")
    assert len(batch[0].trace["beams"]) == 2
    assert batch[0].trace["chosen_beam"] == max(range(2), key=lambda b: batch[0].trace["beam_scorer_sims"][b])
    assert para.answer_batch([Request("x", "x", None, "p", kind="caption")])[0].error


def test_zerocap_defaults_are_published() -> None:
    o = ZeroCapOptions()
    assert (o.beam, o.steps, o.step_size, o.fluency_weight, o.fusion) == (5, 5, 0.3, 0.2, 0.99)
    assert (o.top_candidates, o.temperature, o.end_factor, o.prompt_prefix) == (512, 0.01, 1.01, "Image of a")


# ----------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_magic_real_smollm2_offline_scorer_caption(smollm2) -> None:
    from tests.support import shared_data

    root = shared_data("flickr8k-subset")
    import harness.models.scorer as scorer_mod  # a broken import must fail this test, not skip it
    from harness.backbones import Backbones
    from harness.config import ModelsConfig

    bb = Backbones(ModelsConfig())
    bb.__dict__["llm"] = smollm2  # reuse the session's loaded LM
    assert isinstance(bb.scorer, scorer_mod.TagEmbeddingScorer)
    path = sorted((root / "images").iterdir())[0]
    image = Image.open(path).convert("RGB")
    para = Magic(bb, MagicOptions(k=12), GEN)  # k cut from 45 to keep CI fast; same code path
    ans = para.answer(image, "Write a short caption for this image.", kind="caption", image_id=path.name,
                      max_new_tokens=8)
    assert ans.error is None, ans.error
    assert len(ans.text.split()) >= 2
    assert ans.trace["scorer"].startswith("tag-minilm")  # labelled as what it is, not CLIP


# ------------------------------------------------------------------ one failing request in a batch
class FlakyScorer(TrigramScorer):
    """Reading image "flaky" is an I/O error (transient); an image it has no description of is a KeyError."""

    def embed_images(self, images: list[Any], image_ids: list[str]) -> torch.Tensor:
        if "flaky" in image_ids:
            raise OSError(errno.EIO, "input/output error reading the image")
        return super().embed_images(images, image_ids)


@pytest.mark.parametrize("variant", ["magic", "zerocap"])
def test_a_failing_request_fails_alone_with_its_own_reason(tiny_llm, variant) -> None:
    """Both failures come back in one batched call: each item alone, classified on its own exception
    (the batch failed with the transient one; the KeyError must still be cached as deterministic)."""
    if variant == "magic":
        para = Magic(Shared(tiny_llm, FlakyScorer(TARGETS)), MagicOptions(k=6, max_new_tokens=4, decode_batch=8), GEN)
    else:
        opts = ZeroCapOptions(beam=2, steps=1, top_candidates=16, max_new_tokens=4, decode_batch=8)
        para = ZeroCap(Shared(tiny_llm, FlakyScorer(TARGETS)), opts, GEN)
    good = _requests()[:3]
    flaky = Request("f", "flaky", IMG, "Write a short caption for this image.", kind="caption")
    unknown = Request("u", "unknown", IMG, "Write a short caption for this image.", kind="caption")
    batch = para.answer_batch([good[0], flaky, unknown, good[1], good[2]])
    assert batch[1].error.startswith("OSError") and batch[1].transient  # not cached: the next run retries it
    assert batch[2].error == "KeyError: 'unknown'" and not batch[2].transient  # cached with its reason
    alone = [para.answer_batch([r])[0] for r in good]
    assert all(a.error is None and a.text for a in alone)
    assert [a.text for a in (batch[0], batch[3], batch[4])] == [a.text for a in alone]
