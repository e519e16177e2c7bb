"""Cost of the caption bootstrap CIs, as a ratio to one plain pycocoevalcap scoring of the same corpus.

Each row: N images × 5 references of random word salad (no Java: BLEU, ROUGE-L, CIDEr-D; METEOR's
resampling is one more 23-column sum). The baseline is pycocoevalcap's own ``Bleu(4)``, ``Rouge()``
and ``Cider()`` run once on the corpus in this process; the bootstrap is ``n_boot`` corpus-level
recomputations of all three, for both CIDEr modes (``fixed``: the corpus's document frequencies, the
default; ``resample``: recounted on each resample). Writes ``benchmarks/results/bootstrap_cpu.json``.

    python benchmarks/bench_bootstrap.py                      # 50, 500, 5000 images, 1000 resamples
    python benchmarks/bench_bootstrap.py --images 50 --boot 200 --no-write
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from _report import add_output_args, emit
from harness.tracking import hardware
from tasks.metrics.caption import _as_dicts, _bootstrap, resamplable_captions, tokenize_corpus

WORDS = ("a an the dog cat man woman child runs sits stands on in at near grass red blue green ball street "
         "water jumps plays field beach snow bike rides holds looks white black brown small large two three "
         "people group crowd building shirt wearing walking").split()


def corpus(n: int, seed: int) -> tuple[dict[int, list[str]], dict[int, str]]:
    rng = np.random.default_rng(seed)

    def sent() -> str:
        return " ".join(rng.choice(WORDS, int(rng.integers(6, 14))))

    return {i: [sent() for _ in range(5)] for i in range(n)}, {i: sent() for i in range(n)}


def measure(n: int, n_boot: int, seed: int) -> dict[str, object]:
    refs, preds = corpus(n, seed)
    tc = tokenize_corpus(refs, preds, "fallback")
    gts, res = _as_dicts(tc)
    t0 = time.perf_counter()
    Bleu(4).compute_score(gts, res, verbose=0)
    Rouge().compute_score(gts, res)
    Cider().compute_score(gts, res)
    baseline = time.perf_counter() - t0
    row: dict[str, object] = {"images": n, "n_boot": n_boot, "pycocoevalcap_one_scoring_s": round(baseline, 4)}
    for mode in ("fixed", "resample"):
        t0 = time.perf_counter()
        stats = resamplable_captions(refs, preds, tokenizer="fallback", meteor=False, cider_df=mode)
        prepare = time.perf_counter() - t0
        t0 = time.perf_counter()
        cis = _bootstrap(stats, n_boot, seed)
        boot = time.perf_counter() - t0
        row[f"cider_df_{mode}"] = {
            "metrics": sorted(cis), "prepare_s": round(prepare, 4), "bootstrap_s": round(boot, 4),
            "bootstrap_over_one_scoring": round(boot / baseline, 3),
            "per_resample_over_one_scoring": round(boot / n_boot / baseline, 5),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[50, 500, 5000])
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    add_output_args(ap)
    args = ap.parse_args()
    rows = [measure(n, args.boot, args.seed) for n in args.images]
    result = {"benchmark": "caption_bootstrap_cost", "rows": rows, "hardware": hardware(),
              "note": "bootstrap_over_one_scoring: seconds for all resamples / seconds for one pycocoevalcap "
                      "BLEU+ROUGE+CIDEr scoring of the same corpus, both in this process"}
    emit(result, args, "bootstrap_cpu.json")


if __name__ == "__main__":
    main()
