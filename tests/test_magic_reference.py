"""mmbench's MAGIC reproduces the authors' implementation (yxuansu/MAGIC ``magic_search``) token for token.

The golden ``tests/golden/magic_reference.json`` holds the token ids the authors' code chose, run
beside mmbench (outside the repo) on the tiny GPT-2 + CLIP that :func:`build_gpt2` and
:func:`build_clip` build from configs and a seed — no fetched code and no downloaded weights are
needed to run this test. How to regenerate the golden: docs/paradigms/guided_decoding.md
("Faithfulness"). :func:`weights_digest` is recorded in the golden, so a change of weights (e.g. a
torch RNG change) fails loudly as "weights differ", not as a search bug.

The builders live in ``tests/guided_reference.py`` (shared with the ZeroCap comparison and the benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.guided_reference import (
    EOS,
    SETTINGS,
    SOS,
    ReferenceBackbones,
    build_clip,
    build_gpt2,
    load_tiny_backbones,
    run_mmbench,
    skimage_images,
    weights_digest,
)

GOLDEN = Path(__file__).parent / "golden" / "magic_reference.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("magic_reference")
    return build_gpt2(d / "gpt2"), build_clip(d / "clip")


@pytest.fixture(scope="module")
def backbones(tiny: tuple[Path, Path]) -> ReferenceBackbones:
    return load_tiny_backbones(*tiny)


def test_same_weights_as_the_golden(tiny: tuple[Path, Path], golden: dict) -> None:
    g, c = tiny
    got = {"gpt2": weights_digest(g), "clip": weights_digest(c)}
    assert got == golden["weights"], (
        f"the tiny models rebuilt here differ from the golden's ({got} vs {golden['weights']}; torch "
        f"{torch.__version__} vs {golden['versions']['torch']}): regenerate the golden (docs/paradigms/guided_decoding.md)"
    )


@pytest.mark.parametrize("setting", SETTINGS, ids=[s["name"] for s in SETTINGS])
def test_magic_reproduces_authors_token_ids(backbones: ReferenceBackbones, golden: dict, setting: dict) -> None:
    """Batched over the three images, mmbench picks exactly the authors' tokens, and prints their caption."""
    assert golden["start_ids"] == backbones.llm.tokenizer(SOS, add_special_tokens=False).input_ids
    got = run_mmbench(backbones, setting)
    for run in (r for r in golden["runs"] if r["setting"] == setting["name"]):
        ids, text = got[run["image"]]
        assert ids == run["ids"], f"{setting['name']}/{run['image']}: first difference at step " + str(
            next((i for i, (a, b) in enumerate(zip(ids, run["ids"])) if a != b), min(len(ids), len(run["ids"])))
        )
        # the authors collapse whitespace when they print (" ".join(text.split())); we keep it
        assert " ".join(text.split()) == run["text"]


def test_one_at_a_time_and_naive_path_agree(backbones: ReferenceBackbones, golden: dict) -> None:
    coco = SETTINGS[0]
    want = {r["image"]: r["ids"] for r in golden["runs"] if r["setting"] == "coco"}
    single = run_mmbench(backbones, coco, decode_batch=1)
    naive = run_mmbench(backbones, coco, ("coffee",), reuse_kv_cache=False)
    assert {k: v[0] for k, v in single.items()} == want
    assert naive["coffee"][0] == want["coffee"]


def test_golden_is_sensitive_to_the_score(backbones: ReferenceBackbones, golden: dict) -> None:
    """The comparison can fail: a different CLIP temperature or the task-prompt convention changes tokens."""
    coco = SETTINGS[0]
    want = {r["image"]: r["ids"] for r in golden["runs"] if r["setting"] == "coco"}
    cooler = run_mmbench(backbones, coco, scorer_logit_scale=1.0)
    assert {k: v[0] for k, v in cooler.items()} != want
    prompted = run_mmbench(backbones, coco, start_text=None, caption_prefix="a")
    assert {k: v[0] for k, v in prompted.items()} != want


def test_scorer_special_tokens_option(backbones: ReferenceBackbones) -> None:
    """With every vocabulary item as a candidate, the end token is scored as text only when asked."""

    class Recording:
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner, self.name, self.texts = inner, inner.name, []
            self.logit_scale = inner.logit_scale

        def embed_images(self, images, image_ids):  # noqa: ANN001, ANN201
            return self.inner.embed_images(images, image_ids)

        def embed_texts(self, texts):  # noqa: ANN001, ANN201
            self.texts += list(texts)
            return self.inner.embed_texts(texts)

    one = {"name": "one", "k": len(backbones.llm.tokenizer), "alpha": 0.1, "beta": 2.0, "decoding_len": 2, "window": 60}
    seen = {}
    for flag in (True, False):
        rec = Recording(backbones.scorer)
        run_mmbench(ReferenceBackbones(backbones.llm, rec), one, ("coffee",), scorer_special_tokens=flag)
        seen[flag] = rec.texts
    assert EOS in seen[True] and EOS not in seen[False] and "" in seen[False]


# ---------------------------------------------------------------------------- HFClipScorer
def test_hf_clip_scorer_is_clip(tiny: tuple[Path, Path]) -> None:
    """Same vectors and temperature as CLIPModel's own feature functions; fingerprint loads nothing."""
    from transformers import CLIPModel, CLIPProcessor

    from harness.models.hf_clip import HFClipScorer

    _, c = tiny
    sc = HFClipScorer(str(c), device="cpu")
    fp = sc.fingerprint()
    assert sc._loaded is None and fp.startswith("hf_clip:local:clip:") and "transformers==" in fp
    model, proc = CLIPModel.from_pretrained(c).eval(), CLIPProcessor.from_pretrained(c)
    imgs = skimage_images()
    texts = ["a cat on a bench", "a cup of coffee", "an astronaut with a flag " * 30]  # last one > 77 tokens
    with torch.no_grad():
        pix = proc(images=list(imgs.values()), return_tensors="pt")["pixel_values"]
        want_i = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        enc = proc.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        want_t = model.text_projection(model.text_model(**enc).pooler_output)
    got_i = sc.embed_images(list(imgs.values()), list(imgs))
    got_t = sc.embed_texts(texts)
    torch.testing.assert_close(got_i, torch.nn.functional.normalize(want_i, dim=-1))
    torch.testing.assert_close(got_t, torch.nn.functional.normalize(want_t, dim=-1))
    assert sc.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert sc.embed_texts(texts[:1]).shape == (1, model.config.projection_dim)


def test_hf_clip_fingerprint_and_config(tiny: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    import shutil

    from harness.backbones import Backbones
    from harness.config import ModelsConfig, ScorerSource
    from harness.models.hf_clip import HFClipScorer

    _, c = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline a branch cannot be resolved: labelled unpinned
    hub = HFClipScorer("openai/clip-vit-base-patch32@abc123")
    assert hub.fingerprint().startswith("hf_clip:hub:openai/clip-vit-base-patch32@unpinned:abc123[")
    assert HFClipScorer("openai/clip-vit-base-patch32").fingerprint().startswith("hf_clip:hub:openai/clip-vit-base-patch32@unpinned:main[")
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert HFClipScorer(f"openai/clip-vit-base-patch32@{sha}").fingerprint().startswith(f"hf_clip:hub:openai/clip-vit-base-patch32@{sha}[")
    other = tmp_path / "clip"
    shutil.copytree(c, other)
    assert HFClipScorer(str(other)).fingerprint() == HFClipScorer(str(c)).fingerprint()
    cfg = json.loads((other / "config.json").read_text())
    cfg["logit_scale_init_value"] = 1.0
    (other / "config.json").write_text(json.dumps(cfg))
    assert HFClipScorer(str(other)).fingerprint() != HFClipScorer(str(c)).fingerprint()
    bb = Backbones(ModelsConfig(scorer=ScorerSource(kind="hf_clip", model=str(c))))
    assert isinstance(bb.scorer, HFClipScorer) and bb.scorer._loaded is None
