"""Bootstrap CIs and paired bootstrap tests behave as statistics should."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics import corpus_metric, paired_bootstrap, paired_bootstrap_corpus
from tasks.metrics.bootstrap import bootstrap_indices, counts_from_indices, mean_ci, percentile_ci


def test_indices_and_counts():
    idx = bootstrap_indices(7, 5, seed=1)
    assert idx.shape == (5, 7) and idx.min() >= 0 and idx.max() < 7
    assert np.array_equal(idx, bootstrap_indices(7, 5, seed=1))
    assert not np.array_equal(idx, bootstrap_indices(7, 5, seed=2))
    w = counts_from_indices(idx, 7)
    assert w.shape == (5, 7) and np.all(w.sum(axis=1) == 7)
    assert np.array_equal(w[2], np.bincount(idx[2], minlength=7))


def test_mean_ci_width_matches_normal_theory():
    x = np.random.default_rng(0).normal(10.0, 2.0, 400)
    lo, hi = mean_ci(x, n_boot=2000, seed=0)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert percentile_ci(np.array([np.nan, np.nan])) != percentile_ci(np.array([1.0, 2.0]))


def test_paired_identical_systems():
    a = [0.1, 0.5, 0.9, 0.3]
    r = paired_bootstrap(a, a, n_boot=500)
    assert r.mean_diff == 0.0 and r.ci == (0.0, 0.0) and r.p_value == 1.0


def test_paired_clear_difference_is_significant():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 200)
    a = b + 0.1 + rng.normal(0, 0.05, 200)
    r = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert r.mean_diff == pytest.approx(np.mean(a - b))
    assert r.ci[0] > 0 and r.p_value < 0.01
    assert r.value_a == pytest.approx(a.mean()) and r.value_b == pytest.approx(b.mean())


def test_paired_noise_is_not_significant_and_pairing_matters():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, 300)           # large between-sample spread
    a = base + rng.normal(0, 1, 300)
    b = base + rng.normal(0, 1, 300)
    assert paired_bootstrap(a, b, n_boot=2000).p_value > 0.05
    shifted = base + 0.5 + rng.normal(0, 0.2, 300)
    paired = paired_bootstrap(shifted, base, n_boot=2000)
    assert paired.p_value < 0.01               # pairing removes the spread of sample difficulty
    unpaired_ci_half = 1.96 * np.sqrt(shifted.var() / 300 + base.var() / 300)
    assert (paired.ci[1] - paired.ci[0]) / 2 < unpaired_ci_half / 10


def test_paired_mappings_align_by_id():
    a = {"x": 1.0, "y": 0.0, "z": 1.0}
    b = {"z": 0.0, "x": 1.0, "y": 0.0}
    r = paired_bootstrap(a, b, n_boot=200)
    assert r.mean_diff == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="different sample ids"):
        paired_bootstrap(a, {"x": 1.0, "y": 0.0}, n_boot=10)
    with pytest.raises(TypeError):
        paired_bootstrap(a, [1.0, 0.0, 0.0], n_boot=10)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0], n_boot=10)


def test_paired_corpus_cider():
    """Corpus-metric paired test: both systems' CIDEr recomputed on the same resampled images."""
    scenes = ["a brown dog runs on the grass", "two children play in the sand", "a man rides a red bike",
              "a woman drinks coffee in a cafe", "birds sit on a wire", "a snowboarder jumps in the air",
              "a black dog swims in a lake", "a boy kicks a ball on the grass"]
    refs = {i: [s, f"there is {s}", f"{s} today"] for i, s in enumerate(scenes)}
    good = {i: r[0] for i, r in refs.items()}
    bad = {i: "a photo of something" for i in refs}
    metric_good = corpus_metric(refs, good, "CIDEr", tokenizer="fallback")
    metric_bad = corpus_metric(refs, bad, "CIDEr", tokenizer="fallback")
    r = paired_bootstrap_corpus(metric_good, metric_bad, len(refs), n_boot=300, seed=0)
    assert r.value_a > r.value_b and r.ci[0] > 0 and r.p_value < 0.01
    same = paired_bootstrap_corpus(metric_good, metric_good, len(refs), n_boot=50)
    assert same.mean_diff == 0.0 and same.p_value == 1.0
    # a resample that repeats an image changes the document frequencies, hence the score
    assert metric_good(np.array([0, 0, 1, 2, 3, 4, 5, 6])) != pytest.approx(metric_good(np.arange(8)))
    with pytest.raises(ValueError, match="metric"):
        corpus_metric(refs, good, "SPICE", tokenizer="fallback")
