"""Trained-adapter paradigm: connectors, training loop (checkpoints, resume) and answering.

Structural tests use the 2-layer random ``tiny_llm`` on real skimage photographs; the learning
test uses the packaged SmolLM2 on real Flickr8k photos with their human captions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.interface import Request, Shot
from harness.models.llm import GenerationSettings
from harness.training import FINAL_FILE, STATE_FILE, TrainOptions, batch_indices, lr_at
from paradigms.trained_adapter.data import CaptionPair
from paradigms.trained_adapter.multimodal import Image as Img
from paradigms.trained_adapter.multimodal import MultimodalLM, Target
from paradigms.trained_adapter.paradigm import FlamingoAdapter, FrozenAdapter, PalmeAdapter, Blip2Adapter
from tests.support import adapter_backbones, fast_adapter_options, shared_data, skimage_image, tiny_llama_text_config

GEN = GenerationSettings(max_new_tokens=8, stop=("\n",))


# ----------------------------------------------------------------------------- Flamingo gate


def test_flamingo_untrained_gates_leave_llm_outputs_unchanged(encoder, tiny_llm, tmp_path, skimage_pairs):
    p = FlamingoAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), FlamingoAdapter.Options(), GEN)
    conn = p.new_connector().eval()
    mm = MultimodalLM(tiny_llm, conn)
    feats = torch.stack([p._feature(k, skimage_image(k)) for k in ("coffee", "rocket")])
    rows = [
        ["A photo.", Img(0), "Caption:", Target(" a cup"), Img(1), "Caption:", Target(" a rocket")],
        [Img(1), "Question: what is it? Short answer:"],
    ]
    with torch.no_grad():
        batch = mm.build(rows, [feats, feats])
        with_xattn = mm.logits(batch)
        plain = tiny_llm.model(
            inputs_embeds=batch.embeds, attention_mask=batch.mask, position_ids=batch.positions
        ).logits
        assert torch.equal(with_xattn, plain)
        # Text only: identical to the plain LLM on token ids.
        text = "Caption: a dog runs on the grass"
        ids = tiny_llm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        only_text = mm.logits(mm.build([[text]], [torch.zeros(0, *feats.shape[1:])]))
        assert torch.equal(only_text, tiny_llm.model(input_ids=ids).logits)
        # Opening the gates changes exactly the positions at or after an image.
        for block in conn.blocks:
            block.attn_gate.fill_(0.5)
        opened = mm.logits(batch)
    first_img = int((batch.media_idx[0] >= 0).nonzero()[0])
    assert torch.equal(opened[0, :first_img], plain[0, :first_img])
    assert not torch.allclose(opened[0, first_img:], plain[0, first_img:])
    # The shared LLM module itself carries no hooks after the call.
    assert all(not layer._forward_pre_hooks for layer in tiny_llm.model.model.layers)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cls", [FrozenAdapter, FlamingoAdapter, Blip2Adapter, PalmeAdapter])
@pytest.mark.slow
def test_training_keeps_llm_bit_identical_and_checkpoint_round_trips(encoder, cls, tiny_llm, tmp_path, skimage_pairs):
    before = {k: v.clone() for k, v in tiny_llm.model.state_dict().items()}
    bb = adapter_backbones(tiny_llm, tmp_path, encoder)
    p = cls(bb, fast_adapter_options(cls), GEN)
    result = p.prepare_with(skimage_pairs, progress=False)
    after = tiny_llm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not q.requires_grad for q in tiny_llm.model.parameters())
    assert [s for s, _ in result.loss_curve] == [1, 2, 3, 4]
    assert (p.checkpoint_dir / FINAL_FILE).exists() and not (p.checkpoint_dir / STATE_FILE).exists()

    q = cls(bb, fast_adapter_options(cls), GEN)
    loaded = q.prepare_with(skimage_pairs, on_step=_fail_if_called, progress=False)
    assert loaded.loss_curve == result.loss_curve
    a, b = p.mm.connector.state_dict(), q.mm.connector.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    req = Request("s", "chelsea", skimage_image("chelsea"), "Write a caption.", kind="caption", max_new_tokens=6)
    ans_p, ans_q = p.answer_batch([req])[0], q.answer_batch([req])[0]
    assert ans_p.error is None and ans_p.text == ans_q.text
    assert ans_p.trainable_params == sum(t.numel() for t in q.mm.connector.parameters()) > 0
    # A different seed is a different adapter (the key covers the training options).
    r = cls(bb, fast_adapter_options(cls, seed=1), GEN)
    assert r.checkpoint_key(skimage_pairs) != q.checkpoint_key(skimage_pairs)


def _fail_if_called(step: int, loss: float) -> None:
    raise AssertionError("a finished checkpoint must be loaded, not retrained")


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("cls", [FrozenAdapter, FlamingoAdapter])
@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(encoder, cls, tiny_llm, tmp_path, skimage_pairs):
    opts = fast_adapter_options(cls, steps=6, save_every=2, lr=3e-3)
    full = cls(adapter_backbones(tiny_llm, tmp_path / "a", encoder), opts, GEN)
    full_result = full.prepare_with(skimage_pairs, progress=False)

    bb = adapter_backbones(tiny_llm, tmp_path / "b", encoder)

    def crash(step: int, loss: float) -> None:
        if step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        cls(bb, opts, GEN).prepare_with(skimage_pairs, on_step=crash, progress=False)
    resumed = cls(bb, opts, GEN)
    result = resumed.prepare_with(skimage_pairs, progress=False)
    assert result.resumed_from == 2
    assert result.loss_curve == full_result.loss_curve
    a, b = full.mm.connector.state_dict(), resumed.mm.connector.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cls", [FrozenAdapter, FlamingoAdapter])
def test_untrained_baseline_is_the_seeded_initial_connector(encoder, cls, tiny_llm, tmp_path):
    """``train.steps: 0`` evaluates the connector as initialised: nothing trained, loaded or stored."""
    bb = adapter_backbones(tiny_llm, tmp_path, encoder)
    untrained = cls(bb, fast_adapter_options(cls, steps=0), GEN)
    untrained.prepare()  # must not load or encode the (default) training data
    assert untrained.train_result.steps == 0 and untrained.train_result.loss_curve == []
    assert untrained.checkpoint_dir is None and not (tmp_path / "adapters").exists()
    init = cls(bb, fast_adapter_options(cls), GEN).new_connector().state_dict()
    got = untrained.mm.connector.state_dict()
    assert all(torch.equal(init[k], got[k]) for k in init)
    trained = cls(bb, fast_adapter_options(cls), GEN)
    assert untrained.fingerprint() != trained.fingerprint()
    req = Request("a", "rocket", skimage_image("rocket"), "Write a short caption.", kind="caption", max_new_tokens=4)
    ans = untrained.answer_batch([req])[0]
    assert ans.error is None and ans.trace["untrained"] is True and ans.trace["trained_steps"] == 0
    assert ans.trace["final_train_loss"] is None and ans.trainable_params > 0


def test_lr_mult_scales_matching_parameters_and_keeps_old_keys():
    """An empty ``lr_mult`` leaves the options' dump unchanged (old adapter keys and caches stay valid)."""
    from harness.training import param_groups

    assert "lr_mult" not in TrainOptions().model_dump()
    conn = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)})
    conn.attn_gate = torch.nn.Parameter(torch.zeros(1))
    groups = param_groups(conn, TrainOptions(lr_mult={"_gate": 10.0}))
    assert [(g["lr_mult"], len(g["params"])) for g in groups] == [(1.0, 2), (10.0, 1)]


def test_schedule_and_batches_are_functions_of_the_step():
    o = TrainOptions(steps=10, batch_size=4, warmup_steps=2, lr=1.0, seed=3)
    assert lr_at(0, o) == 0.5 and lr_at(1, o) == 1.0 and lr_at(9, o) < lr_at(2, o)
    first_epoch = [i for s in range(3) for i in batch_indices(s, 0, 12, o)]
    assert sorted(first_epoch) == list(range(12))  # every example once per epoch
    assert batch_indices(5, 0, 12, o) == batch_indices(5, 0, 12, o)


# ----------------------------------------------------------------------------- answering


@pytest.mark.parametrize("cls", [FrozenAdapter, FlamingoAdapter])
@pytest.mark.slow
def test_answers_are_batch_invariant_and_bad_samples_fail_alone(encoder, cls, tiny_llm, tmp_path, skimage_pairs):
    p = cls(adapter_backbones(tiny_llm, tmp_path, encoder), fast_adapter_options(cls), GEN)
    p.prepare_with(skimage_pairs, progress=False)
    shots = tuple(
        Shot(f"s{w}", k, skimage_image(k), "This is a", w) for k, w in (("coffee", "dax"), ("chelsea", "blicket"))
    )
    reqs = [
        Request("a", "rocket", skimage_image("rocket"), "Write a short caption.", kind="caption", max_new_tokens=7),
        Request("b", "coffee", skimage_image("coffee"), "Question: what is on the table? Short answer:", max_new_tokens=4),
        Request("c", "none", None, "Question: ?", max_new_tokens=4),
        Request("d", "chelsea", skimage_image("chelsea"), "This is a", shots=shots, kind="binding", max_new_tokens=3),
        Request("e", "coffee", skimage_image("coffee"), "Q: what?", kind="multiple_choice", choices=("cup", "rocket", "cat")),
    ]
    together = p.answer_batch(reqs)
    alone = [p.answer_batch([r])[0] for r in reqs]
    assert [a.text for a in together] == [a.text for a in alone]
    assert together[2].error and "no image" in together[2].error
    assert all(a.error is None for i, a in enumerate(together) if i != 2)
    assert together[4].text in ("cup", "rocket", "cat") and len(together[4].trace["choice_logprobs"]) == 3
    # The binding episode is one interleaved sequence: both support images and the query.
    assert together[3].trace["prompt"].count("<image>") == 3 and "dax" in together[3].trace["prompt"]
    assert together[0].trace["prompt"].endswith("Caption:")  # captions use the training prompt
    assert together[0].llm_tokens_in > 0 and together[0].llm_tokens_out <= 7


# ----------------------------------------------------------------------------- learning (real)


def _flickr_pairs(n_images: int) -> list[list[CaptionPair]]:
    root = shared_data("flickr8k-subset")
    by_image: dict[str, list[str]] = {}
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_image.setdefault(row["image"], []).append(row["caption"])
    names = sorted(by_image)[:n_images]

    def load(name: str) -> Image.Image:
        with Image.open(root / "images" / name) as im:
            return im.convert("RGB")

    return [[CaptionPair(n, (lambda n=n: load(n)), c) for c in by_image[n]] for n in names]


@pytest.mark.slow
def test_short_training_on_real_captions_lowers_train_and_heldout_nll(encoder, smollm2, tmp_path):
    groups = _flickr_pairs(20)
    train_pairs = [p for g in groups[:14] for p in g]
    held = [p for g in groups[14:] for p in g]
    cls = FrozenAdapter
    opts = cls.Options(train=TrainOptions(steps=12, batch_size=4, lr=2e-3, save_every=100, warmup_steps=2))
    p = cls(adapter_backbones(smollm2, tmp_path, encoder), opts, GEN)
    untrained = MultimodalLM(smollm2, p.new_connector().eval())
    result = p.prepare_with(train_pairs, progress=False)
    assert len(result.loss_curve) == 12 and all(l == l for _, l in result.loss_curve)  # no NaN

    def nll(mm: MultimodalLM, pairs: list[CaptionPair]) -> float:
        """Mean caption NLL per token on fixed pairs (the per-step training loss is too noisy)."""
        feats = [p._feature(h.image_id, h.load_image()).unsqueeze(0) for h in pairs]
        rows = [[Img(0), opts.caption_prompt, Target(" " + h.caption.strip() + "\n")] for h in pairs]
        with torch.no_grad():
            return float(mm.loss(mm.build(rows, feats)))

    train_before, train_after = nll(untrained, train_pairs), nll(p.mm, train_pairs)
    before, after = nll(untrained, held), nll(p.mm, held)
    print(f"caption NLL untrained -> trained: train {train_before:.3f} -> {train_after:.3f}, held-out {before:.3f} -> {after:.3f}")
    assert train_after < train_before - 0.1, (train_before, train_after)
    assert after < before - 0.1, (before, after)


# ----------------------------------------------------------------------------- pretrained BLIP-2


def _save_tiny_blip2(folder: Path, tokenizer_dir: Path) -> Path:
    """A random BLIP-2 (ViT + Q-Former + 1-layer Llama) built from a config, saved like a user's copy."""
    from transformers import (
        AutoTokenizer,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
    )

    torch.manual_seed(0)
    proc = Blip2Processor(
        BlipImageProcessor(size={"height": 32, "width": 32}), AutoTokenizer.from_pretrained(tokenizer_dir), num_query_tokens=4
    )
    tok = proc.tokenizer
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, encoder_hidden_size=32, vocab_size=100
        ).to_dict(),
        text_config=tiny_llama_text_config(tok),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    Blip2ForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_blip2_pretrained_loads_a_local_checkpoint_and_answers(tmp_path, smollm2_dir):
    from harness.registry import get_paradigm

    cls = get_paradigm("trained_adapter/blip2_pretrained")
    folder = _save_tiny_blip2(tmp_path / "blip2", smollm2_dir)
    p = cls(None, cls.Options(model=str(folder)), GEN)
    reqs = [
        Request("a", "chelsea", skimage_image("chelsea"), "Question: what animal is it? Answer:", max_new_tokens=4),
        Request("b", "none", None, "Question: ?"),
        Request("c", "coffee", skimage_image("coffee"), "Write a caption.", kind="caption", max_new_tokens=3),
    ]
    together = p.answer_batch(reqs)
    assert [a.text for a in together] == [p.answer_batch([r])[0].text for r in reqs]
    assert together[1].error and together[0].error is None and together[0].text
    assert together[2].trace["prompt"] == "a photo of" and together[0].llm_tokens_out <= 4
    assert together[0].trainable_params == sum(
        t.numel() for m in (p.model.qformer, p.model.language_projection) for t in m.parameters()
    ) + p.model.query_tokens.numel()


def test_blip2_pretrained_without_weights_says_what_to_do(tmp_path):
    from harness.models.llm import ModelUnavailable
    from harness.registry import get_paradigm

    cls = get_paradigm("trained_adapter/blip2_pretrained")
    empty = tmp_path / "no_blip2_here"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="cannot load BLIP-2"):
        cls(None, cls.Options(model=str(empty)), GEN).prepare()


def test_an_overlong_request_fails_alone_and_its_neighbours_are_answered(encoder, tiny_llm, tmp_path):
    """A row longer than the LLM's positions fails only itself; the rest of its decode batch is
    answered as each would be alone (it used to fail the whole batch, with the same reason cached)."""
    p = FrozenAdapter(adapter_backbones(tiny_llm, tmp_path, encoder), fast_adapter_options(FrozenAdapter, steps=0), GEN)
    p.prepare()  # the seeded untrained connector: answering is what is tested
    limit = p.mm.max_positions()
    reqs = [
        Request("a", "rocket", skimage_image("rocket"), "Write a short caption.", kind="caption", max_new_tokens=5),
        Request("long", "coffee", skimage_image("coffee"), "Describe: " + "and then " * limit, max_new_tokens=4),
        Request("b", "coffee", skimage_image("coffee"), "Question: what is on the table? Short answer:", max_new_tokens=4),
        Request("e", "coffee", skimage_image("coffee"), "Q: what?", kind="multiple_choice", choices=("cup", "rocket")),
    ]
    together = p.answer_batch(reqs)
    assert together[1].error == f"ValueError: sequence longer than the LLM's {limit} positions"
    assert not together[1].transient
    alone = [p.answer_batch([r])[0] for r in (reqs[0], reqs[2], reqs[3])]
    assert all(a.error is None for a in alone)
    assert [a.text for a in (together[0], together[2], together[3])] == [a.text for a in alone]
