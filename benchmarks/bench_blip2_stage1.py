"""Did BLIP-2 stage 1 learn grounding? ITC retrieval recall@1/5 on held-out Flickr8k test images.

For each ``trained_adapter/blip2`` entry of the config with ``connector.stage1.steps`` > 0, the
stage-1 Q-Former is loaded from the cache (``mmbench run`` trained it; trained here with the same
key otherwise) and compared with the same seeded Q-Former untrained. Image→text: an image is a
hit at k when any of its human captions is among its k most similar captions; text→image: a
caption is a hit when its image is among its k most similar images. Similarity is ITC's (max over
queries of the cosine in the ``itc_dim`` space). The test images were never trained on.

    OMP_NUM_THREADS=1 python benchmarks/bench_blip2_stage1.py   # writes benchmarks/results/blip2_stage1_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.backbones import Backbones
from harness.config import load_config
from harness.models.llm import GenerationSettings
from harness.plan import plan_run
from harness.tracking import hardware
from paradigms.trained_adapter import blip2_stage1 as s1
from paradigms.trained_adapter.data import encode_images, load_caption_pairs
from tasks.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def curve_summary(curve: list[tuple[int, float]], n: int = 20) -> dict[str, float]:
    vals = [v for _, v in curve]
    return {"first_mean": sum(vals[:n]) / min(n, len(vals)), "last_mean": sum(vals[-n:]) / min(n, len(vals))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/blip2_stage1_flickr8k.yaml"))
    ap.add_argument("--split", default="test", help="held-out split whose images and captions are retrieved")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/blip2_stage1_cpu.json"))
    args = ap.parse_args()

    config = load_config(args.config)
    plan = plan_run(config, None, None)
    backbones = Backbones(config.models)
    enc = backbones.vision_encoder
    results = []
    for planned in plan.paradigms:
        opts = planned.options
        if planned.spec.name != "trained_adapter/blip2" or opts.connector.stage1.steps == 0:
            continue
        conn = opts.connector
        pairs = load_caption_pairs(opts.data)
        p = planned.cls(backbones, opts, GenerationSettings())
        stage2_dir = Path(backbones.cache_dir) / "adapters" / p.checkpoint_key(pairs)
        t0 = time.perf_counter()
        feats = encode_images(enc, {q.image_id: q.load_image for q in pairs}, cache_file=stage2_dir / "features.safetensors")
        run = s1.train_stage1(conn, pairs, feats, feature_dim=enc.feature_dim, encoder_fingerprint=enc.fingerprint(),
                              cache_dir=backbones.cache_dir, progress=True)
        prep_s = time.perf_counter() - t0

        held = load_dataset(opts.data.loader, args.split, dict(opts.data.options))
        train_images = {q.image_id for q in pairs}
        samples = [s for s in held.samples if f"{held.name}/{s.sample_id}" not in train_images]
        test_feats = encode_images(enc, {s.sample_id: s.load_image for s in samples})
        F = torch.stack([test_feats[s.sample_id] for s in samples])
        captions = [c for s in samples for c in s.references]
        owner = [i for i, s in enumerate(samples) for _ in s.references]

        untrained = s1.build_stage1_model(conn, enc.feature_dim, run.tokenizer.vocab_ids)
        t0 = time.perf_counter()
        rec = {
            "untrained": s1.itc_retrieval(untrained, run.tokenizer, F, captions, owner, max_len=conn.stage1.max_text_len),
            "stage1": s1.itc_retrieval(run.model, run.tokenizer, F, captions, owner, max_len=conn.stage1.max_text_len),
        }
        score_s = time.perf_counter() - t0
        n_img = len(samples)
        row = {
            "label": planned.label,
            "stage1_checkpoint": run.ckpt_dir.name,
            "stage1_steps": run.result.steps,
            "stage1_batch_size": conn.stage1.batch_size,
            "stage1_trainable_params": run.result.trainable_params,
            "stage1_seconds": round(run.result.seconds, 1),
            "text_vocab": int(run.tokenizer.vocab_size),
            "train_pairs": len(pairs),
            "train_images": len(train_images),
            "loss_total": curve_summary(run.result.loss_curve),
            "loss_parts": {k: curve_summary(c) for k, c in run.result.extra.get("parts_curve", {}).items()},
            "final_temperature": float(run.model.temp.detach().clamp(0.001, 0.5)),
            "heldout_split": args.split,
            "heldout_images": n_img,
            "heldout_captions": len(captions),
            # Random similarities: about 1/N at k=1 and 5/N at k=5, both directions (5 captions per image).
            "approx_chance": {"r1": 1 / n_img, "r5": 5 / n_img},
            "recall": rec,
            "prepare_s": round(prep_s, 1),
            "score_s": round(score_s, 1),
        }
        results.append(row)
        print(json.dumps(row, indent=1))
    if not results:
        raise SystemExit(f"{args.config} has no trained_adapter/blip2 entry with connector.stage1.steps > 0")
    out = {
        "what": "ITC retrieval recall@k on held-out images after BLIP-2 stage 1 vs the same seeded Q-Former untrained",
        "config": args.config if not Path(args.config).resolve().is_relative_to(ROOT)
        else str(Path(args.config).resolve().relative_to(ROOT)),
        "hardware": hardware(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
