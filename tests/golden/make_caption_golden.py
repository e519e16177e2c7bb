"""Regenerate ``caption_golden.json`` by running pycocoevalcap's scorers the canonical COCO way.

This is the reference side of the golden tests: it does NOT use mmbench. It PTB-tokenises the
references and the candidates with ``pycocoevalcap``'s ``PTBTokenizer`` (two calls, as ``eval.py``
does) and runs ``Bleu(4)``, ``Meteor()``, ``Rouge()`` and ``Cider()`` on the whole corpus.

    python tests/golden/make_caption_golden.py            # needs Java and ../shared/data

Only ids and numbers of the Flickr8k fixture are stored (its captions are research-use data and
are read from ../shared/data at test time); the synthetic fixture's text was written for mmbench.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

HERE = Path(__file__).resolve().parent
FLICKR = HERE.parents[1].parent / "shared" / "data" / "flickr8k-subset" / "captions.txt"
N_FLICKR = 20

SYNTHETIC_REFS = {
    "s1": ["A brown dog runs across a grassy field.", "A dog is running on the grass.",
           "The brown dog sprints through a green meadow.", "A puppy running outside on a sunny day."],
    "s2": ["Two children (a boy and a girl) play on the beach.", "Kids are playing in the sand near the sea.",
           "A boy and a girl build a sandcastle.", "Two young kids playing at the beach!"],
    "s3": ["A man in a red T-shirt rides a bicycle down the street.", "A cyclist wearing red on a city road.",
           "Man riding his bike on a busy street.", "A person on a bicycle in traffic."],
    "s4": ["A woman holds a cup of coffee at a café.", "Woman drinking coffee in a small cafe.",
           "A lady sits at a table with a coffee cup.", "Someone enjoying a hot drink indoors."],
    "s5": ["Three birds sit on a wire against a blue sky.", "Birds perched on a power line.",
           "3 small birds on an electric cable.", "Several birds resting on a wire, don't they look cold?"],
    "s6": ["A snowboarder jumps off a ramp in the snow.", "A person doing a trick on a snowboard.",
           "Snowboarder in mid-air above a snowy slope.", "Someone flying through the air on a snowboard."],
}
SYNTHETIC_PREDS = {
    "s1": "A brown dog is running through the grass.",
    "s2": "Two kids playing on a beach",
    "s3": "",
    "s4": "A woman with a coffee cup in a cafe...",
    "s5": "Birds on a wire; it's cold!",
    "s6": "A man riding a skateboard down a hill (in the snow).",
}


def official_scores(refs: dict, preds: dict) -> tuple[dict, dict]:
    """Corpus metrics and per-image CIDEr exactly as pycocoevalcap computes them."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tokenizer.tokenize({k: [{"caption": preds[k]}] for k in refs})
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"Bleu_{k + 1}"] = float(bleu[k])
    meteor, _ = Meteor().compute_score(gts, res)
    out["METEOR"] = float(meteor)
    rouge, _ = Rouge().compute_score(gts, res)
    out["ROUGE_L"] = float(rouge)
    cider, cider_per = Cider().compute_score(gts, res)
    out["CIDEr"] = float(cider)
    per = {"CIDEr": {k: float(v) for k, v in zip(gts.keys(), cider_per)}}
    # HELM-style: CIDEr computed one image at a time and averaged (what mmbench must NOT do).
    single = [Cider().compute_score({k: gts[k]}, {k: res[k]})[0] for k in gts]
    out["_mean_of_single_image_CIDEr"] = float(sum(single) / len(single))
    return out, per


def flickr_fixture() -> tuple[list[str], dict, dict]:
    caps: dict[str, list[str]] = defaultdict(list)
    with open(FLICKR, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            caps[row["image"]].append(row["caption"])
    ids = [i for i in caps if len(caps[i]) == 5][:N_FLICKR]
    return ids, {i: caps[i][:4] for i in ids}, {i: caps[i][4] for i in ids}


def main() -> None:
    synth_expected, synth_per = official_scores(SYNTHETIC_REFS, SYNTHETIC_PREDS)
    ids, refs, preds = flickr_fixture()
    flickr_expected, flickr_per = official_scores(refs, preds)
    golden = {
        "generator": f"tests/golden/make_caption_golden.py with pycocoevalcap {version('pycocoevalcap')}",
        "synthetic": {"references": SYNTHETIC_REFS, "predictions": SYNTHETIC_PREDS,
                      "expected": synth_expected, "expected_per_sample": synth_per},
        "flickr8k": {"source": "../shared/data/flickr8k-subset/captions.txt",
                     "image_ids": ids, "reference_indices": [0, 1, 2, 3], "prediction_index": 4,
                     "expected": flickr_expected, "expected_per_sample": flickr_per},
    }
    (HERE / "caption_golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
