"""Reference-free CLIPScore and RefCLIPScore (Hessel et al., 2021) over any image–text scorer.

CLIP-S(c, v) = w · max(cos(E_v, E_c), 0) with w = 2.5; RefCLIP-S is the harmonic mean of CLIP-S and
max(max_r cos(E_c, E_r), 0) over the references. The numbers are only as good as the scorer, so
each result is named after the scorer that produced it (``CLIPScore_<scorer>``): with the offline
tag-minilm scorer they are *not* CLIPScore in the paper's sense.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tasks.base import MetricResult
from tasks.metrics.bootstrap import mean_ci

W = 2.5


def clip_scores(
    image_emb: torch.Tensor, cand_emb: torch.Tensor, ref_embs: Sequence[torch.Tensor], w: float = W
) -> tuple[list[float], list[float]]:
    """Per-sample CLIP-S and RefCLIP-S from L2-normalised embeddings (image i ↔ candidate i)."""
    clip_s = (w * (image_emb * cand_emb).sum(-1).clamp(min=0)).tolist()
    ref_s = []
    for c, refs, cs in zip(cand_emb, ref_embs, clip_s):
        best = float((refs @ c).max().clamp(min=0)) if len(refs) else 0.0
        ref_s.append(0.0 if cs + best == 0 else 2 * cs * best / (cs + best))
    return clip_s, ref_s


def clipscore_result(
    scorer_label: str, clip_s: Sequence[float], ref_s: Sequence[float], *, n_boot: int, seed: int
) -> MetricResult:
    a, b = f"CLIPScore_{scorer_label}", f"RefCLIPScore_{scorer_label}"
    n = max(1, len(clip_s))
    return MetricResult(
        values={a: sum(clip_s) / n, b: sum(ref_s) / n},
        ci={a: mean_ci(clip_s, n_boot=n_boot, seed=seed), b: mean_ci(ref_s, n_boot=n_boot, seed=seed)},
        per_sample={a: list(clip_s), b: list(ref_s)},
    )
