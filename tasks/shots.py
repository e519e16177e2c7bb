"""Choosing in-context demonstrations ("shots") for a query from a support set.

- ``random``: a uniform draw fixed by ``(seed, trial, query.sample_id)`` — the same query gets
  the same shots in every run and paradigm, different trials get different shots, and the draw
  does not depend on the order in which the support set is listed.
- ``rices`` (Retrieval-based In-Context Example Selection, as OpenFlamingo's evaluation does it):
  the ``k`` support samples whose *image* embedding is most similar (cosine) to the query's,
  under the run's image–text scorer.
- ``rices_qi`` (PICa's selection): the ``k`` support samples with the highest mean of
  question–question text similarity and image–image similarity.

Both retrieval strategies return the demonstrations **least similar first, most similar last**
(nearest the query in the prompt), as OpenFlamingo's ``RICES.find`` does by reversing its
top-k; ties are broken by ``sample_id``.

A support sample is never the query itself: same ``sample_id`` or same ``image_ref`` (another
question about the same image would leak the answer) are excluded before choosing.

:class:`SupportIndex` does the retrieval for many queries at once (one matrix product per chunk
of queries) so a 443k-question support set is searched in seconds; :class:`EmbeddingStore`
keeps the support embeddings on disk, keyed by the support's content and the scorer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np

from tasks.base import Sample

if TYPE_CHECKING:  # pragma: no cover
    from harness.cache import ResultCache as MemoStore
    from harness.plan import PlannedTask

Strategy = Literal["random", "rices", "rices_qi"]
STRATEGIES: tuple[str, ...] = ("random", "rices", "rices_qi")
#: What each strategy is, for results and docs.
STRATEGY_DESCRIPTIONS: Mapping[str, str] = {
    "random": "uniform draw per (seed, trial, query)",
    "rices": "image-image cosine under the run's scorer (OpenFlamingo RICES), most similar last",
    "rices_qi": "mean of question-question and image-image cosine under the run's scorer (PICa), most similar last",
}

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


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown shot strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _too_few(query: Sample, k: int, eligible: int, total: int) -> ValueError:
    return ValueError(
        f"{k} shots requested for {query.sample_id!r} but the support set has only {eligible} eligible "
        f"sample(s) ({total} in total, minus the query and samples of the same image)"
    )


def select_shots(
    query: Sample,
    support: Sequence[Sample],
    k: int,
    *,
    strategy: Strategy = "random",
    seed: int = 0,
    trial: int = 0,
    similarity: Similarity | None = None,
) -> list[Sample]:
    """The ``k`` demonstrations for ``query`` (see module docstring for the strategies and order)."""
    if k < 0:
        raise ValueError(f"number of shots must be >= 0, got {k}")
    _check_strategy(strategy)
    if strategy != "random" and similarity is None:
        raise ValueError(f"strategy {strategy!r} needs a similarity function (e.g. image-embedding cosine)")
    if k == 0:
        return []
    pool = eligible_support(query, support)
    if k > len(pool):
        raise _too_few(query, k, len(pool), len(support))
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
    return [s for _, s in reversed(ranked[:k])]


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


# ------------------------------------------------------------------ batched retrieval
def unit_rows(matrix: np.ndarray, what: str) -> np.ndarray:
    """float32 rows scaled to unit length; a zero or non-finite row is an error naming ``what``."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D embedding matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{what}: embeddings contain NaN or inf")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what}: {int((norms == 0).sum())} zero embedding(s)")
    return m / norms


#: Scores held at once (queries × support) in :meth:`SupportIndex.select`: 64M floats = 256 MB.
SCORE_BLOCK = 1 << 26


@dataclass(frozen=True)
class SupportIndex:
    """Unit-normalised support embeddings for retrieval: image rows, and question rows for ``rices_qi``.

    ``image`` has one row per distinct image and ``image_of[j]`` is the row of support sample
    ``j`` (VQAv2 train: 83k image rows for 443k questions); with ``image_of`` omitted, ``image``
    has one row per sample. ``usable`` marks support samples that may be chosen at all (a support
    image that could not be embedded is not usable; the caller reports how many).
    """

    support: tuple[Sample, ...]
    image: np.ndarray
    image_of: np.ndarray
    text: np.ndarray | None = None
    usable: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        support: Sequence[Sample],
        image: np.ndarray,
        text: np.ndarray | None = None,
        usable: np.ndarray | None = None,
        image_of: np.ndarray | None = None,
    ) -> "SupportIndex":
        support = tuple(support)
        ids = [s.sample_id for s in support]
        if len(set(ids)) != len(ids):
            raise ValueError("support set has duplicate sample_ids; shot selection would not be well defined")
        img = unit_rows(image, "support image embeddings")
        rows = np.arange(len(support)) if image_of is None else np.asarray(image_of, dtype=np.int64)
        if len(rows) != len(support) or (len(rows) and (rows.min() < 0 or rows.max() >= len(img))):
            raise ValueError(f"image rows do not map the {len(support)} support samples onto {len(img)} image embeddings")
        txt = None
        if text is not None:
            txt = unit_rows(text, "support question embeddings")
            if len(txt) != len(support):
                raise ValueError(f"{len(txt)} question embeddings for {len(support)} support samples")
        ok = np.ones(len(support), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
        return cls(support, img, rows, txt, ok)

    def select(
        self,
        queries: Sequence[Sample],
        query_image: np.ndarray,
        k: int,
        query_text: np.ndarray | None = None,
        *,
        chunk: int | None = None,
    ) -> list[list[Sample]]:
        """The ``k`` nearest eligible support samples per query, least similar first, most similar last.

        Scores are image cosine, or the mean of image and question cosine when both sides have
        question embeddings: one matrix product per chunk of queries (the chunk is sized so a
        block of scores stays under :data:`SCORE_BLOCK` floats).
        """
        if k < 0:
            raise ValueError(f"number of shots must be >= 0, got {k}")
        if (query_text is None) != (self.text is None):
            raise ValueError("question embeddings must be given for both the queries and the support, or for neither")
        qi = unit_rows(query_image, "query image embeddings")
        qt = unit_rows(query_text, "query question embeddings") if query_text is not None else None
        if len(qi) != len(queries) or (qt is not None and len(qt) != len(queries)):
            raise ValueError(f"query embeddings do not match the {len(queries)} queries")
        if k == 0:
            return [[] for _ in queries]
        import torch  # a partial sort (topk): far faster than a full sort of 100k-wide rows

        # Rank *units*: one per distinct image for ``rices`` (its questions share the score, so
        # 443k VQAv2 questions are 83k units), one per sample when question scores differ.
        n = len(self.support)
        unit_of = np.arange(n) if self.text is not None else self.image_of
        n_units = n if self.text is not None else len(self.image)
        chunk = chunk or max(1, min(1024, SCORE_BLOCK // max(1, n_units)))
        ids = [s.sample_id for s in self.support]
        assert self.usable is not None
        members: list[list[int]] = [[] for _ in range(n_units)]
        for j in sorted(range(n), key=ids.__getitem__):  # members in sample-id order
            if self.usable[j]:
                members[unit_of[j]].append(j)
        empty = np.array([not m for m in members], dtype=bool)
        by_image: dict[str, list[int]] = {}
        by_id = {sid: j for j, sid in enumerate(ids)}
        for j, s in enumerate(self.support):
            by_image.setdefault(s.image_ref, []).append(j)
        n_usable = int(self.usable.sum())
        out: list[list[Sample]] = []
        for start in range(0, len(queries), chunk):
            stop = min(start + chunk, len(queries))
            scores = qi[start:stop] @ self.image.T
            if qt is not None and self.text is not None:
                scores = (scores[:, self.image_of] + qt[start:stop] @ self.text.T) / 2.0
            scores[:, empty] = -np.inf
            bans: list[set[int]] = []
            for row, q in zip(scores, queries[start:stop]):
                banned = set(by_image.get(q.image_ref, []))
                if q.sample_id in by_id:
                    banned.add(by_id[q.sample_id])
                eligible = n_usable - int(self.usable[list(banned)].sum()) if banned else n_usable
                if k > eligible:
                    raise _too_few(q, k, eligible, n)
                for u in {int(unit_of[j]) for j in banned}:
                    if all(j in banned for j in members[u]):
                        row[u] = -np.inf
                bans.append(banned)
            t = min(n_units, k + 1)
            top_vals, top_idx = torch.topk(torch.from_numpy(scores), t, dim=1)
            for row, vals, cand, banned in zip(scores, top_vals.numpy(), top_idx.numpy(), bans):
                chosen = _top_k(row, k, vals, cand, members, unit_of, banned, ids, t < n_units)
                out.append([self.support[j] for j in reversed(chosen)])
        return out


def _top_k(
    row: np.ndarray, k: int, vals: np.ndarray, cand: np.ndarray, members: list[list[int]], unit_of: np.ndarray,
    banned: set[int], ids: list[str], truncated: bool,
) -> list[int]:
    """The ``k`` best eligible samples, best first, ties broken by sample id (exactly).

    ``vals``/``cand`` are the top units of ``row`` (any order among equal scores). Walking them
    until ``k`` eligible samples are covered gives the k-th score; every unit scoring at least
    that much competes, and only when the top list may have cut a tie (or ran out) is the whole
    row consulted.
    """
    count, threshold = 0, None
    for v, u in zip(vals, cand):
        if v == -np.inf:
            break
        count += sum(1 for j in members[u] if j not in banned)
        if count >= k:
            threshold = float(v)
            break
    if threshold is None:
        units = np.flatnonzero(np.isfinite(row)) if truncated else cand[np.isfinite(vals)]
    elif truncated and float(vals[-1]) == threshold:
        units = np.flatnonzero(row >= threshold)
    else:
        units = cand[vals >= threshold]
    pool = [j for u in units for j in members[u] if j not in banned]
    pool.sort(key=lambda j: (-float(row[unit_of[j]]), ids[j]))
    return pool[:k]


# ------------------------------------------------------------------ on-disk embeddings
class EmbeddingStore:
    """Support embeddings on disk, one ``.npy`` per (scorer, modality, content of every item).

    The file name is a hash of the scorer's fingerprint, the modality and each item's content key
    (image bytes' digest, or the question text), in order; a changed image, question or scorer is
    a different file, never a stale hit. Arrays are written atomically and read with
    ``allow_pickle=False``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, scorer_fp: str, modality: str, content_keys: Sequence[str]) -> Path:
        h = hashlib.sha256()
        h.update(json.dumps([scorer_fp, modality, len(content_keys)]).encode())
        for key in content_keys:
            h.update(b"\x00" + key.encode("utf-8"))
        return self.root / f"{modality}-{h.hexdigest()[:32]}.npy"

    def load(self, scorer_fp: str, modality: str, content_keys: Sequence[str]) -> np.ndarray | None:
        p = self.path(scorer_fp, modality, content_keys)
        if not p.is_file():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn or foreign file: recompute and overwrite
        return arr if arr.ndim == 2 and len(arr) == len(content_keys) else None

    def save(self, scorer_fp: str, modality: str, content_keys: Sequence[str], matrix: np.ndarray) -> Path:
        p = self.path(scorer_fp, modality, content_keys)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(matrix, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p


def file_content_key(path: str | Path) -> str | None:
    """SHA-1 of a file's bytes (the content key of an on-disk image), or None if it is not a file."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha1()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShotSelector:
    """The demonstrations of every sample of a run's units, memoised in the result cache.

    A unit's choice is stored per query (memo kind ``shots``) under a key of everything that
    decides it, so a rerun neither redraws nor re-embeds. Retrieval strategies search one
    :class:`SupportIndex` per (task, strategy), built once per run and kept here; the index and the
    query embeddings come from the run's image–text scorer (``harness/shot_embeddings.py``).
    """

    def __init__(
        self,
        memo: "MemoStore",
        *,
        strategy: Strategy,
        seed: int,
        scorer: Callable[[], Any],
        scorer_fingerprint: Callable[[], str],
        embeddings_dir: Path,
    ) -> None:
        """``scorer`` and ``scorer_fingerprint`` are called only when needed, so random shots and
        memoised choices load no model."""
        self.memo = memo
        self.strategy = strategy
        self.seed = seed
        self.scorer = scorer
        self.scorer_fingerprint = scorer_fingerprint
        self.embeddings_dir = embeddings_dir
        self._indexes: dict[str, SupportIndex] = {}  # task fingerprint:strategy -> its support index

    def memo_key(self, task: "PlannedTask", query: Sample, k: int, trial: int) -> str:
        """Key of the memoised choice for ``query`` (all that decides it, the scorer for retrieval)."""
        from harness.config import stable_hash

        parts = [task.fingerprint, task.annotations, query.sample_id, k, trial, self.strategy, self.seed,
                 self.scorer_fingerprint() if self.strategy != "random" else ""]
        if self.strategy != "random":  # retrieval now orders most similar last: older memos are not reused
            parts.append("most-similar-last")
        return stable_hash(parts)

    def select(self, task: "PlannedTask", k: int, trial: int) -> dict[str, tuple[Sample, ...]]:
        """``k`` demonstrations for every sample of ``task`` (trial ``trial``), by sample id.

        Binding episodes bring their own; without ``k`` or a support split there are none. A query
        whose image cannot be embedded gets none here and fails as its own sample later.
        """
        samples = task.dataset.samples
        if task.spec.kind == "binding":
            return {s.sample_id: tuple(s.episode) for s in samples}
        if k == 0 or task.support is None:
            return {s.sample_id: () for s in samples}
        support = task.support.samples
        by_id = {s.sample_id: s for s in support}
        out: dict[str, tuple[Sample, ...]] = {}
        todo: list[Sample] = []
        for s in samples:
            cached = self.memo.memo_get("shots", self.memo_key(task, s, k, trial))
            if cached is not None and all(i in by_id for i in cached):
                out[s.sample_id] = tuple(by_id[i] for i in cached)
            else:
                todo.append(s)
        if self.strategy == "random":
            chosen = {s.sample_id: select_shots(s, support, k, strategy="random", seed=self.seed, trial=trial)
                      for s in todo}
        else:
            chosen = self._retrieve(task, todo, k)
        for s in todo:
            if s.sample_id not in chosen:  # the query image itself did not load: the sample fails later
                out[s.sample_id] = ()
                continue
            out[s.sample_id] = tuple(chosen[s.sample_id])
            self.memo.memo_put("shots", self.memo_key(task, s, k, trial), [x.sample_id for x in chosen[s.sample_id]])
        return out

    def _retrieve(self, task: "PlannedTask", queries: Sequence[Sample], k: int) -> dict[str, list[Sample]]:
        """RICES / PICa retrieval for ``queries`` in one batched search over the support index."""
        from harness.shot_embeddings import embed_queries, support_index

        if not queries:
            return {}
        assert task.support is not None
        with_text = self.strategy == "rices_qi"
        key = f"{task.fingerprint}:{self.strategy}"
        if key not in self._indexes:
            self._indexes[key] = support_index(
                self.scorer(), self.scorer_fingerprint(), task.support.samples,
                with_text=with_text, cache_root=self.embeddings_dir,
            )
        ok, img, txt = embed_queries(self.scorer(), queries, with_text=with_text)
        if not ok:
            return {}
        picked = self._indexes[key].select(ok, img, k, txt)
        return {q.sample_id: shots for q, shots in zip(ok, picked)}
