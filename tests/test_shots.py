"""Shot selection: deterministic random draws, RICES by a supplied similarity, never the query itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.base import Sample
from tasks.shots import embedding_similarity, select_shots


def _blank() -> Image.Image:
    return Image.new("RGB", (2, 2))


def _s(sid: str, image: str | None = None) -> Sample:
    return Sample(sid, image or f"img/{sid}", _blank, question="q?", answers=("a",))


SUPPORT = [_s(f"s{i:02d}") for i in range(20)]


def test_random_is_deterministic_and_varies_with_trial_seed_and_query() -> None:
    q = _s("query")
    a = select_shots(q, SUPPORT, 4, strategy="random", seed=0, trial=0)
    assert a == select_shots(q, SUPPORT, 4, strategy="random", seed=0, trial=0)
    assert len(a) == 4 and len({s.sample_id for s in a}) == 4
    others = [
        select_shots(q, SUPPORT, 4, strategy="random", seed=0, trial=1),
        select_shots(q, SUPPORT, 4, strategy="random", seed=1, trial=0),
        select_shots(_s("other"), SUPPORT, 4, strategy="random", seed=0, trial=0),
    ]
    assert all(o != a for o in others)


def test_random_does_not_depend_on_support_order() -> None:
    q = _s("query")
    assert select_shots(q, SUPPORT, 5, seed=3) == select_shots(q, list(reversed(SUPPORT)), 5, seed=3)


def test_random_covers_the_support_roughly_uniformly() -> None:
    counts = {s.sample_id: 0 for s in SUPPORT}
    for t in range(400):
        for s in select_shots(_s("query"), SUPPORT, 2, seed=0, trial=t):
            counts[s.sample_id] += 1
    assert min(counts.values()) > 15 and max(counts.values()) < 70  # expected 40 each


def test_the_query_and_its_image_are_never_shots() -> None:
    support = SUPPORT[:3] + [_s("query"), _s("same-image", image="img/query")]
    q = _s("query")
    for t in range(30):
        chosen = select_shots(q, support, 3, seed=0, trial=t)
        assert {s.sample_id for s in chosen} == {"s00", "s01", "s02"}
    with pytest.raises(ValueError, match="only 3 eligible"):
        select_shots(q, support, 4, seed=0)


def test_k_larger_than_support_and_bad_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="5 shots requested .* only 2 eligible .*2 in total"):
        select_shots(_s("q"), SUPPORT[:2], 5)
    with pytest.raises(ValueError, match="needs a similarity"):
        select_shots(_s("q"), SUPPORT, 1, strategy="rices")
    with pytest.raises(ValueError, match="unknown shot strategy"):
        select_shots(_s("q"), SUPPORT, 1, strategy="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        select_shots(_s("q"), SUPPORT, -1)
    assert select_shots(_s("q"), [], 0) == []


def test_rices_returns_the_known_nearest_neighbours_most_similar_last() -> None:
    # points on a line: query at 0.0; neighbours by distance are s03 (0.1), s07 (-0.2), s01 (0.35)
    positions = {f"s{i:02d}": 5.0 + i for i in range(20)}
    positions.update({"s03": 0.1, "s07": -0.2, "s01": 0.35, "query": 0.0})

    def similarity(query: Sample, cands):
        return [-abs(positions[c.sample_id] - positions[query.sample_id]) for c in cands]

    chosen = select_shots(_s("query"), SUPPORT, 3, strategy="rices", similarity=similarity)
    assert [s.sample_id for s in chosen] == ["s01", "s07", "s03"]  # nearest the query goes last


def test_rices_breaks_ties_by_sample_id_and_rejects_bad_scores() -> None:
    flat = lambda q, cands: [1.0] * len(cands)  # noqa: E731
    chosen = select_shots(_s("q"), list(reversed(SUPPORT)), 3, strategy="rices", similarity=flat)
    assert [s.sample_id for s in chosen] == ["s02", "s01", "s00"]
    with pytest.raises(ValueError, match="NaN"):
        select_shots(_s("q"), SUPPORT, 1, strategy="rices", similarity=lambda q, c: [float("nan")] * len(c))
    with pytest.raises(ValueError, match="3 scores for 20 support samples"):
        select_shots(_s("q"), SUPPORT, 1, strategy="rices", similarity=lambda q, c: [0.0, 0.0, 0.0])


def test_embedding_cosine_similarity_by_image() -> None:
    emb = {"img/query": np.array([1.0, 0.0]), "img/a": np.array([10.0, 1.0]), "img/b": np.array([0.0, 1.0]),
           "img/c": np.array([-1.0, 0.0]), "img/d": np.array([1.0, 1.0])}
    support = [_s("a"), _s("b"), _s("c"), _s("d")]
    chosen = select_shots(_s("query"), support, 2, strategy="rices", similarity=embedding_similarity(emb))
    assert [s.sample_id for s in chosen] == ["d", "a"]  # cosine ignores the norm of a
    with pytest.raises(KeyError, match="img/e"):
        select_shots(_s("query"), support + [_s("e")], 1, strategy="rices", similarity=embedding_similarity(emb))


def test_rices_scores_the_full_support_so_callers_can_cache_it() -> None:
    seen: list[list[str]] = []
    support = SUPPORT[:4] + [_s("query"), _s("twin", image="img/query")]

    def similarity(query: Sample, cands):
        seen.append([c.sample_id for c in cands])
        return [10.0 if c.image_ref == "img/query" else float(i) for i, c in enumerate(cands)]

    chosen = select_shots(_s("query"), support, 2, strategy="rices", similarity=similarity)
    assert seen == [[s.sample_id for s in support]]
    assert [s.sample_id for s in chosen] == ["s02", "s03"]  # the query's own image never wins
