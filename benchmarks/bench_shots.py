"""Shot selection time on a large support set: batched retrieval vs one query at a time.

100k support items (3 questions per image, as VQA-style sets list them), 512-d embeddings (CLIP
ViT-B/32 size), 1,000 queries, k = 32 (the largest k papers report), for ``rices`` (image
cosine) and ``rices_qi`` (image + question). The baseline is :func:`tasks.shots.select_shots`
with a cosine similarity over the same precomputed unit vectors, per query (the old path, which
ranks the whole support in Python), timed on a subset of queries and scaled; ``SupportIndex``
(one embedding row per distinct image, as the runner builds it) is timed on all queries, best
of two. Both must return identical shot lists on the timed subset. Also timed: reading the
support embeddings back from the on-disk store. The scorer's own embedding time is not
included (model work, done once per support set and then read from disk).
Writes ``benchmarks/results/shots_cpu.json``.

    python benchmarks/bench_shots.py                        # 100k support, 1000 queries
    python benchmarks/bench_shots.py --support 20000 --queries 200 --no-write
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (imported by the runner anyway; keeps its import out of the timing)
from PIL import Image

from _report import add_output_args, emit
from harness.tracking import hardware
from tasks.base import Sample
from tasks.shots import EmbeddingStore, SupportIndex, select_shots


def _blank() -> Image.Image:
    return Image.new("RGB", (1, 1))


def case(n_support: int, n_queries: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    n_images = (n_support + 2) // 3
    support = [Sample(f"s{i:07d}", f"img/{i // 3}", _blank, question=f"q{i}") for i in range(n_support)]
    image = rng.normal(size=(n_images, dim)).astype(np.float32)[np.arange(n_support) // 3]
    text = rng.normal(size=(n_support, dim)).astype(np.float32)
    queries = [Sample(f"q{i:05d}", f"query/{i}", _blank, question=f"query {i}") for i in range(n_queries)]
    return support, image, text, queries, rng.normal(size=(n_queries, dim)).astype(np.float32), \
        rng.normal(size=(n_queries, dim)).astype(np.float32)


def per_query(support, image, text, queries, q_img, q_txt, k):
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)  # noqa: E731
    img, txt = unit(image), unit(text) if text is not None else None
    out = []
    for q, qi, qt in zip(queries, unit(q_img), unit(q_txt)):
        def sim(query, cands, qi=qi, qt=qt):
            s = img @ qi
            return ((s + txt @ qt) / 2 if txt is not None else s).tolist()

        out.append([s.sample_id for s in select_shots(q, support, k, strategy="rices", similarity=sim)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--support", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--baseline-queries", type=int, default=20, help="queries timed on the per-query path")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    add_output_args(ap)
    args = ap.parse_args()
    support, image, text, queries, q_img, q_txt = case(args.support, args.queries, args.dim, seed=0)
    rows = []
    for strategy in ("rices", "rices_qi"):
        t = text if strategy == "rices_qi" else None
        qt = q_txt if strategy == "rices_qi" else None
        t0 = time.perf_counter()
        # one row per distinct image, as the runner builds it (3 questions per image here)
        index = SupportIndex.build(support, image[::3], t, image_of=np.arange(len(support)) // 3)
        build_s = time.perf_counter() - t0
        batched_s = float("inf")
        for _ in range(2):  # best of two: the machine is shared
            t0 = time.perf_counter()
            batched = index.select(queries, q_img, args.k, qt)
            batched_s = min(batched_s, time.perf_counter() - t0)
        m = args.baseline_queries
        t0 = time.perf_counter()
        slow = per_query(support, image, t, queries[:m], q_img[:m], q_txt[:m], args.k)
        per_query_s = (time.perf_counter() - t0) / m * args.queries
        same = slow == [[s.sample_id for s in row] for row in batched[:m]]
        rows.append({
            "strategy": strategy, "support": args.support, "queries": args.queries, "k": args.k, "dim": args.dim,
            "index_build_s": round(build_s, 3), "batched_select_s": round(batched_s, 3),
            "batched_ms_per_query": round(1000 * batched_s / args.queries, 3),
            "per_query_select_s_scaled": round(per_query_s, 1), "speedup": round(per_query_s / batched_s, 1),
            "identical_shots_on_timed_subset": same,
        })
        if not same:
            raise SystemExit(f"{strategy}: batched and per-query selections differ")
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore(Path(tmp))
        keys = [f"{i // 3:040x}" for i in range(args.support)]
        store.save("bench-scorer", "image", keys, image)
        t0 = time.perf_counter()
        back = store.load("bench-scorer", "image", keys)
        load_s = time.perf_counter() - t0
        assert back is not None and back.shape == image.shape
    result = {
        "what": "shot selection on a 100k-item support set: SupportIndex (batched matrix product) vs select_shots per query",
        "command": "python benchmarks/bench_shots.py",
        "rows": rows,
        "disk_store_load_s": round(load_s, 3),
        "hardware": hardware(),
    }
    emit(result, args, "shots_cpu.json")


if __name__ == "__main__":
    main()
