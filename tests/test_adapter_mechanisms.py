"""The mechanism that defines each connector variant, as its paper describes it.

Frozen trains the vision encoder (the LLM frozen); PaLM-E puts the encoder tokens where ``<img>``
stands in the text, several images per sequence; Flamingo at paper size has the paper's shapes,
an end-of-chunk token between examples and OpenFlamingo's feed-forward scope.
"""

from __future__ import annotations

import pytest
import torch

from harness.interface import Request, Shot
from paradigms.trained_adapter.connectors import (
    PAPER_FLAMINGO,
    FlamingoConnector,
    FlamingoOptions,
    FrozenOptions,
    GatedCrossAttentionBlock,
)
from paradigms.trained_adapter.encoder_tail import FrontEncoder
from paradigms.trained_adapter.multimodal import EndOfChunk, Target
from paradigms.trained_adapter.multimodal import Image as Img
from paradigms.trained_adapter.paradigm import (
    FlamingoAdapter,
    FrozenAdapter,
    FrozenFixedEncoderAdapter,
    PalmeAdapter,
    caption_rows,
)
from harness.models.llm import GenerationSettings
from tests.support import adapter_backbones, fast_adapter_options, skimage_image

GEN = GenerationSettings(max_new_tokens=8, stop=("\n",))


# ----------------------------------------------------------------------------- Frozen


@pytest.mark.slow
def test_frozen_trains_the_encoder_and_not_the_llm(encoder, tiny_llm, tmp_path, skimage_pairs):
    llm_before = {k: v.clone() for k, v in tiny_llm.model.state_dict().items()}
    shared_before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    p = FrozenAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), fast_adapter_options(FrozenAdapter, lr=1e-2), GEN)
    assert p.options.connector.encoder == "last"  # the default: Frozen's trained encoder
    init_tail = {k: v.clone() for k, v in p.new_connector().encoder_tail.state_dict().items()}
    p.prepare_with(skimage_pairs, progress=False)
    tail = p.mm.connector.encoder_tail
    # the tail starts as the encoder's own last blocks ...
    n = len(encoder.model._blocks)
    ref = encoder.model._blocks[n - 4]._project_conv.weight
    assert torch.equal(init_tail["blocks.0._project_conv.weight"], ref)
    # ... and training moved the encoder's weights (every trained conv), not the LLM's
    changed = [k for k, v in tail.state_dict().items() if k.endswith("conv.weight") and not torch.equal(v, init_tail[k])]
    convs = [k for k in init_tail if k.endswith("conv.weight")]
    assert convs and changed == convs
    after = tiny_llm.model.state_dict()
    assert all(torch.equal(llm_before[k], after[k]) for k in llm_before)
    # BatchNorm running statistics stay ImageNet's; the shared encoder is untouched
    assert torch.equal(tail.head[1].running_mean, init_tail["head.1.running_mean"])
    assert all(torch.equal(v, encoder.model.state_dict()[k]) for k, v in shared_before.items())
    assert p.trainable_params > sum(x.numel() for x in p.mm.connector.proj.parameters())


@pytest.mark.parametrize("mode,blocks", [("last", 2), ("all", 1)])
def test_frozen_front_plus_untrained_tail_is_the_encoder(encoder, tiny_llm, tmp_path, mode, blocks):
    opts = FrozenAdapter.Options(connector=FrozenOptions(encoder=mode, encoder_blocks=blocks))
    p = FrozenAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), opts, GEN)
    front = p.feature_encoder()
    assert isinstance(front, FrontEncoder)
    img = [skimage_image("coffee")]
    with torch.no_grad():
        got = p.new_connector().eval().encoder_tail(front.features(img))
    torch.testing.assert_close(got, encoder.encoder.features(img), atol=1e-4, rtol=1e-4)


def test_frozen_fixed_encoder_ablation_keeps_the_old_keys(encoder, tiny_llm, tmp_path):
    fixed = FrozenOptions(encoder="fixed")
    assert fixed.model_dump(mode="json") == {"kind": "frozen", "n_prefix": 2}  # the dump before the option
    assert FrozenOptions().model_dump(mode="json") == {"kind": "frozen", "n_prefix": 2, "encoder": "last",
                                                       "encoder_blocks": 4}
    p = FrozenFixedEncoderAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), FrozenFixedEncoderAdapter.Options(), GEN)
    assert p.name == "trained_adapter/frozen_fixed_encoder"
    assert p.new_connector().encoder_tail is None and p.feature_encoder() is encoder


# ----------------------------------------------------------------------------- PaLM-E


def test_palme_image_tokens_sit_at_the_placeholders(encoder, tiny_llm, tmp_path):
    p = PalmeAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), fast_adapter_options(PalmeAdapter, steps=0), GEN)
    p.prepare()
    shots = tuple(Shot(f"d{k}", k, skimage_image(k), "Question: what is it? Short answer:", ans, question="what is it?")
                  for k, ans in (("coffee", "coffee"), ("rocket", "a rocket")))
    req = Request("q", "chelsea", skimage_image("chelsea"), "Question: what animal? Short answer:", shots=shots,
                  kind="vqa", question="what animal?")
    row, feats, shown = p._row(req)
    assert shown == ("Q:<image> what is it? A: coffee\nQ:<image> what is it? A: a rocket\nQ:<image> what animal? A:")
    mm = p.mm
    batch = mm.build([row], [feats])
    vis = mm.connector(feats)  # [3 images, 9 tokens, d]
    emb = mm.embed
    tok = tiny_llm.tokenizer

    def text(s: str) -> torch.Tensor:
        return emb(torch.tensor(tok(s, add_special_tokens=False).input_ids))

    expected = torch.cat([
        text("Q:"), vis[0], text(" what is it? A:"), text(" coffee\n"),
        text("Q:"), vis[1], text(" what is it? A:"), text(" a rocket\n"),
        text("Q:"), vis[2], text(" what animal? A:"),
    ])
    torch.testing.assert_close(batch.embeds[0], expected)
    # the image tokens are exactly where media_idx switches to the next image, after each "Q:"
    starts = [int((batch.media_idx[0] == j).nonzero()[0]) for j in range(3)]
    assert starts[0] == len(tok("Q:", add_special_tokens=False).input_ids)
    ans = p.answer_batch([req])[0]
    assert ans.error is None and ans.trace["visual_positions"] == 27


def test_palme_placeholder_in_a_task_prompt_and_errors(encoder, tiny_llm, tmp_path):
    p = PalmeAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), fast_adapter_options(PalmeAdapter, steps=0), GEN)
    req = Request("q", "coffee", skimage_image("coffee"), "Look at <img> and answer: what is it?", kind="multiple_choice",
                  choices=("a cup", "a cat"))
    row, _, shown = p._row(req)
    assert row[0] == "Look at" and isinstance(row[1], Img) and shown.startswith("Look at<image> and answer")
    bad = Request("q", "coffee", skimage_image("coffee"), "<img> then <img>?", kind="multiple_choice", choices=("a", "b"))
    out = p.answer_batch([bad, req])
    assert out[0].error and "placeholders" in out[0].error and out[1].error is None
    with pytest.raises(ValueError, match="one <img>"):
        PalmeAdapter.Options(vqa_prompt="Q: <img> <img> {question} A:")
    # training rows use the same layout: the caption prompt without <img> keeps the image first
    opts = PalmeAdapter.Options(caption_prompt="Photo <img> caption:")
    q = PalmeAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), opts, GEN)
    row, _ = caption_rows([type("P", (), {"caption": "a cup", "image_id": "x"})()], 0, 1, opts.caption_prompt,
                          q._example)
    assert row[0] == "Photo" and isinstance(row[1], Img) and row[2] == " caption:" and isinstance(row[3], Target)


# ----------------------------------------------------------------------------- Flamingo


def test_flamingo_block_at_paper_size_has_the_papers_shapes():
    """OpenFlamingo-3B: MPT-1B (d 2048, 24 layers), ViT-L/14 features (1024), 64 latents, 6 resampler
    layers, heads 8 × 64, feed-forward × 4, a gated cross-attention block before every layer."""
    opts = FlamingoOptions(**PAPER_FLAMINGO)
    with torch.device("meta"):
        conn = FlamingoConnector(opts, feature_dim=1024, d_model=2048, n_layers=24, emb_std=0.02)
        out = conn(torch.empty(2, 1024, 16, 16))  # 256 patches of a 224-px ViT-L/14
    assert tuple(conn.resampler.latents.shape) == (64, 1024) and tuple(out.shape) == (2, 64, 1024)
    assert len(conn.resampler.layers) == 6
    layer = conn.resampler.layers[0]
    assert tuple(layer.attn.to_q.weight.shape) == (512, 1024) and tuple(layer.attn.to_kv.weight.shape) == (1024, 1024)
    assert tuple(layer.ff[1].weight.shape) == (4096, 1024)
    assert conn.layer_ids == tuple(range(24)) and len(conn.blocks) == 24
    block = conn.blocks[0]
    assert (block.heads, block.head_dim) == (8, 64)
    assert tuple(block.to_q.weight.shape) == (512, 2048) and tuple(block.to_kv.weight.shape) == (1024, 1024)
    assert tuple(block.to_out.weight.shape) == (2048, 512) and tuple(block.ff[1].weight.shape) == (8192, 2048)
    assert tuple(conn.eoc_token.shape) == (1, 2048) and block.ff_all
    # Flamingo-9B: a block every 4th of 32 layers
    with torch.device("meta"):
        nine = FlamingoConnector(FlamingoOptions(**{**PAPER_FLAMINGO, "xattn_every": 4}), 1024, 4096, 32, 0.02)
    assert nine.layer_ids == (0, 4, 8, 12, 16, 20, 24, 28)


def test_flamingo_new_options_keep_old_keys_and_ff_scope_is_openflamingos():
    assert FlamingoOptions().model_dump(mode="json") == {
        "kind": "flamingo", "n_latents": 16, "resampler_dim": 256, "resampler_depth": 1, "heads": 4,
        "xattn_every": 15, "ff_mult": 2}
    torch.manual_seed(0)
    x = torch.randn(1, 6, 32)
    media = torch.randn(1, 1, 4, 16)
    media_idx = torch.tensor([[-1, -1, 0, 0, 0, 0]])  # two text tokens before the image
    outs = {}
    for scope in (False, True):
        torch.manual_seed(1)
        b = GatedCrossAttentionBlock(32, 16, 4, 2, ff_all=scope)
        with torch.no_grad():
            b.ff_gate.fill_(1.0)
            outs[scope] = b(x, media, media_idx)
    assert torch.equal(outs[False][0, :2], x[0, :2])  # zeroed before any image
    assert not torch.allclose(outs[True][0, :2], x[0, :2])  # OpenFlamingo: applied to every token
    assert torch.equal(outs[False][0, 2:], outs[True][0, 2:])


def test_flamingo_end_of_chunk_closes_each_example_in_order(encoder, tiny_llm, tmp_path):
    opts = FlamingoAdapter.Options(connector=FlamingoOptions(end_of_chunk=True), train={"steps": 0})
    p = FlamingoAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), opts, GEN)
    p.prepare()
    shots = tuple(Shot(k, k, skimage_image(k), "Caption:", f"photo {k}") for k in ("rocket", "coffee"))
    req = Request("q", "chelsea", skimage_image("chelsea"), "Write a caption.", shots=shots, kind="caption")
    row, feats, shown = p._row(req)
    assert shown == "<image>Caption: photo rocket\n<EOC><image>Caption: photo coffee\n<EOC><image>Caption:"
    assert [type(x).__name__ for x in row].count("EndOfChunk") == 2
    batch = p.mm.build([row], [feats])
    eoc = p.mm.connector.eoc_token[0]
    hits = [t for t in range(batch.embeds.shape[1]) if torch.equal(batch.embeds[0, t], eoc)]
    assert len(hits) == 2 and batch.labels[0, hits].eq(-100).all()
    # the demonstrations keep the order they were given (the shot sampler orders them)
    assert shown.index("rocket") < shown.index("coffee")
    # interleaved training rows: one <EOC> per pair, the loss on every caption
    pairs = [type("P", (), {"caption": c, "image_id": c})() for c in ("a", "b", "c", "d")]
    row, ids = caption_rows(pairs, 1, 3, "Caption:", p._example)
    assert len(ids) == 3 and sum(isinstance(x, Target) for x in row) == 3
    assert sum(isinstance(x, EndOfChunk) for x in row) == 3
