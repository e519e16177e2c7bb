"""The tiny GPT-2 + CLIP that the MAGIC and ZeroCap faithfulness tests compare against the authors'
code, built from configs and a seed (no downloads), and the settings the goldens were made with.

Tokenizers are learned here too: a small tie-broken BPE over :data:`CORPUS` (invented captions),
GPT-2 style (byte-level, with SimCTG's start/pad tokens added) and CLIP style (``</w>`` word ends).
:func:`weights_digest` is recorded in the goldens, so a change of weights (e.g. a torch RNG change)
fails loudly as "weights differ", not as a search bug. Also used by ``benchmarks/bench_magic.py`` and
the golden-making scripts under ``tests/golden/``.
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


class ReferenceBackbones:
    def __init__(self, llm, scorer) -> None:  # noqa: ANN001
        self.llm, self.scorer = llm, scorer


def load_tiny_backbones(gpt2: Path, clip: Path) -> ReferenceBackbones:
    """The tiny GPT-2 as the run's LLM and the tiny CLIP as its scorer, on CPU in float32."""
    from harness.models.hf_clip import HFClipScorer
    from harness.models.llm import LanguageModel

    return ReferenceBackbones(LanguageModel.load("local", str(gpt2), dtype="float32", device="cpu"), HFClipScorer(str(clip), device="cpu"))


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
    bb: ReferenceBackbones, s: dict, names: tuple[str, ...] = ("astronaut", "coffee", "chelsea"),
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
