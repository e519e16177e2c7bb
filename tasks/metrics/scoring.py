"""Scoring a run's units: the task's metric family, its breakdown and, on captions, CLIPScore.

One :class:`UnitScoring` per run: it memoises every result in the result cache (memo kind
``metrics``, keyed by the predictions, the annotations and everything else that moves the numbers)
so a cached rerun recomputes nothing and loads no model, and it keeps one METEOR JVM for the
whole run (its start-up costs seconds). Close it when the run ends.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from tasks.base import MetricResult, Sample

if TYPE_CHECKING:  # pragma: no cover
    from harness.cache import ResultCache
    from harness.config import RunConfig
    from harness.plan import PlannedTask
    from tasks.metrics.meteor import MeteorProcess

log = logging.getLogger(__name__)

#: Part of every memoised metric's key; bump it when a metric's numbers or CIs change.
#: 2: caption CIDEr-D CIs keep the corpus's document frequencies (docs/metrics.md).
METRICS_VERSION = "2"


class UnitScoring:
    """The metrics of a unit's predictions, memoised; owns the run's METEOR process."""

    def __init__(
        self, memo: "ResultCache", config: "RunConfig", *, scorer: Callable[[], Any], scorer_fingerprint: Callable[[], str]
    ) -> None:
        """``scorer`` (the run's image–text scorer) and its fingerprint are called only for
        CLIPScore not yet memoised, so a cached rerun loads no model."""
        self.memo = memo
        self.bootstrap = config.bootstrap
        self.seed = config.seed
        self.with_clipscore = config.clipscore
        sc = config.models.scorer
        self.scorer_label = "tag-minilm" if sc.kind == "tag-minilm" else f"{sc.kind}-{sc.model}"
        self.scorer = scorer
        self.scorer_fingerprint = scorer_fingerprint
        self._meteor: "MeteorProcess | bool | None" = None  # False: tried, no Java

    def score(self, task: "PlannedTask", samples: list[Sample], preds: list[str]) -> MetricResult:
        """The task's metric with its breakdown and (captions, if configured) CLIPScore merged in.

        ``preds`` holds "" for a failed sample, which every metric counts as wrong.
        """
        metrics = self.task_metric(task, samples, preds)
        if task.spec.breakdown:
            from tasks.metrics.breakdowns import breakdown

            metrics = merge_metrics(metrics, breakdown(task.spec.breakdown, samples, metrics))
        if task.spec.kind == "caption" and self.with_clipscore:
            extra = self.clipscore(task, samples, preds)
            if extra is not None:
                metrics = merge_metrics(metrics, extra)
        return metrics

    def task_metric(self, task: "PlannedTask", samples: list[Sample], preds: list[str]) -> MetricResult:
        """The task's metric family (``spec.metric``) with bootstrap CIs."""
        from harness.config import stable_hash
        from tasks.metrics import METRICS

        metric = task.spec.metric
        key = stable_hash(
            [metric, task.fingerprint, [(s.sample_id, s.annotation_digest()) for s in samples], preds,
             self.bootstrap, self.seed, METRICS_VERSION]
        )
        memo = self.memo.memo_get("metrics", key)
        if memo is not None:
            return metric_from_dict(memo)
        extra: dict[str, Any] = {}
        if metric == "caption":
            extra["meteor_process"] = self.meteor_process()
        res = METRICS[metric](samples, preds, n_boot=self.bootstrap, seed=self.seed, **extra)
        self.memo.memo_put("metrics", key, metric_to_dict(res))
        return res

    def clipscore(self, task: "PlannedTask", samples: list[Sample], preds: list[str]) -> MetricResult | None:
        """CLIPScore/RefCLIPScore with the run's image–text scorer, labelled with that scorer.

        Memoised by the scorer's fingerprint, so a cached rerun loads no model. Samples whose image
        cannot be loaded or whose caption is empty score 0 (as failures count as wrong).
        """
        import torch

        from harness.config import stable_hash
        from harness.interface import image_id_of
        from tasks.metrics.clipscore import clip_scores, clipscore_result

        key = stable_hash(["clipscore", self.scorer_fingerprint(), task.fingerprint,
                           [(s.sample_id, s.annotation_digest(), s.image_digest()) for s in samples], preds,
                           self.bootstrap, self.seed])
        memo = self.memo.memo_get("metrics", key)
        if memo is not None:
            return metric_from_dict(memo)
        scorer = self.scorer()
        clip_s = [0.0] * len(samples)
        ref_s = [0.0] * len(samples)
        idx, imgs, ids = [], [], []
        for i, (s, p) in enumerate(zip(samples, preds)):
            if not p.strip():
                continue
            try:
                img = s.load_image()
            except Exception:  # noqa: BLE001 - the sample already failed; it scores 0
                continue
            idx.append(i)
            imgs.append(img)
            ids.append(image_id_of(img))
        if idx:
            img_emb = scorer.embed_images(imgs, ids)
            cand = scorer.embed_texts([preds[i] for i in idx])
            refs = [scorer.embed_texts(list(samples[i].references)) if samples[i].references else torch.zeros(0, cand.shape[1])
                    for i in idx]
            cs, rs = clip_scores(img_emb.float(), cand.float(), [r.float() for r in refs])
            for j, i in enumerate(idx):
                clip_s[i], ref_s[i] = cs[j], rs[j]
        res = clipscore_result(self.scorer_label, clip_s, ref_s, n_boot=self.bootstrap, seed=self.seed)
        self.memo.memo_put("metrics", key, metric_to_dict(res))
        return res

    def meteor_process(self) -> "MeteorProcess | None":
        """One METEOR JVM for the whole run, started on first use; None without Java."""
        if self._meteor is None:
            from tasks.metrics.meteor import MeteorProcess

            try:
                self._meteor = MeteorProcess()
            except RuntimeError as exc:  # no Java: caption metrics report METEOR as unavailable
                log.warning("METEOR unavailable: %s", exc)
                self._meteor = False
        return self._meteor or None

    def close(self) -> None:
        """Stop the METEOR JVM (if one was started); a later caption score starts a new one."""
        if self._meteor:
            self._meteor.close()
        self._meteor = None


def merge_metrics(main: MetricResult, extra: MetricResult) -> MetricResult:
    """Add ``extra``'s metrics to ``main`` (keeping ``main``'s primary metric and type)."""
    return dataclasses.replace(
        main,
        values={**main.values, **extra.values},
        ci={**main.ci, **extra.ci},
        per_sample={**main.per_sample, **extra.per_sample},
        unavailable={**main.unavailable, **extra.unavailable},
    )


def metric_to_dict(m: MetricResult) -> dict[str, Any]:
    """The JSON form a memoised metric is stored in (``info`` of a MetricReport is not kept)."""
    return {
        "values": dict(m.values),
        "ci": {k: list(v) for k, v in m.ci.items()},
        "per_sample": {k: list(v) for k, v in m.per_sample.items()},
        "unavailable": dict(m.unavailable),
        "primary": m.primary,
    }


def metric_from_dict(d: dict[str, Any]) -> MetricResult:
    return MetricResult(
        values=d["values"],
        ci={k: (v[0], v[1]) for k, v in d["ci"].items()},
        per_sample=d["per_sample"],
        unavailable=d["unavailable"],
        primary=d["primary"],
    )
