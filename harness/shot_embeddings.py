"""Embedding support and query samples with the run's image–text scorer for RICES / PICa retrieval.

Support embeddings are computed once per (scorer, support content) and kept on disk by
:class:`tasks.shots.EmbeddingStore`; questions on the same image share one image embedding and
one row of the index (VQAv2 train: 443k questions on 83k images). A support image that cannot be read is left out of
retrieval with a warning naming how many; a query whose image cannot be read gets no shots here
and fails as its own sample when the runner loads its image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.interface import image_id_of
from tasks.base import Sample
from tasks.shots import EmbeddingStore, SupportIndex, file_content_key

log = logging.getLogger(__name__)

CHUNK = 64  # images decoded and embedded at a time (bounds memory on large support sets)


def _image_rows(scorer: Any, samples: Sequence[Sample]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """One embedding per distinct ``image_ref``: (refs, [M, D] rows, which loaded, content keys)."""
    refs = list(dict.fromkeys(s.image_ref for s in samples))
    first: dict[str, Sample] = {}
    for s in samples:
        first.setdefault(s.image_ref, s)
    rows: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for start in range(0, len(refs), CHUNK):
        batch, ids, names = [], [], []
        for ref in refs[start : start + CHUNK]:
            try:
                img = first[ref].load_image()
            except Exception as exc:  # noqa: BLE001 - a bad image leaves only itself out
                log.debug("retrieval: cannot load %s: %s", ref, exc)
                continue
            cid = image_id_of(img)
            batch.append(img)
            ids.append(cid)
            names.append(ref)
        if batch:
            emb = scorer.embed_images(batch, ids).float().cpu().numpy()
            for ref, cid, e in zip(names, ids, emb):
                rows[ref], keys[ref] = e, cid
    dim = next(iter(rows.values())).shape[0] if rows else 1
    filler = np.eye(1, dim, dtype=np.float32)[0]  # a unit row for an unreadable image (never chosen)
    matrix = np.stack([rows.get(r, filler) for r in refs]).astype(np.float32) if refs else np.zeros((0, dim), np.float32)
    ok = np.array([r in rows for r in refs], dtype=bool)
    return refs, matrix, ok, [keys.get(r, "") for r in refs]


def _decoded_keys(refs: Sequence[str], first: dict[str, Sample]) -> list[str] | None:
    """Content ids of images that are not files (hub rows), by decoding; None if one fails."""
    keys = []
    for ref in refs:
        try:
            keys.append(image_id_of(first[ref].load_image()))
        except Exception:  # noqa: BLE001 - then the store is not used; embedding reports the failure
            return None
    return keys


def _text_matrix(scorer: Any, texts: Sequence[str]) -> np.ndarray:
    unique = list(dict.fromkeys(texts))
    rows: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), 256):
        part = unique[start : start + 256]
        for t, e in zip(part, scorer.embed_texts(part).float().cpu().numpy()):
            rows[t] = e
    return np.stack([rows[t] for t in texts]).astype(np.float32)


def _has_question(s: Sample) -> bool:
    return bool(s.question.strip())


def support_index(
    scorer: Any, scorer_fp: str, support: Sequence[Sample], *, with_text: bool, cache_root: Path
) -> SupportIndex:
    """The retrieval index of ``support``, from the on-disk store when its content was seen before."""
    store = EmbeddingStore(cache_root)
    refs = list(dict.fromkeys(s.image_ref for s in support))
    first: dict[str, Sample] = {}
    for s in support:
        first.setdefault(s.image_ref, s)
    # content keys: the bytes of image files (no decoding needed), else the decoded pixels (hub rows)
    file_keys = [file_content_key(r) for r in refs]
    keys = [str(k) for k in file_keys] if all(k is not None for k in file_keys) else _decoded_keys(refs, first)
    image = store.load(scorer_fp, "image", keys) if keys is not None else None
    loaded = np.ones(len(refs), dtype=bool)
    if image is None:
        refs, image, loaded, _ = _image_rows(scorer, support)
        bad = int((~loaded).sum())
        if bad:
            log.warning("retrieval: %d of %d support images could not be read and are never chosen", bad, len(refs))
        elif keys is not None:
            store.save(scorer_fp, "image", keys, image)
    row_of = {r: i for i, r in enumerate(refs)}
    image_of = np.array([row_of[s.image_ref] for s in support], dtype=np.int64)
    usable = loaded[image_of]
    text = None
    if with_text:  # a support question that is empty is never chosen (it has nothing to compare)
        asked = np.array([_has_question(s) for s in support], dtype=bool)
        questions = [s.question for s, a in zip(support, asked) if a]
        rows = store.load(scorer_fp, "question", questions)
        if rows is None:
            rows = _text_matrix(scorer, questions) if questions else np.zeros((0, 1), np.float32)
            store.save(scorer_fp, "question", questions, rows)
        text = np.tile(np.eye(1, rows.shape[1], dtype=np.float32), (len(support), 1))
        text[asked] = rows
        usable = usable & asked
    return SupportIndex.build(support, image, text, usable, image_of)


def embed_queries(
    scorer: Any, queries: Sequence[Sample], *, with_text: bool
) -> tuple[list[Sample], np.ndarray, np.ndarray | None]:
    """Embeddings of the queries that can be compared: image loads (and, for questions, one is asked).

    The others get no shots here and fail as their own samples (unreadable image, empty question).
    """
    refs, matrix, ok, _ = _image_rows(scorer, queries)
    row_of = {r: i for i, r in enumerate(refs)}
    pairs = [(q, row_of[q.image_ref]) for q in queries if ok[row_of[q.image_ref]] and (not with_text or _has_question(q))]
    kept = [q for q, _ in pairs]
    image = matrix[[r for _, r in pairs]] if kept else np.zeros((0, matrix.shape[1]), np.float32)
    text = _text_matrix(scorer, [q.question for q in kept]) if with_text and kept else None
    return kept, image, text
