"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) with bootstrap CIs.

Point estimates are pycocoevalcap's own scorers run the canonical COCO way: PTB-tokenise references
and candidates, then ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` (and ``Spice()`` when its
jars are installed) on the whole corpus. Values are on pycocoevalcap's 0–1 scale (papers print ×100;
CIDEr can exceed 1). Bootstrap CIs resample images and recompute each *corpus* metric on every
resample. CIDEr-D keeps the evaluated corpus's document frequencies by default: recounting them on a
resample treats an image drawn twice as two documents, which real test sets never contain, and biases
every replicate low (measured in ``docs/metrics.md``); ``cider_df="resample"`` recounts them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Callable, Hashable, Literal, Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from tasks.metrics.bleu import bleu_from_stats, bleu_stats
from tasks.metrics.bootstrap import DEFAULT_N_BOOT, bootstrap_indices, counts_from_indices, percentile_ci
from tasks.metrics.cider import CiderCorpus
from tasks.metrics.meteor import MeteorProcess, meteor_from_stats
from tasks.metrics.result import MetricReport
from tasks.metrics.spice import spice_java, spice_unavailable_reason
from tasks.metrics.tokenize import (TOKENIZER_FALLBACK, TOKENIZER_PTB, fallback_tokenize, java_unavailable_reason,
                                    ptb_tokenize)

BLEU_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
_PYCOCOEVALCAP = version("pycocoevalcap")
CAPTION_METRICS = (*BLEU_NAMES, "METEOR", "ROUGE_L", "CIDEr", "SPICE")
TokenizerChoice = Literal["auto", "ptb", "fallback"]
#: How CIDEr-D's document frequencies are treated on a bootstrap resample (see the module docstring).
CiderDF = Literal["fixed", "resample"]


@dataclass(frozen=True)
class TokenizedCorpus:
    """References and candidates after tokenisation, in the order of the caller's ids."""

    ids: tuple[Hashable, ...]
    refs: tuple[tuple[str, ...], ...]
    hyps: tuple[str, ...]
    tokenizer: str


def _check_inputs(references: Mapping[Hashable, Sequence[str]],
                  predictions: Mapping[Hashable, str]) -> tuple[Hashable, ...]:
    ids = tuple(references)
    if not ids:
        raise ValueError("no images to score")
    missing = [i for i in ids if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        raise ValueError(f"predictions and references cover different images: missing predictions for "
                         f"{missing[:5]} ({len(missing)}), predictions without references {extra[:5]} ({len(extra)}); "
                         "pass failed samples as empty strings")
    for i in ids:
        refs = references[i]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i!r}: references must be a non-empty list of captions")
        if not isinstance(predictions[i], str):
            raise TypeError(f"image {i!r}: prediction must be a string, got {type(predictions[i]).__name__}")
    return ids


def tokenize_corpus(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
                    tokenizer: TokenizerChoice = "auto") -> TokenizedCorpus:
    """Tokenise every reference and candidate of the corpus in one go (one Java call for PTB)."""
    ids = _check_inputs(references, predictions)
    if tokenizer not in ("auto", "ptb", "fallback"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}")
    use_ptb = tokenizer == "ptb" or (tokenizer == "auto" and java_unavailable_reason() is None)
    texts = [c for i in ids for c in references[i]] + [predictions[i] for i in ids]
    toks = ptb_tokenize(texts) if use_ptb else fallback_tokenize(texts)
    refs, pos = [], 0
    for i in ids:
        k = len(references[i])
        refs.append(tuple(toks[pos:pos + k]))
        pos += k
    return TokenizedCorpus(ids, tuple(refs), tuple(toks[pos:]), TOKENIZER_PTB if use_ptb else TOKENIZER_FALLBACK)


def _as_dicts(tc: TokenizedCorpus) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    gts = {k: list(r) for k, r in enumerate(tc.refs)}
    res = {k: [h] for k, h in enumerate(tc.hyps)}
    return gts, res


@dataclass(frozen=True)
class ResamplableCaptions:
    """Sufficient statistics to recompute each corpus metric on any weighted resample of images."""

    n: int
    bleu: np.ndarray            # (N, 10)
    cider_per: np.ndarray       # (N,) per-image CIDEr-D with the evaluated corpus's document frequencies
    cider: CiderCorpus | None   # sparse statistics to recount document frequencies (cider_df="resample")
    rouge: np.ndarray           # (N,) per-image ROUGE-L (the corpus value is their mean)
    meteor: np.ndarray | None   # (N, 23) METEOR statistics, None without Java
    spice: np.ndarray | None    # (N,) per-image SPICE F, None when unavailable

    def resampled(self, weights: np.ndarray, only: str | None = None) -> dict[str, np.ndarray]:
        """Available metrics (or just ``only``) for weights ``(B, N)``: each image's count per resample."""
        w = np.atleast_2d(weights)
        size = w.sum(axis=1)
        out: dict[str, np.ndarray] = {}
        if only is None or only in BLEU_NAMES:
            bleus = bleu_from_stats(w @ self.bleu)
            for k, name in enumerate(BLEU_NAMES):
                out[name] = bleus[:, k]
        if only in (None, "ROUGE_L"):
            out["ROUGE_L"] = (w @ self.rouge) / size
        if only in (None, "CIDEr"):
            out["CIDEr"] = self.cider.corpus(w) if self.cider is not None else (w @ self.cider_per) / size
        if self.meteor is not None and only in (None, "METEOR"):
            out["METEOR"] = meteor_from_stats(self.meteor, w)
        if self.spice is not None and only in (None, "SPICE"):
            out["SPICE"] = (w @ self.spice) / size
        return out


def _chunk_size(stats: "ResamplableCaptions") -> int:
    if stats.cider is None:
        return int(np.clip(20_000_000 // max(stats.n, 1), 1, 1000))  # the (chunk, N) weight matrix
    rows = max(1, stats.cider.pair_image.size * 4)
    return int(np.clip(2_000_000 // rows, 1, 1000))


def _bootstrap(stats: ResamplableCaptions, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    if n_boot <= 0:
        return {}
    idx = bootstrap_indices(stats.n, n_boot, seed)
    chunk = _chunk_size(stats)
    reps: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        w = counts_from_indices(idx[start:start + chunk], stats.n)
        for name, vals in stats.resampled(w).items():
            reps.setdefault(name, []).append(vals)
    return {name: percentile_ci(np.concatenate(v)) for name, v in reps.items()}


def score_captions(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str], *,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, tokenizer: TokenizerChoice = "auto",
                   spice: bool = True, meteor_process: MeteorProcess | None = None,
                   cider_df: CiderDF = "fixed") -> MetricReport:
    """Score one prediction set against its references (corpus-level), with bootstrap 95% CIs.

    ``references`` maps an image id to its human captions, ``predictions`` maps the same ids to one
    candidate each (a failed sample must be passed as ``""``: it scores as wrong). ``per_sample``
    lists are in the order of ``references``' keys. Without Java, BLEU/ROUGE-L/CIDEr are computed on
    the pure-Python fallback tokenisation (``info["tokenizer"] == "fallback-regex"``; numbers then
    differ slightly from COCO's) and METEOR/SPICE are listed in ``unavailable``.

    METEOR's Java process spends seconds loading its paraphrase table; to score many prediction
    sets, open one :class:`~tasks.metrics.meteor.MeteorProcess` and pass it as ``meteor_process``
    (the caller then closes it).
    """
    unavailable: dict[str, str] = {}
    java_reason = java_unavailable_reason()
    use_meteor = java_reason is None and tokenizer != "fallback"
    own_proc = use_meteor and meteor_process is None
    meteor_proc = (MeteorProcess() if own_proc else meteor_process) if use_meteor else None
    try:
        tc = tokenize_corpus(references, predictions, tokenizer)
        gts, res = _as_dicts(tc)
        values: dict[str, float] = {}
        per_sample: dict[str, list[float]] = {}
        bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
        for k, name in enumerate(BLEU_NAMES):
            values[name] = float(bleu[k])
            per_sample[name] = [float(x) for x in bleu_per[k]]
        meteor_stats = None
        if meteor_proc is not None:
            m = meteor_proc.score(tc.hyps, tc.refs)
            values["METEOR"], per_sample["METEOR"], meteor_stats = m.corpus, m.per_sample, m.stats
        else:
            unavailable["METEOR"] = (f"METEOR needs Java: {java_reason}" if java_reason
                                     else "METEOR is only computed on PTB-tokenised text (tokenizer='fallback' requested)")
    finally:
        if own_proc and meteor_proc is not None:
            meteor_proc.close()
    rouge, rouge_per = Rouge().compute_score(gts, res)
    values["ROUGE_L"], per_sample["ROUGE_L"] = float(rouge), [float(x) for x in rouge_per]
    cider, cider_per = Cider().compute_score(gts, res)
    values["CIDEr"], per_sample["CIDEr"] = float(cider), [float(x) for x in cider_per]
    spice_per = None
    spice_reason = spice_unavailable_reason() if spice else "SPICE disabled by the caller (spice=False)"
    if spice_reason is None and tc.tokenizer != TOKENIZER_PTB:
        spice_reason = "SPICE is only computed on PTB-tokenised text"
    if spice_reason is None:
        values["SPICE"], per = spice_java(tc.hyps, tc.refs)
        per_sample["SPICE"] = per
        spice_per = np.asarray(per, dtype=np.float64)
    else:
        unavailable["SPICE"] = spice_reason
    stats = ResamplableCaptions(len(tc.ids), bleu_stats(tc.hyps, tc.refs), np.asarray(cider_per, dtype=np.float64),
                                CiderCorpus.build(tc.hyps, tc.refs) if cider_df == "resample" else None,
                                np.asarray(rouge_per, dtype=np.float64), meteor_stats, spice_per)
    ci = _bootstrap(stats, n_boot, seed)
    info = {
        "tokenizer": tc.tokenizer,
        "implementation": f"pycocoevalcap {_PYCOCOEVALCAP} scorers (Bleu(4), Meteor, Rouge, Cider = CIDEr-D, Spice)",
        "scale": "0-1 as pycocoevalcap returns them (papers print x100)",
        "ci": (f"percentile bootstrap 95%, {n_boot} resamples of images, seed {seed}; each corpus metric "
               "recomputed per resample (CIDEr-D with "
               + ("the resample's recounted document frequencies)" if cider_df == "resample"
                  else "the evaluated corpus's document frequencies)")) if n_boot > 0 else "none",
        "n_samples": str(len(tc.ids)),
        "n_empty_predictions": str(sum(1 for i in tc.ids if not predictions[i].strip())),
    }
    ordered = {k: values[k] for k in CAPTION_METRICS if k in values}
    return MetricReport(values=ordered, ci={k: ci[k] for k in ordered if k in ci},
                        per_sample={k: per_sample[k] for k in ordered}, unavailable=unavailable,
                        primary="CIDEr", info=info)


def resamplable_captions(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str], *,
                         tokenizer: TokenizerChoice = "auto", meteor: bool = True,
                         meteor_process: MeteorProcess | None = None,
                         cider_df: CiderDF = "fixed") -> ResamplableCaptions:
    """Tokenise once and collect what is needed to recompute corpus metrics on resamples."""
    java_ok = java_unavailable_reason() is None and tokenizer != "fallback"
    tc = tokenize_corpus(references, predictions, tokenizer)
    gts, res = _as_dicts(tc)
    _, rouge_per = Rouge().compute_score(gts, res)
    _, cider_per = Cider().compute_score(gts, res)
    meteor_stats = None
    if meteor and java_ok and tc.tokenizer == TOKENIZER_PTB:
        if meteor_process is not None:
            meteor_stats = meteor_process.score(tc.hyps, tc.refs).stats
        else:
            with MeteorProcess() as proc:
                meteor_stats = proc.score(tc.hyps, tc.refs).stats
    return ResamplableCaptions(len(tc.ids), bleu_stats(tc.hyps, tc.refs), np.asarray(cider_per, dtype=np.float64),
                               CiderCorpus.build(tc.hyps, tc.refs) if cider_df == "resample" else None,
                               np.asarray(rouge_per, dtype=np.float64), meteor_stats, None)


def corpus_metric(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
                  metric: str = "CIDEr", *, tokenizer: TokenizerChoice = "auto",
                  meteor_process: MeteorProcess | None = None, cider_df: CiderDF = "fixed") -> Callable[[np.ndarray], float]:
    """A function ``positions -> corpus metric on those images`` for :func:`paired_bootstrap_corpus`.

    Positions index the ids in ``references``' order (repeats allowed: a bootstrap resample).
    """
    allowed = (*BLEU_NAMES, "METEOR", "ROUGE_L", "CIDEr")
    if metric not in allowed:
        raise ValueError(f"metric must be one of {allowed}, got {metric!r}")
    stats = resamplable_captions(references, predictions, tokenizer=tokenizer, meteor=metric == "METEOR",
                                 meteor_process=meteor_process, cider_df=cider_df)
    if metric == "METEOR" and stats.meteor is None:
        raise RuntimeError(f"METEOR needs Java and PTB tokenisation: {java_unavailable_reason() or 'fallback tokenizer'}")

    def value(positions: np.ndarray) -> float:
        w = counts_from_indices(np.asarray(positions)[None, :], stats.n)
        return float(stats.resampled(w, only=metric)[metric][0])

    return value
