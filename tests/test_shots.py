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


# ----------------------------------------------------------------------- batched retrieval
def _index_case(n: int = 300, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    support = [_s(f"s{i:04d}", image=f"img/{i // 3}") for i in range(n)]  # 3 questions per image
    img = rng.normal(size=(n // 3, d))[np.arange(n) // 3]
    txt = rng.normal(size=(n, d))
    return support, img, txt, rng


def test_support_index_equals_select_shots_per_query_most_similar_last() -> None:
    from tasks.shots import SupportIndex

    support, img, txt, rng = _index_case()
    queries = [support[5], _s("new", image="img/new"), support[200]]
    q_img = np.stack([img[5], rng.normal(size=16), img[200]])
    q_txt = np.stack([txt[5], rng.normal(size=16), txt[200]])
    for with_text in (False, True):
        index = SupportIndex.build(support, img, txt if with_text else None)
        got = index.select(queries, q_img, 4, q_txt if with_text else None, chunk=2)
        for q, qi, qt, picked in zip(queries, q_img, q_txt, got):
            def sim(query, cands, qi=qi, qt=qt):
                cos = lambda m, v: (m / np.linalg.norm(m, axis=1, keepdims=True)) @ (v / np.linalg.norm(v))  # noqa: E731
                s = cos(img, qi)
                return ((s + cos(txt, qt)) / 2 if with_text else s).tolist()

            want = select_shots(q, support, 4, strategy="rices", similarity=sim)
            assert [s.sample_id for s in picked] == [s.sample_id for s in want]
            assert all(s.image_ref != q.image_ref for s in picked)  # the query's own image never shows
            scores = sim(q, support)
            order = [scores[support.index(s)] for s in picked]
            assert order == sorted(order)  # most similar last


def test_support_index_skips_unusable_rows_and_counts_eligible() -> None:
    from tasks.shots import SupportIndex

    support, img, _, _ = _index_case(n=9)
    usable = np.ones(9, dtype=bool)
    usable[[0, 1]] = False
    index = SupportIndex.build(support, img, usable=usable)
    (picked,) = index.select([_s("q", image="img/q")], img[:1], 7)
    assert {s.sample_id for s in picked} == {f"s{i:04d}" for i in range(2, 9)}
    with pytest.raises(ValueError, match="only 4 eligible"):  # 7 usable minus the 3 on the query's image
        index.select([support[4]], img[4:5], 5)


def test_embedding_store_is_keyed_by_content_and_scorer(tmp_path) -> None:
    from tasks.shots import EmbeddingStore, file_content_key

    store = EmbeddingStore(tmp_path / "emb")
    m = np.arange(6, dtype=np.float32).reshape(3, 2)
    store.save("scorer-a", "image", ["k1", "k2", "k3"], m)
    assert np.array_equal(store.load("scorer-a", "image", ["k1", "k2", "k3"]), m)
    assert store.load("scorer-b", "image", ["k1", "k2", "k3"]) is None
    assert store.load("scorer-a", "image", ["k1", "k2", "kX"]) is None
    assert store.load("scorer-a", "question", ["k1", "k2", "k3"]) is None
    f = tmp_path / "a.jpg"
    f.write_bytes(b"one")
    first = file_content_key(f)
    f.write_bytes(b"two")
    assert file_content_key(f) != first and file_content_key(tmp_path / "absent.jpg") is None
    store.path("scorer-a", "image", ["k1", "k2", "k3"]).write_bytes(b"torn")
    assert store.load("scorer-a", "image", ["k1", "k2", "k3"]) is None  # a torn file is recomputed


def test_one_row_per_image_gives_the_same_shots_in_small_score_blocks(monkeypatch) -> None:
    import tasks.shots as shots_mod
    from tasks.shots import SupportIndex

    support, img, txt, rng = _index_case()
    unique, image_of = img[::3], np.arange(len(support)) // 3
    queries = [_s(f"q{i}", image=f"img/q{i}") for i in range(7)]
    q_img, q_txt = rng.normal(size=(7, 16)), rng.normal(size=(7, 16))
    queries.append(support[10])  # a support sample as query: its image's other questions are banned too
    q_img, q_txt = np.vstack([q_img, img[10]]), np.vstack([q_txt, txt[10]])
    for text, qt in ((txt, q_txt), (None, None)):
        full = SupportIndex.build(support, img, text).select(queries, q_img, 5, qt)
        with monkeypatch.context() as m:
            m.setattr(shots_mod, "SCORE_BLOCK", 2 * len(support))  # two queries per block
            compact = SupportIndex.build(support, unique, text, image_of=image_of).select(queries, q_img, 5, qt)
        assert [[s.sample_id for s in r] for r in compact] == [[s.sample_id for s in r] for r in full]
        assert all(s.image_ref != "img/3" for s in compact[-1])
    # ties across images: every image equally similar -> the lowest sample ids, several per image
    flat = SupportIndex.build(support, np.ones_like(unique), image_of=image_of)
    (tied,) = flat.select([_s("q", image="img/q")], np.ones((1, 16)), 5)
    assert [s.sample_id for s in tied] == ["s0004", "s0003", "s0002", "s0001", "s0000"]
    with pytest.raises(ValueError, match="image rows do not map"):
        SupportIndex.build(support, unique, image_of=image_of + 1)


def test_support_index_breaks_ties_by_sample_id_like_select_shots() -> None:
    from tasks.shots import SupportIndex

    support = list(reversed(SUPPORT))  # listed in reverse: order of the support must not matter
    flat = np.ones((len(support), 4))
    (picked,) = SupportIndex.build(support, flat).select([_s("q")], np.ones((1, 4)), 3)
    assert [s.sample_id for s in picked] == ["s02", "s01", "s00"]  # = select_shots with equal scores
