"""Choosing in-context demonstrations ("shots") for a query from a support set.

- ``random``: a uniform draw fixed by ``(seed, trial, query.sample_id)`` — the same query gets
  the same shots in every run and paradigm, different trials get different shots, and the draw
  does not depend on the order in which the support set is listed.
- ``rices`` (Retrieval-based In-Context Example Selection, as in Flamingo/OpenFlamingo): the
  ``k`` support samples most similar to the query under a caller-supplied similarity (e.g.
  cosine of image embeddings from the run's scorer), ties broken by ``sample_id``. Returned most
  similar first.

A support sample is never the query itself: same ``sample_id`` or same ``image_ref`` (another
question about the same image would leak the answer) are excluded before choosing.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from tasks.base import Sample

Similarity = Callable[[Sample, Sequence[Sample]], Sequence[float]]
"""``similarity(query, support)`` -> one score per support sample (higher = more similar).

It is always called with the full ``support`` sequence exactly as passed to :func:`select_shots`
(ineligible samples are dropped after scoring), so an implementation may cache support embeddings.
"""


def eligible_support(query: Sample, support: Sequence[Sample]) -> list[Sample]:
    """Support samples that may serve as shots for ``query`` (not the query, not its image)."""
    return [s for s in support if s.sample_id != query.sample_id and s.image_ref != query.image_ref]


def _rng(seed: int, trial: int, query_id: str) -> random.Random:
    digest = hashlib.sha256(f"shots\x00{seed}\x00{trial}\x00{query_id}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def select_shots(
    query: Sample,
    support: Sequence[Sample],
    k: int,
    *,
    strategy: Literal["random", "rices"] = "random",
    seed: int = 0,
    trial: int = 0,
    similarity: Similarity | None = None,
) -> list[Sample]:
    """The ``k`` demonstrations for ``query`` (see module docstring for the strategies)."""
    if k < 0:
        raise ValueError(f"number of shots must be >= 0, got {k}")
    if strategy not in ("random", "rices"):
        raise ValueError(f"unknown shot strategy {strategy!r}; choose 'random' or 'rices'")
    if strategy == "rices" and similarity is None:
        raise ValueError("strategy 'rices' needs a similarity function (e.g. image-embedding cosine)")
    if k == 0:
        return []
    pool = eligible_support(query, support)
    if k > len(pool):
        raise ValueError(
            f"{k} shots requested for {query.sample_id!r} but the support set has only {len(pool)} eligible "
            f"sample(s) ({len(support)} in total, minus the query and samples of the same image)"
        )
    ids = [s.sample_id for s in pool]
    if len(set(ids)) != len(ids):
        raise ValueError("support set has duplicate sample_ids; shot selection would not be well defined")
    if strategy == "random":
        ordered = sorted(pool, key=lambda s: s.sample_id)
        return _rng(seed, trial, query.sample_id).sample(ordered, k)
    assert similarity is not None
    # scored against the whole support, in the caller's order, so callers may cache support embeddings
    scores = [float(x) for x in similarity(query, support)]
    if len(scores) != len(support):
        raise ValueError(f"similarity returned {len(scores)} scores for {len(support)} support samples")
    allowed = {s.sample_id for s in pool}
    ranked = sorted(
        ((score, s) for score, s in zip(scores, support) if s.sample_id in allowed),
        key=lambda pair: (-pair[0], pair[1].sample_id),
    )
    if any(math.isnan(score) for score, _ in ranked):
        raise ValueError(f"similarity returned NaN for query {query.sample_id!r}")
    return [s for _, s in ranked[:k]]


def embedding_similarity(embeddings: Mapping[str, np.ndarray], *, key: Literal["image_ref", "sample_id"] = "image_ref") -> Similarity:
    """Cosine similarity between precomputed embeddings, looked up by each sample's ``key``.

    Keying by ``image_ref`` lets several questions on one image share an image embedding.
    """

    def vector(s: Sample) -> np.ndarray:
        name = getattr(s, key)
        if name not in embeddings:
            raise KeyError(f"no embedding for {key}={name!r}")
        v = np.asarray(embeddings[name], dtype=np.float64).ravel()
        norm = np.linalg.norm(v)
        if norm == 0:
            raise ValueError(f"zero embedding for {key}={name!r}")
        return v / norm

    def similarity(query: Sample, candidates: Sequence[Sample]) -> list[float]:
        q = vector(query)
        if not candidates:
            return []
        matrix = np.stack([vector(c) for c in candidates])
        return (matrix @ q).tolist()

    return similarity
