"""Paired significance tests that stay valid at the number of samples shown.

A bootstrap p-value over 3 samples is anti-conservative (3 samples that all favour A give p ≈ 0,
while only 2³ = 8 sign patterns exist, so no test can reach p < 0.125 one-sided). The report uses a
paired **sign-flip permutation test** on per-sample differences instead:

* up to :data:`EXACT_MAX` non-zero differences the test enumerates every sign pattern (exact p);
* above that it draws :data:`N_PERM` random sign patterns (Monte Carlo p, ``(1 + hits) / (1 + draws)``,
  never 0).

Under the null the two systems are exchangeable on each sample, so each difference's sign is a fair
coin; the statistic is the absolute mean difference (two-sided). No significance mark is given below
:data:`MIN_N_STAR` samples, and marks are decided on Holm–Bonferroni adjusted p-values over all the
comparisons of one report section (:func:`holm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: Non-zero differences up to which every sign pattern is enumerated (2**16 = 65,536 patterns).
EXACT_MAX = 16
#: Random sign patterns above EXACT_MAX.
N_PERM = 20_000
#: Fewest paired samples for which a significance mark is ever printed.
MIN_N_STAR = 10
#: Two-sided level of the marks (after Holm adjustment).
ALPHA = 0.05


@dataclass(frozen=True)
class PairedTest:
    """A vs B on the same samples: mean difference A − B with a 95% CI, and a permutation p-value."""

    n: int
    mean_diff: float
    ci: tuple[float, float]
    p_value: float
    method: str

    @property
    def star_allowed(self) -> bool:
        return self.n >= MIN_N_STAR


def _aligned(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    if set(a) != set(b):
        raise ValueError(f"different sample ids ({len(set(a) ^ set(b))} not in both)")
    ids = sorted(a)
    return np.array([a[i] for i in ids], dtype=np.float64) - np.array([b[i] for i in ids], dtype=np.float64)


def sign_flip_p(d: Sequence[float] | np.ndarray, *, n_perm: int = N_PERM, seed: int = 0) -> tuple[float, str]:
    """Two-sided p-value of the paired sign-flip permutation test on differences ``d``, and how."""
    d = np.asarray(d, dtype=np.float64)
    nz = d[d != 0]
    m = nz.size
    if m == 0:
        return 1.0, "exact sign-flip permutation (all differences 0)"
    observed = abs(nz.sum())
    tol = 1e-9 * max(1.0, float(np.abs(nz).sum()))
    if m <= EXACT_MAX:
        patterns = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1) * 2 - 1
        sums = np.abs(patterns @ nz)
        return float(np.mean(sums >= observed - tol)), f"exact sign-flip permutation over {2**m} patterns"
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < n_perm:
        k = min(5000, n_perm - done)
        signs = rng.integers(0, 2, size=(k, m), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ nz) >= observed - tol))
        done += k
    return (1 + hits) / (1 + n_perm), f"sign-flip permutation, {n_perm} random patterns"


def paired_test(a: Mapping[str, float], b: Mapping[str, float], *, n_boot: int = 2000, seed: int = 0) -> PairedTest:
    """Paired comparison of per-sample scores keyed by sample id (same ids on both sides)."""
    from tasks.metrics.bootstrap import bootstrap_indices, percentile_ci

    d = _aligned(a, b)
    if d.size == 0:
        raise ValueError("no samples to compare")
    p, method = sign_flip_p(d, seed=seed)
    ci = percentile_ci(d[bootstrap_indices(d.size, n_boot, seed)].mean(axis=1))
    return PairedTest(int(d.size), float(d.mean()), (float(ci[0]), float(ci[1])), p, method)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN entries stay NaN and are not counted)."""
    idx = [i for i, p in enumerate(p_values) if not (isinstance(p, float) and math.isnan(p))]
    m = len(idx)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def mark(p_adjusted: float, n: int) -> str:
    """``*`` when the Holm-adjusted p is below :data:`ALPHA` and n is at least :data:`MIN_N_STAR`."""
    if n < MIN_N_STAR or math.isnan(p_adjusted):
        return ""
    return "*" if p_adjusted < ALPHA else ""


def rule_text(n_tests: int) -> str:
    """The words printed under every table that shows tests."""
    return (f"* = significant at {ALPHA:.0%} after Holm–Bonferroni correction over the {n_tests} comparison(s) of "
            f"this section (two-sided paired sign-flip permutation test on per-sample scores: exact up to "
            f"{EXACT_MAX} non-zero differences, else {N_PERM} random sign patterns). No mark is ever given with "
            f"fewer than {MIN_N_STAR} paired samples; p is printed unadjusted, p_holm adjusted.")
