"""Captions per second of mmbench's MAGIC: batched vs one image at a time vs naive (no KV reuse).

All three run in one process on the same weights, scorer and images, so the ratios compare search
implementations only. ``--dry-run`` uses a tiny random LM (same tokenizer) for a quick check.

``--reference PATH`` instead times mmbench's MAGIC against the authors' ``magic_search``
(yxuansu/MAGIC) on the same random GPT-2 + CLIP (transformers ``CLIPModel`` via ``HFClipScorer``),
same images and settings, in one process, and says whether the token ids are identical. PATH is
an adapter file (or a folder holding ``reference_adapter.py``) kept outside this repository that
defines ``make_reference(gpt2_dir, clip_dir)``; see docs/paradigms/guided_decoding.md. Without it
the comparison is skipped with a message. ``--size tiny`` = the faithfulness test's models;
``--size base`` = GPT-2 base dimensions (124M-class, 49k BPE) + ViT-B/32 dimensions, random.

    python benchmarks/bench_magic.py --images 8 --batch 8
    python benchmarks/bench_magic.py --dry-run
    python benchmarks/bench_magic.py --reference /tmp/magicref/reference_adapter.py --size base --images 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.backbones import Backbones
from harness.config import ModelsConfig
from harness.interface import Request
from harness.models.llm import GenerationSettings, LanguageModel
from paradigms.guided_decoding.magic import Magic, MagicOptions

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a short caption for this image."


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu:{name} x{torch.get_num_threads()} threads"


def load_images(n: int) -> list[tuple[str, Any]]:
    """Flickr8k dev images when present, else scikit-image's packaged photographs."""
    from PIL import Image

    root = REPO.parent / "shared" / "data" / "flickr8k-subset" / "images"
    if root.is_dir():
        return [(p.name, Image.open(p).convert("RGB")) for p in sorted(root.iterdir())[:n]]
    import skimage.data as sd

    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "camera"]
    out = []
    for i in range(n):
        arr = getattr(sd, names[i % len(names)])()
        img = Image.fromarray(arr).convert("RGB")
        out.append((f"{names[i % len(names)]}-{i}", img))
    return out


def run(para: Magic, reqs: list[Request], batch: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    texts: list[str] = []
    for i in range(0, len(reqs), batch):
        texts += [a.text for a in para.answer_batch(reqs[i : i + batch])]
    return time.perf_counter() - t0, texts


# ------------------------------------------------------------------ versus the authors' code
def build_base_gpt2(folder: Path, seed: int = 0) -> Path:
    """GPT-2 base dimensions (12 × 768) with a 49k byte-level BPE (SmolLM2's, saved as a GPT-2
    tokenizer with SimCTG's start/pad tokens), random weights: realistic compute, meaningless text."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from tests.guided_reference import EOS, PAD, SOS

    src = LanguageModel.load("packaged", "smollm2-135m-instruct").tokenizer
    bpe = json.loads(src.backend_tokenizer.to_str())["model"]
    tok = GPT2Tokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]])
    tok.add_tokens([SOS, PAD])
    eos = tok.convert_tokens_to_ids(EOS)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_base_clip(folder: Path, seed: int = 0) -> Path:
    """ViT-B/32 dimensions (vision 12 × 768 at 224 px, text 12 × 512), random; the tests' small BPE
    (a text encoder's cost hardly depends on its vocabulary size)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from tests.guided_reference import build_clip_tokenizer

    tok = build_clip_tokenizer()
    text = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={"patch_size": 32})).eval()
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok).save_pretrained(folder)
    return folder


def load_adapter(path: Path) -> Any | None:
    adapter = path / "reference_adapter.py" if path.is_dir() else path
    if not adapter.is_file():
        return None
    spec = importlib.util.spec_from_file_location("magic_reference_adapter", adapter)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def versus_reference(a: argparse.Namespace) -> None:
    """mmbench's MAGIC (batched, one at a time) vs the authors' magic_search, same weights and images."""
    mod = load_adapter(Path(a.reference))
    if mod is None:
        print(f"reference implementation not found at {a.reference}: skipping the comparison with the authors' code")
        return
    import sys

    sys.path.insert(0, str(REPO))  # the tiny models and the authors' settings live with the faithfulness test
    from harness.models.hf_clip import HFClipScorer
    from tests.guided_reference import ReferenceBackbones, build_clip, build_gpt2, run_mmbench, skimage_images
    tmp = Path(tempfile.mkdtemp())
    if a.size == "tiny":
        g, c = build_gpt2(tmp / "gpt2"), build_clip(tmp / "clip")
    else:
        g, c = build_base_gpt2(tmp / "gpt2"), build_base_clip(tmp / "clip")
    setting = {"name": "coco", "k": a.k, "alpha": 0.1, "beta": 2.0, "decoding_len": a.tokens, "window": 60}
    # MAGIC's caption of an image is deterministic: distinct images only (the golden's three first,
    # then more packaged photographs, so batching over images can be measured at --images up to 10).
    imgs = dict(skimage_images())
    import skimage.data as sd
    from PIL import Image

    for extra in ("rocket", "camera", "immunohistochemistry", "hubble_deep_field", "colorwheel", "retina", "coins"):
        if len(imgs) >= a.images:
            break
        imgs[extra] = Image.fromarray(getattr(sd, extra)()).convert("RGB")
    names = list(imgs)[: a.images]
    import inspect

    ref_kw = {"device": a.device} if "device" in inspect.signature(mod.make_reference).parameters else {}
    if a.device != "cpu" and not ref_kw:
        raise SystemExit("the reference adapter's make_reference() takes no 'device': both sides must share the device")
    ref = mod.make_reference(g, c, **ref_kw)
    bb = ReferenceBackbones(LanguageModel.load("local", str(g), dtype="float32", device=a.device),
                    HFClipScorer(str(c), device=a.device))
    kw = dict(k=setting["k"], alpha=0.1, beta=2.0, decoding_len=a.tokens, window=60)
    ref(imgs[names[0]], **kw)  # warm-up both
    run_mmbench(bb, setting, (names[0],), images=imgs)

    t0 = time.perf_counter()
    ref_ids = {n: ref(imgs[n], **kw)[0] for n in names}
    t_ref = time.perf_counter() - t0
    times, ids = {}, {}
    for label, batch in (("mmbench_one_at_a_time", 1), ("mmbench_batched", len(names))):
        bb.scorer._image_cache.clear()  # the reference embeds each image per caption; so do we
        t0 = time.perf_counter()
        got = run_mmbench(bb, setting, tuple(names), images=imgs, decode_batch=batch)
        times[label] = time.perf_counter() - t0
        ids[label] = {n: v[0] for n, v in got.items()}
    cps = {"reference_authors": len(names) / t_ref, **{k: len(names) / v for k, v in times.items()}}
    result = {
        "hardware": hardware(),
        "torch_threads": torch.get_num_threads(),
        "what": "captions/s of mmbench's MAGIC vs the authors' magic_search (yxuansu/MAGIC), same process, "
        "same random GPT-2 + CLIP weights, same images and settings",
        "size": a.size,
        "models": {
            "gpt2_params": sum(p.numel() for p in bb.llm.model.parameters()),
            "clip_params": sum(p.numel() for p in bb.scorer._load()[0].parameters()),
        },
        "settings": {**kw, "images": names},
        "captions_per_s": cps,
        "ratio_mmbench_over_reference": {k: cps[k] / cps["reference_authors"] for k in times},
        "identical_token_ids": {k: v == ref_ids for k, v in ids.items()},
        "ids": {"reference": ref_ids, **ids},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "ids"}, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = out / f"magic_{dev}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old[a.size] = result
    path.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote {path} [{a.size}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--tokens", type=int, default=16, help="new tokens; with --reference the authors' decoding_len (start token counted)")
    ap.add_argument("--naive-images", type=int, default=2, help="naive path is slow: time it on fewer images")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="tiny random LM, 2 images, k=8, 4 tokens")
    ap.add_argument("--reference", help="adapter to the authors' MAGIC (file or folder): time mmbench against it")
    ap.add_argument("--size", choices=("tiny", "base"), default="tiny", help="with --reference: model size")
    ap.add_argument("--device", default="cpu", help="with --reference: where both implementations run (cpu, cuda)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.reference:
        versus_reference(a)
        return
    bb = Backbones(ModelsConfig())
    if a.dry_run:
        a.images, a.batch, a.k, a.tokens, a.naive_images = 2, 2, 8, 4, 1
        import sys

        sys.path.insert(0, str(REPO))  # the tiny random model is the tests' own
        from tests.support import save_tiny_llm

        tmp = Path(tempfile.mkdtemp())
        vocab = LanguageModel.load("packaged", "smollm2-135m-instruct").tokenizer
        vocab.save_pretrained(tmp / "tok")
        folder = save_tiny_llm(tmp / "tiny", vocab_from=tmp / "tok")
        bb.__dict__["llm"] = LanguageModel.load("local", str(folder), dtype="float32", device="cpu")
    images = load_images(a.images)
    reqs = [Request(i, i, im, PROMPT, kind="caption", max_new_tokens=a.tokens) for i, im in images]
    gen = GenerationSettings(max_new_tokens=a.tokens, stop=())  # no early stop: equal work per caption
    bb.scorer.embed_images([im for _, im in images], [i for i, _ in images])  # tools are not timed
    fast = Magic(bb, MagicOptions(k=a.k, decode_batch=a.batch), gen)
    naive = Magic(bb, MagicOptions(k=a.k, decode_batch=a.batch, reuse_kv_cache=False), gen)
    run(fast, reqs[:1], 1)  # warm-up
    t_batch, txt_b = run(fast, reqs, a.batch)
    t_single, txt_s = run(fast, reqs, 1)
    t_naive, txt_n = run(naive, reqs[: a.naive_images], 1)
    cps = {"batched": len(reqs) / t_batch, "one_at_a_time": len(reqs) / t_single, "naive_no_kv_reuse": a.naive_images / t_naive}
    result = {
        "hardware": hardware(),
        "llm": bb.llm.name,
        "scorer": bb.scorer.name,
        "dry_run": a.dry_run,
        "settings": {"images": a.images, "batch": a.batch, "k": a.k, "tokens": a.tokens, "naive_images": a.naive_images},
        "captions_per_s": cps,
        "ratios": {
            "batched_over_one_at_a_time": cps["batched"] / cps["one_at_a_time"],
            "one_at_a_time_over_naive": cps["one_at_a_time"] / cps["naive_no_kv_reuse"],
        },
        "same_captions_batched_vs_single": txt_b == txt_s,
        "same_captions_naive_vs_cached": txt_n == txt_s[: a.naive_images],
        "captions": txt_b,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "captions"}, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = f"magic_{'dry_' if a.dry_run else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
