"""CLIPScore / RefCLIPScore as Hessel et al. define them, on hand-checkable embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.metrics.clipscore import clip_scores, clipscore_result


def _unit(*v: float) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def test_clip_s_and_refclip_s_by_hand():
    img = torch.stack([_unit(1, 0), _unit(1, 0)])
    cand = torch.stack([_unit(1, 1), _unit(-1, 0.2)])  # cos 0.7071 ; negative cos -> clipped to 0
    refs = [torch.stack([_unit(1, 1), _unit(0, 1)]), torch.stack([_unit(0, 1)])]
    cs, rs = clip_scores(img, cand, refs)
    assert cs[0] == pytest.approx(2.5 * math.sqrt(0.5), abs=1e-6)
    assert cs[1] == 0.0
    # sample 0: best reference cos = 1.0 -> harmonic mean of 1.7678 and 1.0
    h = 2 * cs[0] * 1.0 / (cs[0] + 1.0)
    assert rs[0] == pytest.approx(h, abs=1e-6)
    assert rs[1] == 0.0  # CLIP-S of 0 makes the harmonic mean 0


def test_result_is_labelled_with_the_scorer_and_has_cis():
    r = clipscore_result("tag-minilm", [1.0, 0.5, 0.0], [0.8, 0.4, 0.0], n_boot=200, seed=0)
    assert set(r.values) == {"CLIPScore_tag-minilm", "RefCLIPScore_tag-minilm"}
    assert r.values["CLIPScore_tag-minilm"] == pytest.approx(0.5)
    lo, hi = r.ci["CLIPScore_tag-minilm"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
