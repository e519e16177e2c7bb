"""Corpus BLEU-1..4 from per-image sufficient statistics, vectorised over bootstrap resamples.

The statistics come from pycocoevalcap's own ``BleuScorer`` cooking (clipped n-gram matches, guess
counts, test length and the "closest" reference length), and the final formula repeats its
``compute_score`` step by step — including its ``tiny``/``small`` smoothing constants and its
brevity penalty — so the identity resample reproduces pycocoevalcap's corpus BLEU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer

N_GRAM = 4
_TINY = 1e-15
_SMALL = 1e-9


def bleu_stats(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
    """``(N, 2 + 2*4)`` array: testlen, closest reflen, guess[1..4], correct[1..4] per image."""
    scorer = BleuScorer(n=N_GRAM)
    for h, r in zip(hyps, refs, strict=True):
        scorer += (h, list(r))
    rows = []
    for comps in scorer.ctest:
        testlen = comps["testlen"]
        reflen = min((abs(length - testlen), length) for length in comps["reflen"])[1]
        rows.append([testlen, reflen, *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 + 2 * N_GRAM)


def bleu_from_stats(agg: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 ``(B, 4)`` from aggregated statistics ``(B, 10)`` (weighted sums over images)."""
    agg = np.atleast_2d(agg)
    testlen, reflen = agg[:, 0], agg[:, 1]
    guess, correct = agg[:, 2:2 + N_GRAM], agg[:, 2 + N_GRAM:]
    prec = (correct + _TINY) / (guess + _SMALL)
    cum = np.cumprod(prec, axis=1)
    bleus = cum ** (1.0 / np.arange(1, N_GRAM + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        bp = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleus * bp[:, None]
