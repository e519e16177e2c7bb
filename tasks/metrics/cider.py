"""CIDEr-D (as pycocoevalcap's ``Cider`` computes it) recomputed on weighted resamples of the corpus.

CIDEr is corpus-level: each n-gram's idf comes from document frequencies over the *references of
the evaluated corpus*, and ``log(#images)`` enters every weight. A bootstrap resample is a new corpus
(an image drawn twice is two documents), so its document frequencies must be recounted. Doing that
with pycocoevalcap's pure-Python scorer 1000 times is too slow, so this module rewrites the same
formula in sparse-matrix form:

for a shared n-gram g, ``min(tf_h·idf, tf_r·idf)·tf_r·idf = min(tf_h, tf_r)·tf_r·idf²`` (idf ≥ 0), and
the vector norms are ``sqrt(Σ tf²·idf²)``, so every per-(image, reference, n) term is a dot product
of a fixed sparse row with the resample's ``idf²`` vector. The n-gram counts are pycocoevalcap's
own (``CiderScorer.crefs``/``ctest``); its length quirk is kept (the Gaussian length penalty counts
*bigrams*, because its ``counts2vec`` tests ``n == 1`` on the 0-based order). The identity resample
reproduces ``Cider().compute_score`` to floating-point rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocoevalcap.cider.cider_scorer import CiderScorer
from scipy import sparse

N_GRAM = 4
SIGMA = 6.0


@dataclass(frozen=True)
class CiderCorpus:
    """Sparse sufficient statistics of one (hypotheses, references) corpus for CIDEr-D."""

    n_images: int
    doc_incidence_t: sparse.csr_matrix  # (V, N): 1 if n-gram v occurs in any reference of image i
    hyp_sq: sparse.csr_matrix          # (N*4, V): tf_hyp² per (image, order)
    ref_sq: sparse.csr_matrix          # (P*4, V): tf_ref² per (pair, order), pair = (image, ref)
    overlap: sparse.csr_matrix         # (P*4, V): min(tf_hyp, tf_ref)·tf_ref per (pair, order)
    pair_image: np.ndarray             # (P,): image of each pair
    pair_penalty: np.ndarray           # (P,): Gaussian length penalty of each pair
    refs_per_image: np.ndarray         # (N,)

    @classmethod
    def build(cls, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> "CiderCorpus":
        scorer = CiderScorer(n=N_GRAM, sigma=SIGMA)
        for h, r in zip(hyps, refs, strict=True):
            scorer += (h, list(r))
        vocab: dict[tuple[str, ...], int] = {}

        def col(g: tuple[str, ...]) -> int:
            return vocab.setdefault(g, len(vocab))

        inc_r, inc_c = [], []
        h_r, h_c, h_v = [], [], []
        r_r, r_c, r_v = [], [], []
        o_r, o_c, o_v = [], [], []
        pair_image, pair_pen, n_refs = [], [], []

        def bigrams(counts: dict) -> int:
            return sum(c for g, c in counts.items() if len(g) == 2)

        for i, (test, crefs) in enumerate(zip(scorer.ctest, scorer.crefs)):
            n_refs.append(len(crefs))
            for g in {g for ref in crefs for g in ref}:
                inc_r.append(i)
                inc_c.append(col(g))
            for g, tf in test.items():
                h_r.append(i * N_GRAM + len(g) - 1)
                h_c.append(col(g))
                h_v.append(float(tf) ** 2)
            len_h = bigrams(test)
            for ref in crefs:
                p = len(pair_image)
                pair_image.append(i)
                delta = float(len_h - bigrams(ref))
                pair_pen.append(np.e ** (-(delta ** 2) / (2 * SIGMA ** 2)))
                for g, tf in ref.items():
                    row = p * N_GRAM + len(g) - 1
                    r_r.append(row)
                    r_c.append(col(g))
                    r_v.append(float(tf) ** 2)
                    th = test.get(g, 0)
                    if th:
                        o_r.append(row)
                        o_c.append(col(g))
                        o_v.append(float(min(th, tf)) * tf)
        n, v, p = len(scorer.ctest), max(len(vocab), 1), len(pair_image)

        def mat(r: list, c: list, val: list, rows: int) -> sparse.csr_matrix:
            return sparse.csr_matrix((np.asarray(val, dtype=np.float64), (r, c)), shape=(rows, v))

        return cls(
            n_images=n,
            doc_incidence_t=mat(inc_r, inc_c, [1.0] * len(inc_r), n).T.tocsr(),
            hyp_sq=mat(h_r, h_c, h_v, n * N_GRAM),
            ref_sq=mat(r_r, r_c, r_v, p * N_GRAM),
            overlap=mat(o_r, o_c, o_v, p * N_GRAM),
            pair_image=np.asarray(pair_image, dtype=np.int64),
            pair_penalty=np.asarray(pair_pen, dtype=np.float64),
            refs_per_image=np.asarray(n_refs, dtype=np.float64),
        )

    def per_image(self, weights: np.ndarray) -> np.ndarray:
        """Per-image CIDEr-D ``(B, N)`` when image i occurs ``weights[b, i]`` times in corpus b."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        b = w.shape[0]
        n_docs = w.sum(axis=1)                                   # corpus size of each resample
        idf2 = self.doc_incidence_t @ np.ascontiguousarray(w.T)  # (V, B) document frequencies ...
        np.maximum(idf2, 1.0, out=idf2)                          # ... turned in place into idf² (V, B)
        np.log(idf2, out=idf2)
        np.subtract(np.log(n_docs)[None, :], idf2, out=idf2)
        np.square(idf2, out=idf2)
        p = self.pair_image.size
        num = (self.overlap @ idf2).reshape(p, N_GRAM, b)
        ref_norm = np.sqrt(self.ref_sq @ idf2).reshape(p, N_GRAM, b)
        hyp_norm = np.sqrt(self.hyp_sq @ idf2).reshape(self.n_images, N_GRAM, b)[self.pair_image]
        denom = hyp_norm * ref_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(denom != 0, num / denom, num)
        val *= self.pair_penalty[:, None, None]
        pair_score = val.sum(axis=1)                             # (P, B): summed over n-gram orders
        per_img = np.add.reduceat(pair_score, self._image_starts, axis=0)  # pairs are grouped by image
        per_img = per_img / N_GRAM / self.refs_per_image[:, None] * 10.0
        return per_img.T

    @property
    def _image_starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.refs_per_image.astype(np.int64))[:-1]))

    def corpus(self, weights: np.ndarray) -> np.ndarray:
        """Corpus CIDEr-D ``(B,)`` of each weighted resample (mean over its images, repeats counted)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return (self.per_image(w) * w).sum(axis=1) / w.sum(axis=1)
