"""METEOR 1.5 through pycocoevalcap's jar, plus its corpus aggregation in NumPy for the bootstrap.

The Java process is started with pycocoevalcap's exact command (``-l en -norm``, stdio mode) and
fed the same ``SCORE`` lines (hypothesis sanitised the same way), one process per scoring call.
The point estimate is Java's own ``EVAL`` over all segments — i.e. what ``Meteor().compute_score``
returns. METEOR's corpus score is *not* the mean of segment scores: Java sums the 23 sufficient
statistics of every segment and scores the sum. :func:`meteor_from_stats` repeats that
aggregation and scoring (English "rank" task parameters, the defaults of ``-l en``), so each
bootstrap resample gets a true corpus METEOR without another Java round trip; a test checks it
against Java's ``EVAL`` on random resamples.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocoevalcap.meteor import meteor as _meteor

from tasks.metrics.tokenize import find_java, java_unavailable_reason, one_line

METEOR_DIR = Path(_meteor.__file__).resolve().parent
METEOR_JAR = METEOR_DIR / _meteor.METEOR_JAR

# Meteor 1.5, language en, task "rank" (the default): alpha, beta, gamma, delta; module weights for
# exact, stem, synonym, paraphrase matches.
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
MODULE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])
N_STATS = 23


@dataclass(frozen=True)
class MeteorScores:
    corpus: float
    per_sample: list[float]
    stats: np.ndarray  # (N, 23) sufficient statistics, for resampling


class MeteorProcess:
    """One METEOR Java process (pycocoevalcap's command), started early so its ~2 s of loading
    overlaps the PTB tokenisation. Use as a context manager; :meth:`score` may be called once or more.
    """

    def __init__(self) -> None:
        java = find_java()
        if java is None:
            raise RuntimeError(java_unavailable_reason())
        cmd = [java, "-jar", "-Xmx2G", str(METEOR_JAR), "-", "-", "-stdio", "-l", "en", "-norm"]
        self._proc = subprocess.Popen(cmd, cwd=METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)

    def __enter__(self) -> "MeteorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            if proc.stdin:
                proc.stdin.close()
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    def _write(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()

    def _read(self) -> str:
        assert self._proc.stdout is not None
        answer = self._proc.stdout.readline().decode("utf-8").strip()
        if not answer:
            self._proc.kill()
            err = self._proc.stderr.read().decode("utf-8", errors="replace") if self._proc.stderr else ""
            raise RuntimeError(f"METEOR process ended unexpectedly: {err[-2000:]}")
        return answer

    def score(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> MeteorScores:
        """Score all (hypothesis, references) pairs: one SCORE line each, then one EVAL line."""
        if len(hyps) != len(refs):
            raise ValueError("hypotheses and references differ in length")
        if not hyps:
            raise ValueError("nothing to score")
        stats = []
        for h, r in zip(hyps, refs):
            hyp = one_line(h).replace("|||", "").replace("  ", " ")
            self._write(" ||| ".join(("SCORE", " ||| ".join(one_line(x) for x in r), hyp)))
            stats.append(self._read())
        self._write("EVAL ||| " + " ||| ".join(stats))
        per = [float(self._read()) for _ in stats]
        corpus = float(self._read())
        arr = np.array([[float(x) for x in s.split()] for s in stats], dtype=np.float64)
        if arr.shape != (len(stats), N_STATS):
            raise RuntimeError(f"unexpected METEOR statistics shape {arr.shape}")
        return MeteorScores(corpus, per, arr)

    def evaluate(self, stats: np.ndarray) -> float:
        """Java's own corpus METEOR of the given statistics rows (used to test :func:`meteor_from_stats`)."""
        lines = [" ".join(repr(float(x)) for x in row) for row in np.atleast_2d(stats)]
        self._write("EVAL ||| " + " ||| ".join(lines))
        for _ in lines:
            self._read()
        return float(self._read())


def meteor_from_stats(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Corpus METEOR ``(B,)`` of weighted resamples ``(B, N)`` of segments with ``stats`` ``(N, 23)``.

    Mirrors Meteor 1.5's ``MeteorStats.addStats`` (chunks of perfectly matching segments are not
    summed) followed by ``MeteorScorer.computeMetrics``.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    s = np.asarray(stats, dtype=np.float64)
    mods = s[:, 4:20].reshape(-1, 4, 4)  # per module: test content, ref content, test function, ref function
    t_total = mods[:, :, 0].sum(1) + mods[:, :, 2].sum(1)
    r_total = mods[:, :, 1].sum(1) + mods[:, :, 3].sum(1)
    perfect = (t_total == s[:, 0]) & (r_total == s[:, 1]) & (s[:, 20] == 1)
    s = s.copy()
    s[perfect, 20] = 0.0
    agg = w @ s                                        # (B, 23)
    a_mods = agg[:, 4:20].reshape(-1, 4, 4)
    t_len, r_len, t_fun, r_fun = agg[:, 0], agg[:, 1], agg[:, 2], agg[:, 3]
    chunks, t_words, r_words = agg[:, 20], agg[:, 21], agg[:, 22]
    t_weighted_len = DELTA * (t_len - t_fun) + (1.0 - DELTA) * t_fun
    r_weighted_len = DELTA * (r_len - r_fun) + (1.0 - DELTA) * r_fun
    t_match = (a_mods[:, :, 0] * MODULE_WEIGHTS * DELTA).sum(1) + (a_mods[:, :, 2] * MODULE_WEIGHTS * (1 - DELTA)).sum(1)
    r_match = (a_mods[:, :, 1] * MODULE_WEIGHTS * DELTA).sum(1) + (a_mods[:, :, 3] * MODULE_WEIGHTS * (1 - DELTA)).sum(1)
    a_t_total = a_mods[:, :, 0].sum(1) + a_mods[:, :, 2].sum(1)
    a_r_total = a_mods[:, :, 1].sum(1) + a_mods[:, :, 3].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = t_match / t_weighted_len
        recall = r_match / r_weighted_len
        fmean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall))
        all_perfect = (a_t_total == t_len) & (a_r_total == r_len) & (chunks == 1)
        frag = np.where(all_perfect, 0.0, chunks / ((t_words + r_words) / 2))
        score = fmean * (1.0 - GAMMA * frag ** BETA)
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))
