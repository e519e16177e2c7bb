"""k-shot gain of each paradigm in a finished run: per-sample score at k shots (mean over trials)
minus 0-shot on the same samples, with a 95% paired bootstrap CI (resampling samples).

    python benchmarks/kshot_gain.py --results-dir results/interleaved [--metric CIDEr] [--shots 2,4]

Reads the per-sample scores `mmbench run` logged to MLflow (each nested run's predictions.jsonl).
Prints one Markdown row per paradigm: 0-shot mean, then k-shot mean and gain [CI] for each k.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, required=True)
    ap.add_argument("--metric", default="CIDEr")
    ap.add_argument("--shots", default="2,4")
    ap.add_argument("--bootstrap", type=int, default=10000)
    args = ap.parse_args()
    from mlflow import MlflowClient

    from harness.compare import _rows
    from harness.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(args.results_dir))
    exp = client.get_experiment_by_name("mmbench")
    col = f"score_{args.metric}"
    # paradigm -> shots -> trial -> per-sample scores; a rerun logs cached units again: newest run wins
    scores: dict[str, dict[int, dict[int, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in client.search_runs([exp.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"]):
        p = r.data.params
        if "shots" not in p or "trial" not in p or int(p["trial"]) in scores[p["paradigm"]][int(p["shots"])]:
            continue  # parent and training runs; older logs of a unit
        try:
            rows = _rows(client, r.info.run_id)
        except ValueError:
            continue
        if rows and col in rows[0]:
            scores[p["paradigm"]][int(p["shots"])][int(p["trial"])] = {x["sample_id"]: float(x[col]) for x in rows}
    rng = np.random.default_rng(0)
    for para in sorted(scores):
        if 0 not in scores[para]:
            continue
        base = scores[para][0][min(scores[para][0])]
        ids = sorted(base)
        b = 100 * np.array([base[i] for i in ids])
        cells = [f"{b.mean():.1f}"]
        for k in (int(s) for s in args.shots.split(",")):
            trials = list(scores[para].get(k, {}).values())
            if not trials:
                cells.append("—")
                continue
            kk = 100 * np.mean([[t[i] for i in ids] for t in trials], axis=0)
            d = kk - b
            boots = d[rng.integers(0, len(ids), size=(args.bootstrap, len(ids)))].mean(axis=1)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            cells.append(f"{kk.mean():.1f} ({d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}], {len(trials)} trials)")
        print(f"| {para} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
