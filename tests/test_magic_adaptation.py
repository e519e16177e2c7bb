"""MAGIC's LM domain adaptation: the SimCTG loss, training a copy, caching it, and MAGIC using it.

Training tests use the 2-layer random ``tiny_llm`` and the embedded ``photos`` captions (train
split to adapt on, test split held out), so they take seconds; the shared LLM instance must come
out of every adaptation bit-identical.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from harness.config import ConfigError, parse_config
from harness.interface import Request, TrainingRecord
from harness.models.llm import GenerationSettings
from paradigms.guided_decoding import lm_adaptation as la
from paradigms.guided_decoding.lm_adaptation import (
    AdaptationOptions,
    CaptionTextFormat,
    adapt_language_model,
    base_llm_identity,
    caption_nll,
    contrastive_token_loss,
    encode_captions,
    load_corpus,
    load_heldout,
    simctg_loss,
)
from paradigms.guided_decoding.magic import Magic, MagicOptions
from tests.support import shared_data
from tests.fakes import TrigramScorer

GEN = GenerationSettings(max_new_tokens=8, stop=("\n",))
IMG = Image.new("RGB", (16, 16), (120, 80, 40))

#: Small but enough for the random tiny LLM to learn caption statistics (seconds on CPU).
TINY_TRAIN = {"steps": 10, "batch_size": 4, "lr": 1e-2, "warmup_fraction": 0.1, "seed": 0}


@dataclass
class Shared:
    llm: Any
    scorer: Any
    cache_dir: Path


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"shared LLM parameter {k} changed"
    assert not any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------ loss
def test_contrastive_loss_by_hand() -> None:
    """3 real tokens with cosines 0, √2/2, √2/2 and one padded position that would count if unmasked.

    Pair (i, j) costs max(0, ρ − (1 − cos_ij)) = max(0, cos_ij − 0.5) at ρ = 0.5: the pairs (0,2),(2,0),
    (1,2),(2,1) cost √2/2 − 0.5 each, (0,1),(1,0) cost 0; 6 ordered pairs → mean 4(√2/2 − 0.5)/6.
    """
    s = 1 / math.sqrt(2)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [s, s], [1.0, 0.01]]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = 4 * (s - 0.5) / 6
    got = contrastive_token_loss(h, mask, 0.5)
    assert float(got) == pytest.approx(expected, abs=1e-12)
    # unmasked, the 4th token (almost h0) would add its pairs: 12 ordered pairs in all
    n3 = math.hypot(1.0, 0.01)
    c30, c32 = 1.0 / n3, (s + 0.01 * s) / n3  # cos with h0, h2 (with h1: 0.01/n3 < 0.5, no cost)
    unmasked = (4 * (s - 0.5) + 2 * (c30 - 0.5) + 2 * (c32 - 0.5)) / 12
    assert float(contrastive_token_loss(h, torch.ones_like(mask), 0.5)) == pytest.approx(unmasked, abs=1e-12)
    # a larger margin makes every pair cost: (0,1) now costs 0.9 − 1 + 0 < 0 → 0, the others 0.9 − 1 + √2/2
    assert float(contrastive_token_loss(h, mask, 0.9)) == pytest.approx(4 * (s - 0.1) / 6, abs=1e-12)
    # identical hidden states cost the full margin for every pair
    same = torch.ones(1, 3, 2, dtype=torch.float64)
    assert float(contrastive_token_loss(same, torch.ones(1, 3), 0.5)) == pytest.approx(0.5, abs=1e-12)


def _golden_tensors() -> dict[str, torch.Tensor]:
    """Deterministic tensors (no RNG): 3 sequences of 7/5/3 tokens, padded, shifted as the authors do."""
    pad, vocab, dim = 10, 11, 8
    lens = [7, 5, 3]
    seq = torch.full((3, 7), pad, dtype=torch.long)
    for b, n in enumerate(lens):
        seq[b, :n] = (torch.arange(n) * 3 + b) % 10
    inp, tgt = seq[:, :-1], seq[:, 1:]
    t = 6
    hidden = torch.sin(torch.arange(3 * t * dim, dtype=torch.float64) * 0.37 + 0.1).view(3, t, dim)
    logits = torch.cos(torch.arange(3 * t * vocab, dtype=torch.float64) * 0.23).view(3, t, vocab) * 2.0
    return {"logits": logits, "hidden": hidden, "targets": tgt, "input_mask": inp != pad, "target_mask": tgt != pad}


# Recorded by running the authors' SimCTG loss (yxuansu/MAGIC @ acefac6,
# image_captioning/language_model/loss_func.py ``contrastive_loss`` and the ``CrossEntropyLoss`` of
# simctg.py's ``forward``) on exactly these tensors, beside mmbench (their code is not in this repo).
AUTHORS_GOLDEN = {0.5: (2.691333304178738, 0.14993079420161085), 0.9: (2.691333304178738, 0.307073651344468)}


@pytest.mark.parametrize("margin", sorted(AUTHORS_GOLDEN))
def test_simctg_loss_matches_the_authors(margin: float) -> None:
    t = _golden_tensors()
    total, mle, cl = simctg_loss(t["logits"], t["hidden"], t["targets"], t["input_mask"], t["target_mask"], margin)
    g_mle, g_cl = AUTHORS_GOLDEN[margin]
    assert float(mle) == pytest.approx(g_mle, abs=1e-9)
    assert float(cl) == pytest.approx(g_cl, abs=1e-9)
    assert float(total) == pytest.approx(g_mle + g_cl, abs=1e-9)


def test_loss_is_differentiable_and_ignores_padding_content(tiny_llm) -> None:
    """Changing what sits in padded positions changes nothing (mask, not pad ids, decides)."""
    model = copy.deepcopy(tiny_llm.model).float().requires_grad_(True)
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    a = la.lm_simctg_loss(model, seqs, 0.5, pad_id=0)
    b = la.lm_simctg_loss(model, seqs, 0.5, pad_id=2)
    for x, y in zip(a, b):
        assert float(x.detach()) == pytest.approx(float(y.detach()), abs=1e-5)
    a[0].backward()
    assert model.get_input_embeddings().weight.grad is not None


# --------------------------------------------------------------------------- encoding
def test_caption_layout_is_start_text_caption_eos(tiny_llm) -> None:
    tok = tiny_llm.tokenizer
    fmt = CaptionTextFormat()
    seqs, dropped = encode_captions(tok, ["A dog runs on the grass.", "Dog", " two cats sleep "], fmt, max_length=64)
    assert dropped == 1  # "Dog" is one token: too short, as the authors filter
    start = tok(fmt.start_text, add_special_tokens=False).input_ids
    assert seqs[0][: len(start)] == start and seqs[0][-1] == tok.eos_token_id
    assert tok.decode(seqs[0], skip_special_tokens=True) == fmt.start_text + "A dog runs on the grass."
    assert tok.decode(seqs[1], skip_special_tokens=True) == fmt.start_text + "two cats sleep"
    cut, _ = encode_captions(tok, ["one two three four five six"], CaptionTextFormat(append_eos=False), max_length=3)
    assert len(cut[0]) == len(start) + 3 and cut[0][-1] != tok.eos_token_id


# --------------------------------------------------------------------------- training
def _opts(**kw: Any) -> AdaptationOptions:
    return AdaptationOptions(**{"dataset": "photos_caption", "heldout_split": "test", **TINY_TRAIN, **kw})


def test_adaptation_lowers_heldout_loss_keeps_shared_llm_and_is_cached(tiny_llm, tmp_path, monkeypatch) -> None:
    o = _opts()
    corpus = load_corpus(o)
    heldout = load_heldout(o)
    assert len(corpus.captions) == 35 and len(heldout) == 55  # photos: train 7 × 5, test 11 × 5
    assert not set(corpus.captions) & set(heldout)
    before = _state(tiny_llm.model)
    ident = base_llm_identity(Shared(tiny_llm, None, tmp_path))
    first = adapt_language_model(tiny_llm, corpus, o, tmp_path, base_identity=ident, heldout=heldout, progress=False)
    assert first.trained_steps == o.steps and first.meta["resumed_from"] == 0  # trained, from scratch
    _assert_identical(tiny_llm.model, before)
    assert first.llm.model is not tiny_llm.model and first.llm.tokenizer is tiny_llm.tokenizer

    scores = first.meta["heldout"]["test[:55]"]
    seqs, _ = encode_captions(tiny_llm.tokenizer, heldout, o.text_format, o.max_length)
    assert scores["before"] == pytest.approx(caption_nll(tiny_llm.model, seqs, 2), abs=1e-4)
    assert scores["after"] == pytest.approx(caption_nll(first.llm.model, seqs, 2), abs=1e-4)
    assert scores["after"] < 0.85 * scores["before"], scores  # held-out captions, never trained on
    curve = first.meta["loss_curve"]
    assert len(curve) == o.steps and curve[-1][1] < curve[0][1]
    assert all(abs(t - (m + c)) < 1e-4 for _, t, m, c in curve)

    directory = tmp_path / "lm_adaptation" / first.key
    assert (directory / "model.safetensors").is_file() and (directory / "adaptation.json").is_file()
    assert not list(directory.glob("*.tmp"))

    # the second time nothing is trained: the stored weights come back exactly
    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached adaptation must not train")

    monkeypatch.setattr(la, "train", no_training)  # the shared loop (harness.training.train) as the module calls it
    second = adapt_language_model(tiny_llm, corpus, o, tmp_path, base_identity=ident, heldout=heldout, progress=False)
    assert second.trained_steps == 0
    assert second.key == first.key and second.meta == first.meta
    ref = first.llm.model.state_dict()
    for k, v in second.llm.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    _assert_identical(tiny_llm.model, before)


def test_same_options_same_weights_and_key_changes_with_options(tiny_llm, tmp_path) -> None:
    """Training is a function of the options (two folders, same weights); every training option and
    the corpus content change the key."""
    o = _opts(steps=3, heldout_split=None)
    corpus = load_corpus(o)
    ident = base_llm_identity(Shared(tiny_llm, None, tmp_path))
    a = adapt_language_model(tiny_llm, corpus, o, tmp_path / "a", base_identity=ident, progress=False)
    b = adapt_language_model(tiny_llm, corpus, o, tmp_path / "b", base_identity=ident, progress=False)
    assert a.trained_steps == b.trained_steps == 3 and a.key == b.key
    bw = b.llm.model.state_dict()
    assert all(torch.equal(v, bw[k]) for k, v in a.llm.model.state_dict().items())
    keys = {la.adaptation_key(ident, corpus.digest, o)}
    for change in ({"steps": 4}, {"lr": 1e-3}, {"margin": 0.4}, {"seed": 1}, {"max_length": 8},
                   {"text_format": {"start_text": "Caption:"}}, {"text_format": {"append_eos": False}}):
        keys.add(la.adaptation_key(ident, corpus.digest, _opts(**{"steps": 3, "heldout_split": None, **change})))
    keys.add(la.adaptation_key(ident, "another corpus", o))
    keys.add(la.adaptation_key(ident + "x", corpus.digest, o))
    assert len(keys) == 10
    # held-out scoring does not change the weights, so not the key either
    assert la.adaptation_key(ident, corpus.digest, _opts(steps=3)) == la.adaptation_key(ident, corpus.digest, o)


# ------------------------------------------------------------------------------ MAGIC
def _magic(llm: Any, cache: Path, **opts: Any) -> Magic:
    scorer = TrigramScorer({"dog": "a dog runs on the grass", "cat": "a cat sleeps on a sofa"})
    return Magic(Shared(llm, scorer, cache), MagicOptions(**{"k": 4, "max_new_tokens": 6, **opts}), GEN)


def test_magic_fingerprint_reflects_adaptation(tiny_llm, tmp_path) -> None:
    plain = _magic(tiny_llm, tmp_path)
    fp = plain.fingerprint()
    # unchanged from before adaptation existed: cached unadapted answers stay valid
    assert fp["lm_adapted"] is False and "adapt_lm" not in fp["options"]
    plain.prepare()
    assert plain.training_record() is None  # nothing adapted: no training to log
    adapted = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", **TINY_TRAIN})
    other_steps = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", **{**TINY_TRAIN, "steps": 11}})
    other_data = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", "split": "test", **TINY_TRAIN})
    scored = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", "heldout_split": "test", **TINY_TRAIN})
    fps = [m.fingerprint() for m in (plain, adapted, other_steps, other_data)]
    assert len({str(f) for f in fps}) == 4
    assert fps[1]["lm_adapted"] == adapted.adaptation_key() and len(fps[1]["lm_adapted"]) == 16
    assert scored.fingerprint() == fps[1]  # held-out scoring changes no answer
    assert _magic(tiny_llm, tmp_path, decode_batch=2).fingerprint() == fp  # speed-only option


def test_magic_decodes_captions_with_the_adapted_copy(tiny_llm, tmp_path, monkeypatch) -> None:
    before = _state(tiny_llm.model)
    m = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", **TINY_TRAIN})
    m.prepare()
    assert m._adapted.trained_steps == TINY_TRAIN["steps"]  # trained here, every step
    _assert_identical(tiny_llm.model, before)
    reqs = [
        Request("c1", "dog", IMG, "Write a short caption for this image.", kind="caption"),
        Request("q1", "cat", IMG, "Question: what animal is this? Short answer:", kind="vqa",
                question="what animal is this?", max_new_tokens=4),
        Request("c2", "cat", IMG, "Write a short caption for this image.", kind="caption"),
    ]
    answers = m.answer_batch(reqs)
    assert all(a.error is None for a in answers), [a.error for a in answers]
    for a in (answers[0], answers[2]):
        t = a.trace["lm_adaptation"]
        assert t["used"] is True and t["key"] == m.adaptation_key() and t["steps"] == TINY_TRAIN["steps"]
        assert t["dataset"].startswith("photos:train") and isinstance(t["final_loss"], float)
        assert a.trace["lm_prompt"] == "<-start_of_text->" and a.trace["answer_prefix"] == ""
        assert a.trainable_params == sum(p.numel() for p in tiny_llm.model.parameters())
    vqa = answers[1]
    assert vqa.trace["lm_adaptation"]["used"] is False and "captions only" in vqa.trace["lm_adaptation"]["reason"]
    assert vqa.trainable_params == 0 and "what animal" in vqa.trace["lm_prompt"]
    # the caption's first step follows the adapted LM's distribution, not the shared one
    ids = tiny_llm.tokenizer("<-start_of_text->", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        top_adapted = int(m._adapted.llm.model(ids).logits[0, -1].argmax())
        top_shared = int(tiny_llm.model(ids).logits[0, -1].argmax())
    assert top_adapted != top_shared
    # MLflow logging reads the training record (harness.training_run.log_training)
    assert len(m.train_result.loss_curve) == TINY_TRAIN["steps"] and m.checkpoint_dir.name == m.adaptation_key()
    assert m.training_record() == TrainingRecord(m.train_result, m.checkpoint_dir)
    parts = m.train_result.extra["parts_curve"]
    assert [s for s, _ in parts["mle"]] == [s for s, _ in m.train_result.loss_curve]
    assert all(abs(t - (a + b)) < 1e-4 for (_, t), (_, a), (_, b) in zip(m.train_result.loss_curve, parts["mle"], parts["contrastive"]))
    _assert_identical(tiny_llm.model, before)

    # a new instance (a rerun, another rank) reuses the stored copy: nothing trained, same captions
    again = _magic(tiny_llm, tmp_path, adapt_lm={"dataset": "photos_caption", **TINY_TRAIN})
    monkeypatch.setattr(la, "train", lambda *a, **k: pytest.fail("a stored adaptation must not train again"))
    again.prepare()
    assert again._adapted.trained_steps == 0
    assert [a.text for a in again.answer_batch(reqs)] == [a.text for a in answers]


# ------------------------------------------------------------------------ config, data
def _config(adapt: Any) -> dict[str, Any]:
    return {
        "paradigms": [{"name": "guided_decoding/magic", "options": {"k": 4, "adapt_lm": adapt}}],
        "tasks": [{"name": "photos_caption"}],
    }


def test_config_with_adapt_lm_validates_and_bad_keys_are_named() -> None:
    from harness.plan import plan_run

    plan = plan_run(parse_config(_config({"dataset": "photos_caption", "steps": 5, "margin": 0.5})))
    opts = plan.paradigms[0].options
    assert isinstance(opts.adapt_lm, AdaptationOptions) and opts.adapt_lm.steps == 5
    with pytest.raises(ConfigError) as e:
        plan_run(parse_config(_config({"dataset": "photos_caption", "stepz": 5})))
    msg = str(e.value)
    assert "paradigms[0].options.adapt_lm.stepz" in msg and "steps" in msg  # the valid keys are listed
    with pytest.raises(ConfigError) as e:
        plan_run(parse_config(_config({"dataset": "photos_captoin"})))
    assert "paradigms[0].options.adapt_lm.dataset" in str(e.value) and "photos_caption" in str(e.value)
    with pytest.raises(ConfigError) as e:
        plan_run(parse_config(_config({"steps": 5})))
    assert "paradigms[0].options.adapt_lm" in str(e.value) and "no caption text" in str(e.value)
    with pytest.raises(ConfigError) as e:
        plan_run(parse_config(_config({"dataset": "photos_caption", "text_format": {"start": "x"}})))
    assert "adapt_lm.text_format.start" in str(e.value)


def test_caption_files_csv_and_plain_lines(tmp_path) -> None:
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text("image,caption\na.jpg,A dog runs.\nb.jpg,\"Two cats, asleep.\"\n", encoding="utf-8")
    txt = tmp_path / "caps.txt"
    txt.write_text("A red car.\n\nA boat on a lake.\n", encoding="utf-8")
    c = load_corpus(AdaptationOptions(caption_files=(str(csv_file), str(txt))))
    assert c.captions == ("A dog runs.", "Two cats, asleep.", "A red car.", "A boat on a lake.")
    assert "caps.csv (2 captions)" in c.describe()
    assert load_corpus(AdaptationOptions(caption_files=(str(txt),))).digest != c.digest


def test_flickr8k_corpus_is_train_split_and_text_only_captions() -> None:
    root = shared_data("flickr8k-subset")
    o = AdaptationOptions(dataset="flickr8k_caption", dataset_options={"root": str(root)},
                          caption_files=(str(root / "captions_text_only.txt"),), heldout_split="val")
    corpus = load_corpus(o)
    from tasks.datasets import load_dataset

    train = [r for s in load_dataset("flickr8k", "train", {"root": str(root)}).samples for r in s.references]
    text_only = la._file_captions(str(root / "captions_text_only.txt"))
    # exactly the train split's captions, then the caption-only file (other images): no test caption
    assert corpus.captions == tuple(train) + tuple(text_only) and len(text_only) > 35_000
    assert corpus.sources[0].startswith("flickr8k:train") and "captions_text_only.txt" in corpus.sources[1]
    val = load_heldout(o)
    assert 0 < len(val) <= o.heldout_max
    assert val == [r for s in load_dataset("flickr8k", "val", {"root": str(root)}).samples for r in s.references][: len(val)]


class _Killed(BaseException):
    """Stands in for SIGKILL (nothing after it runs)."""


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_killed_adaptation_resumes_to_the_uninterrupted_weights(tmp_path, dropout) -> None:
    """Weights, AdamW moments, loss curve and the RNG (dropout masks) come back from the checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.training import STATE_FILE

    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=32, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return GPT2LMHeadModel(cfg).float()

    seqs = [[1 + (i * 7 + j * 3) % 90 for j in range(4 + i % 5)] for i in range(24)]
    o = _opts(steps=7, save_every=2, batch_size=4, lr=1e-2)
    ref = fresh()
    full = la.train_lm(ref, seqs, o, 0, tmp_path / "ref", progress=False)
    assert full.resumed_from == 0 and len(full.loss_curve) == 7

    state = tmp_path / "killed" / STATE_FILE

    def die_after_5(step: int, loss: float) -> None:
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        la.train_lm(fresh(), seqs, o, 0, state.parent, progress=False, on_step=die_after_5)
    assert state.is_file()
    resumed = fresh()
    again = la.train_lm(resumed, seqs, o, 0, state.parent, progress=False)
    assert again.resumed_from == 4  # the checkpoint of step 4; step 5 is redone
    assert again.loss_curve == full.loss_curve and again.extra["parts_curve"] == full.extra["parts_curve"]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # tied input/output embeddings stay one tensor after the resume
    assert resumed.lm_head.weight.data_ptr() == resumed.transformer.wte.weight.data_ptr()


def test_adapt_language_model_resumes_a_killed_adaptation_and_cleans_up(tiny_llm, tmp_path, monkeypatch) -> None:
    o = _opts(steps=6, save_every=2, heldout_split=None)
    corpus = load_corpus(o)
    ident = base_llm_identity(Shared(tiny_llm, None, tmp_path))
    full = adapt_language_model(tiny_llm, corpus, o, tmp_path / "full", base_identity=ident, progress=False)
    assert full.meta["resumed_from"] == 0

    calls = {"n": 0}
    real = la.lm_simctg_loss

    def dying_loss(*a: Any, **k: Any):
        calls["n"] += 1
        if calls["n"] == 4:  # inside step 4: the step-2 checkpoint is on disk
            raise _Killed
        return real(*a, **k)

    monkeypatch.setattr(la, "lm_simctg_loss", dying_loss)
    with pytest.raises(_Killed):
        adapt_language_model(tiny_llm, corpus, o, tmp_path / "killed", base_identity=ident, progress=False)
    monkeypatch.setattr(la, "lm_simctg_loss", real)
    directory = tmp_path / "killed" / "lm_adaptation" / full.key
    assert (directory / "train_state.safetensors").is_file() and la.read_sidecar(directory) is None

    again = adapt_language_model(tiny_llm, corpus, o, tmp_path / "killed", base_identity=ident, progress=False)
    assert again.meta["resumed_from"] == 2 and again.trained_steps == 4
    assert again.meta["loss_curve"] == full.meta["loss_curve"]
    ref = full.llm.model.state_dict()
    for k, v in again.llm.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert sorted(p.name for p in directory.iterdir()) == ["adaptation.json", "model.safetensors"]


_ADAPT_SCRIPT = """
import sys
from pathlib import Path
from harness.models.llm import LanguageModel
from paradigms.guided_decoding import lm_adaptation as la
llm = LanguageModel.load("local", sys.argv[1], dtype="float32", device="cpu")
o = la.AdaptationOptions(dataset="photos_caption", steps=6, save_every=2, batch_size=4, lr=1e-2, seed=0)
la.adapt_language_model(llm, la.load_corpus(o), o, Path(sys.argv[2]), base_identity="tiny", progress=False)
"""


@pytest.mark.slow
def test_adaptation_sigkilled_at_the_training_fault_site_resumes_to_the_uninterrupted_weights(
    tiny_llm, tiny_llm_dir, tmp_path
) -> None:
    """The adaptation trains in the shared loop, so the loop's fault site reaches it: a real process
    SIGKILLed after step 5 (checkpoint at 4) resumes to the weights of a run never killed."""
    import os
    import signal
    import subprocess
    import sys

    from harness.config import repo_root

    o = AdaptationOptions(dataset="photos_caption", steps=6, save_every=2, batch_size=4, lr=1e-2, seed=0)
    corpus = load_corpus(o)
    full = adapt_language_model(tiny_llm, corpus, o, tmp_path / "full", base_identity="tiny", progress=False)
    env = {**os.environ, "MMBENCH_FAULT": "train_step:5:kill", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _ADAPT_SCRIPT, str(tiny_llm_dir), str(tmp_path / "killed")],
                          cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    directory = tmp_path / "killed" / "lm_adaptation" / full.key
    assert (directory / "train_state.safetensors").is_file() and la.read_sidecar(directory) is None
    again = adapt_language_model(tiny_llm, corpus, o, tmp_path / "killed", base_identity="tiny", progress=False)
    assert again.meta["resumed_from"] == 4 and again.trained_steps == 2
    assert again.meta["loss_curve"] == full.meta["loss_curve"]
    ref = full.llm.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in again.llm.model.state_dict().items())
    assert sorted(p.name for p in directory.iterdir()) == ["adaptation.json", "model.safetensors"]
