"""mmbench's MAGIC reproduces the authors' implementation (yxuansu/MAGIC ``magic_search``) token for token.

The golden ``tests/golden/magic_reference.json`` holds the token ids the authors' code chose, run
beside mmbench (outside the repo) on the tiny GPT-2 + CLIP that :func:`build_gpt2` and
:func:`build_clip` build here from configs and a seed — no fetched code and no downloaded weights are
needed to run this test. How to regenerate the golden: docs/paradigms/guided_decoding.md
("Faithfulness"). :func:`weights_digest` is recorded in the golden, so a change of weights (e.g. a
torch RNG change) fails loudly as "weights differ", not as a search bug.

Tokenizers are learned here too: a small tie-broken BPE over :data:`CORPUS` (invented captions),
GPT-2 style (byte-level, with SimCTG's start/pad tokens added) and CLIP style (``</w>`` word ends).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import torch

#: Start and pad tokens of the authors' caption LM (SimCTG GPT-2 fine-tuned on MS-COCO captions).
SOS, PAD, EOS = "<-start_of_text->", "<-pad->", "<|endoftext|>"

CORPUS = """\
a man riding a horse on a dirt road next to a fence
a woman holding an umbrella while walking down a rainy street
two dogs playing with a frisbee in a grassy park
a cat sleeping on top of a wooden bench in the sun
a plate of food with broccoli and rice on a table
a red double decker bus driving down a city street
a group of people standing around a kitchen counter
a young boy swinging a baseball bat at a ball
a large clock tower in the middle of a town square
a cup of coffee and a donut on a white plate
an astronaut in a white space suit holding a flag
a woman in a red dress smiling at the camera
a tabby cat with green eyes looking at the camera
a surfer riding a wave in the blue ocean
a bowl of fruit with apples bananas and oranges
a train traveling down the tracks near a station
a giraffe standing next to a tree in a zoo
a person flying a kite on a sandy beach
a pizza with cheese and tomatoes on a cutting board
two people sitting on a bench looking at the water
""".splitlines()

GPT2_MERGES = 160
CLIP_MERGES = 160
SEED = 0


def learn_merges(words: Counter, n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair, ties broken by the smaller pair."""
    words = Counter({tuple(w): c for w, c in words.items()})
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        new: Counter = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def _byte_symbols() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def build_gpt2_tokenizer():
    """GPT-2-style byte-level BPE; SimCTG's start and pad tokens added as plain (non-special) tokens."""
    from transformers import GPT2Tokenizer

    base = _byte_symbols()
    probe = GPT2Tokenizer(vocab={s: i for i, s in enumerate(base + [EOS])}, merges=[])
    pre = probe.backend_tokenizer.pre_tokenizer
    words: Counter = Counter()
    for line in CORPUS:
        for w, _ in pre.pre_tokenize_str(line):
            words[tuple(w)] += 1
    merges = learn_merges(words, GPT2_MERGES)
    vocab = {s: i for i, s in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[EOS] = len(vocab)
    tok = GPT2Tokenizer(vocab=vocab, merges=list(merges))
    tok.add_tokens([SOS, PAD])
    tok.model_max_length = 256
    return tok


def build_clip_tokenizer():
    """CLIP-style BPE (lower-cased, ``</w>`` word ends), learned on the same corpus."""
    from transformers import CLIPTokenizer

    base = _byte_symbols()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    probe = CLIPTokenizer(vocab={s: i for i, s in enumerate(base + [s + "</w>" for s in base] + specials)}, merges=[])
    bt = probe.backend_tokenizer
    words: Counter = Counter()
    for line in CORPUS:
        for w, _ in bt.pre_tokenizer.pre_tokenize_str(bt.normalizer.normalize_str(line)):
            words[tuple(w[:-1]) + (w[-1] + "</w>",)] += 1
    merges = learn_merges(words, CLIP_MERGES)
    vocab = {s: i for i, s in enumerate(base + [s + "</w>" for s in base])}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges))
    tok.model_max_length = 77
    return tok


def build_gpt2(folder: Path, seed: int = SEED) -> Path:
    """A 2-layer GPT-2 (64-d) with wider-than-default init so its next-token distribution is not flat."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_gpt2_tokenizer()
    eos = tok.convert_tokens_to_ids(EOS)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2, n_head=2,
        initializer_range=0.1, bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_clip(folder: Path, seed: int = SEED) -> Path:
    """A tiny random CLIP (2+2 layers, 32-d, 32-px images) with its processor, saved locally."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_clip_tokenizer()
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


def weights_digest(folder: Path) -> str:
    """sha256 over the saved tensors (names, shapes, float32 bytes), independent of file layout."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd = load_file(str(f))
        for name in sorted(sd):
            t = sd[name].float().contiguous()
            h.update(name.encode())
            h.update(json.dumps(list(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def skimage_images() -> dict[str, object]:
    """The three scikit-image photographs the golden was made with."""
    import skimage.data as sd
    from PIL import Image

    return {n: Image.fromarray(getattr(sd, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea")}


#: Settings the golden was made with: the authors' COCO and Flickr30k ones, a short scorer window
#: with a strong degeneration penalty, and β = 0 (plain contrastive search). ``decoding_len`` is the
#: authors' (it counts the start token: 16 → 15 generated tokens).
SETTINGS = (
    {"name": "coco", "k": 45, "alpha": 0.1, "beta": 2.0, "decoding_len": 16, "window": 60},
    {"name": "flickr30k", "k": 25, "alpha": 0.1, "beta": 2.0, "decoding_len": 16, "window": 60},
    {"name": "penalty_window4", "k": 8, "alpha": 0.6, "beta": 1.0, "decoding_len": 24, "window": 4},
    {"name": "contrastive_only", "k": 5, "alpha": 0.6, "beta": 0.0, "decoding_len": 16, "window": 60},
)


# ============================================================================ tests
import pytest  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "magic_reference.json"


class _Backbones:
    def __init__(self, llm, scorer) -> None:  # noqa: ANN001
        self.llm, self.scorer = llm, scorer


def load_tiny_backbones(gpt2: Path, clip: Path) -> _Backbones:
    """The tiny GPT-2 as the run's LLM and the tiny CLIP as its scorer, on CPU in float32."""
    from harness.models.hf_clip import HFClipScorer
    from harness.models.llm import LanguageModel

    return _Backbones(LanguageModel.load("local", str(gpt2), dtype="float32", device="cpu"), HFClipScorer(str(clip), device="cpu"))


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("magic_reference")
    return build_gpt2(d / "gpt2"), build_clip(d / "clip")


@pytest.fixture(scope="module")
def backbones(tiny: tuple[Path, Path]) -> _Backbones:
    return load_tiny_backbones(*tiny)


def authors_options(s: dict, **over: object):
    """mmbench MAGIC options that mean what the authors' ``magic_search(...)`` call means."""
    from paradigms.guided_decoding.magic import MagicOptions

    kw = dict(
        k=s["k"], alpha=s["alpha"], beta=s["beta"], max_new_tokens=s["decoding_len"] - 1,  # start token counted
        scorer_window=s["window"], start_text=SOS, scorer_special_tokens=True, chat=False,
    )  # fmt: skip
    kw.update(over)
    return MagicOptions(**kw)


def run_mmbench(
    bb: _Backbones, s: dict, names: tuple[str, ...] = ("astronaut", "coffee", "chelsea"),
    images: dict[str, object] | None = None, **over: object,
):
    from harness.interface import Request
    from harness.models.llm import GenerationSettings
    from paradigms.guided_decoding.magic import Magic

    n = s["decoding_len"] - 1
    para = Magic(bb, authors_options(s, **over), GenerationSettings(max_new_tokens=n, stop=()))
    imgs = images if images is not None else skimage_images()
    reqs = [Request(i, i, imgs[i], "unused: start_text replaces it", kind="caption", max_new_tokens=n) for i in names]
    answers = para.answer_batch(reqs)
    eos = bb.llm.tokenizer.eos_token_id
    out = {}
    for r, a in zip(reqs, answers):
        assert a.error is None, a.error
        ids = [st["token"] for st in a.trace["steps"]]
        out[r.image_id] = (ids[: ids.index(eos)] if eos in ids else ids, a.text)
    return out


def test_same_weights_as_the_golden(tiny: tuple[Path, Path], golden: dict) -> None:
    g, c = tiny
    got = {"gpt2": weights_digest(g), "clip": weights_digest(c)}
    assert got == golden["weights"], (
        f"the tiny models rebuilt here differ from the golden's ({got} vs {golden['weights']}; torch "
        f"{torch.__version__} vs {golden['versions']['torch']}): regenerate the golden (docs/paradigms/guided_decoding.md)"
    )


@pytest.mark.parametrize("setting", SETTINGS, ids=[s["name"] for s in SETTINGS])
def test_magic_reproduces_authors_token_ids(backbones: _Backbones, golden: dict, setting: dict) -> None:
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


def test_one_at_a_time_and_naive_path_agree(backbones: _Backbones, golden: dict) -> None:
    coco = SETTINGS[0]
    want = {r["image"]: r["ids"] for r in golden["runs"] if r["setting"] == "coco"}
    single = run_mmbench(backbones, coco, decode_batch=1)
    naive = run_mmbench(backbones, coco, ("coffee",), reuse_kv_cache=False)
    assert {k: v[0] for k, v in single.items()} == want
    assert naive["coffee"][0] == want["coffee"]


def test_golden_is_sensitive_to_the_score(backbones: _Backbones, golden: dict) -> None:
    """The comparison can fail: a different CLIP temperature or the task-prompt convention changes tokens."""
    coco = SETTINGS[0]
    want = {r["image"]: r["ids"] for r in golden["runs"] if r["setting"] == "coco"}
    cooler = run_mmbench(backbones, coco, scorer_logit_scale=1.0)
    assert {k: v[0] for k, v in cooler.items()} != want
    prompted = run_mmbench(backbones, coco, start_text=None, caption_prefix="a")
    assert {k: v[0] for k, v in prompted.items()} != want


def test_scorer_special_tokens_option(backbones: _Backbones) -> None:
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
        run_mmbench(_Backbones(backbones.llm, rec), one, ("coffee",), scorer_special_tokens=flag)
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
