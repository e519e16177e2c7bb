"""Captions per second of mmbench's MAGIC: batched vs one image at a time vs naive (no KV reuse).

All three run in one process on the same weights, scorer and images, so the ratios compare search
implementations only. ``--dry-run`` uses a tiny random LM (same tokenizer) for a quick check.

    python benchmarks/bench_magic.py --images 8 --batch 8
    python benchmarks/bench_magic.py --dry-run
"""

from __future__ import annotations

import argparse
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
from harness.models.llm import GenerationSettings, LanguageModel, save_tiny_llm
from paradigms.guided_decoding.magic import Magic, MagicOptions

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a short caption for this image."


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=45)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--naive-images", type=int, default=2, help="naive path is slow: time it on fewer images")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="tiny random LM, 2 images, k=8, 4 tokens")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    bb = Backbones(ModelsConfig())
    if a.dry_run:
        a.images, a.batch, a.k, a.tokens, a.naive_images = 2, 2, 8, 4, 1
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
