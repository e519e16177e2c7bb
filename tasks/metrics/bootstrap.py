"""Bootstrap confidence intervals and paired bootstrap significance tests.

All resampling is over *samples* (images for captions, questions for VQA) with replacement, seeded
through ``numpy.random.default_rng(seed)``, so a run's CIs are reproducible. Intervals are percentile
intervals (2.5th and 97.5th percentile of the resampled statistic).

Corpus metrics (BLEU, METEOR, CIDEr) are not means of per-sample scores, so for them the metric is
recomputed on every resample; the helpers here take *multiplicity weights* (how often each sample
was drawn) so that recomputation can be vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_N_BOOT = 1000
CI_LEVEL = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` sample positions drawn with replacement; row b is resample b."""
    if n <= 0 or n_boot <= 0:
        return np.zeros((max(n_boot, 0), max(n, 0)), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int64)


def counts_from_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicity of each sample in each resample: ``(B, n)`` float array from ``(B, n)`` indices."""
    idx = np.atleast_2d(idx)
    b = idx.shape[0]
    flat = (idx + np.arange(b, dtype=np.int64)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_ci(stats: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates are ignored)."""
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(stats, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(lo), float(hi))


def mean_ci(scores: Sequence[float], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
            idx: np.ndarray | None = None) -> tuple[float, float]:
    """CI of the mean of per-sample scores (exactly the corpus value for mean-type metrics)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    if idx is None:
        idx = bootstrap_indices(s.size, n_boot, seed)
    return percentile_ci(s[idx].mean(axis=1))


# --- paired tests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedResult:
    """Outcome of a paired bootstrap test of system A against system B (difference = A − B).

    ``p_value`` is two-sided: the share of resamples whose centred difference is at least as far
    from 0 as the observed difference (null hypothesis: no difference), with the +1 correction so
    it is never exactly 0.
    """

    mean_diff: float
    ci: tuple[float, float]
    p_value: float
    n: int
    n_boot: int
    value_a: float
    value_b: float


def _p_value(observed: float, replicates: np.ndarray) -> float:
    reps = replicates[~np.isnan(replicates)]
    if reps.size == 0:
        return float("nan")
    extreme = np.abs(reps - observed) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + reps.size))


def _aligned(a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("pass both systems' scores as mappings (id -> score) or both as sequences")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            missing = sorted(map(str, set(a) ^ set(b)))[:5]
            raise ValueError(f"the two systems were scored on different sample ids (e.g. {missing})")
        keys = list(a)
        return (np.array([a[k] for k in keys], dtype=np.float64), np.array([b[k] for k in keys], dtype=np.float64))
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(f"per-sample scores must be 1-D and of equal length, got {xa.shape} and {xb.shape}")
    return xa, xb


def paired_bootstrap(a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float], *,
                     n_boot: int = 10_000, seed: int = 0) -> PairedResult:
    """Paired bootstrap test on per-sample scores of two systems over the same samples.

    Mappings are aligned by sample id; sequences must already be in the same sample order. The same
    resampled ids are used for both systems, so per-sample difficulty cancels out.
    """
    xa, xb = _aligned(a, b)
    n = xa.size
    if n == 0:
        raise ValueError("no samples to compare")
    d = xa - xb
    observed = float(d.mean())
    idx = bootstrap_indices(n, n_boot, seed)
    reps = d[idx].mean(axis=1) if n_boot > 0 else np.zeros(0)
    return PairedResult(observed, percentile_ci(reps), _p_value(observed, reps), n, n_boot,
                        float(xa.mean()), float(xb.mean()))


def paired_bootstrap_corpus(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                            n: int, *, n_boot: int = 1000, seed: int = 0) -> PairedResult:
    """Paired bootstrap for corpus-level metrics (CIDEr, BLEU, METEOR).

    ``metric_a``/``metric_b`` take an array of sample positions (with repeats) and return the corpus
    metric of that system recomputed on exactly those samples — e.g. from
    :func:`tasks.metrics.caption.corpus_metric`. Both see the same resamples.
    """
    if n <= 0:
        raise ValueError("no samples to compare")
    full = np.arange(n)
    va, vb = float(metric_a(full)), float(metric_b(full))
    observed = va - vb
    idx = bootstrap_indices(n, n_boot, seed)
    reps = np.array([metric_a(row) - metric_b(row) for row in idx], dtype=np.float64)
    return PairedResult(observed, percentile_ci(reps), _p_value(observed, reps), n, n_boot, va, vb)
