"""Do the trained connectors use the image? Caption NLL on held-out images, right vs shuffled image.

CIDEr alone cannot tell a connector that learned the caption *style* from one that reads the
image. This script takes the connectors of ``configs/adapters_flickr8k.yaml`` (trained ones are
loaded from the adapter cache that ``mmbench run`` filled, or trained here with the same key;
``train.steps: 0`` ones are the seeded untrained connectors), and scores the human captions of the
run's held-out test images teacher-forced, once with each caption's own image and once with the
images shuffled (a derangement: every caption gets another test image). Per-token NLL, with a
paired 95% bootstrap CI over images of (shuffled − right): > 0 means the image helps.

    python benchmarks/bench_adapters.py            # writes benchmarks/results/adapters_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from harness.backbones import Backbones
from harness.config import load_config
from harness.models.llm import GenerationSettings
from harness.plan import plan_run
from harness.tracking import hardware
from paradigms.trained_adapter.multimodal import Image as Img
from paradigms.trained_adapter.multimodal import Target

ROOT = Path(__file__).resolve().parents[1]


def caption_nll(paradigm: Any, items: Sequence[tuple[str, Any, str]], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (sum of target NLL, number of target tokens) for (image id, image, caption) rows."""
    mm, prompt = paradigm.mm, paradigm.options.caption_prompt
    sums, counts = [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        rows = [[Img(0), prompt, Target(" " + cap.strip() + "\n")] for _, _, cap in chunk]
        feats = [paradigm._feature(iid, im).unsqueeze(0) for iid, im, _ in chunk]
        with torch.inference_mode():
            lp, n = mm.target_logprobs(mm.build(rows, feats))
        sums += (-lp).tolist()
        counts += n.tolist()
    return np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)


def paired_ci(per_image_right: np.ndarray, per_image_shuf: np.ndarray, tokens: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95% bootstrap CI (resampling images) of the token-weighted NLL difference shuffled − right."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tokens), size=(n_boot, len(tokens)))
    diff = (per_image_shuf[idx].sum(1) - per_image_right[idx].sum(1)) / tokens[idx].sum(1)
    return [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/adapters_flickr8k.yaml"))
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None, metavar="LABEL",
                    help="score only these paradigm labels and update their rows in an existing --out file")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/adapters_cpu.json"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    config = load_config(args.config)
    plan = plan_run(config, None, None)
    task = plan.tasks[0]
    samples = list(task.dataset.samples)
    images = {s.sample_id: s.load_image().convert("RGB") for s in samples}
    ids = [s.sample_id for s in samples]
    shuffled = {iid: ids[(i + 1) % len(ids)] for i, iid in enumerate(ids)}  # a derangement
    caps = [(s.sample_id, c) for s in samples for c in s.references[: args.captions_per_image]]
    right = [(iid, images[iid], c) for iid, c in caps]
    shuf = [(shuffled[iid], images[shuffled[iid]], c) for iid, c in caps]
    owner = np.asarray([ids.index(iid) for iid, _ in caps])

    backbones = Backbones(config.models)
    results = []
    for planned in plan.paradigms:
        if args.only is not None and planned.label not in args.only:
            continue
        p = planned.cls(backbones, planned.options, GenerationSettings())
        t0 = time.perf_counter()
        p.prepare()
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rs, rn = caption_nll(p, right, args.batch)
        ss, sn = caption_nll(p, shuf, args.batch)
        score_s = time.perf_counter() - t0
        assert np.array_equal(rn, sn)
        per_r = np.bincount(owner, rs, len(ids))
        per_s = np.bincount(owner, ss, len(ids))
        tok = np.bincount(owner, rn, len(ids))
        r = p.train_result
        gates = None
        if hasattr(p.mm.connector, "blocks"):
            gates = [[float(torch.tanh(b.attn_gate)), float(torch.tanh(b.ff_gate))] for b in p.mm.connector.blocks]
        row = {
            "label": planned.label,
            "train_steps": planned.options.train.steps,
            "trainable_params": p.trainable_params,
            "train_seconds": round(r.seconds, 1) if r else None,
            "final_train_loss": r.loss_curve[-1][1] if r and r.loss_curve else None,
            "nll_right": float(rs.sum() / rn.sum()),
            "nll_shuffled": float(ss.sum() / sn.sum()),
            "shuffled_minus_right": float((ss.sum() - rs.sum()) / rn.sum()),
            "shuffled_minus_right_ci95": paired_ci(per_r, per_s, tok, args.bootstrap, config.seed),
            "images_where_right_is_better": int((per_r < per_s).sum()),
            "tanh_gates_attn_ff": gates,
            "prepare_s": round(prep_s, 1),
            "score_s": round(score_s, 1),
        }
        results.append(row)
        print(json.dumps(row))
    out = {
        "what": "teacher-forced caption NLL per token on held-out Flickr8k test images, right vs shuffled image",
        "config": args.config if not Path(args.config).resolve().is_relative_to(ROOT)
        else str(Path(args.config).resolve().relative_to(ROOT)),
        "task": task.spec.name,
        "split": task.dataset.split,
        "images": len(ids),
        "captions": len(caps),
        "captions_per_image": args.captions_per_image,
        "shuffle": "caption i scored with test image i+1 (cyclic; no caption keeps its image)",
        "hardware": hardware(),
        "results": results,
    }
    if args.only is not None and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if {k: old.get(k) for k in ("config", "images", "captions")} != {k: out[k] for k in ("config", "images", "captions")}:
            raise SystemExit(f"{args.out} was made with another config or sample; rerun without --only")
        mine = {r["label"] for r in results}
        order = [p.label for p in plan.paradigms]
        rows = [r for r in old["results"] if r["label"] not in mine] + results
        out["results"] = sorted(rows, key=lambda r: order.index(r["label"]) if r["label"] in order else len(order))
        out["hardware_per_label"] = {**old.get("hardware_per_label", {}), **{lbl: out["hardware"] for lbl in mine}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
