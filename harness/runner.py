"""The evaluation loop: (paradigm × task × shots × trial) units over samples, cached and logged.

Order of work, chosen so that mistakes surface before compute and nothing computed is lost:
1. ``plan_run`` (harness/plan.py) resolves every name and option and loads dataset *indexes* (no
   images, no models); any problem raises :class:`~harness.config.ConfigError`.
2. For each unit, answers already in the result cache are read back; only missing samples are
   computed, in batches, each batch written to the cache before the next starts.
3. Metrics (with bootstrap CIs) are computed on the full set of answers and logged to MLflow.

The pieces the loop calls live beside it: cache keys (harness/keys.py), requests
(harness/request_builder.py), demonstrations (tasks/shots.py), metrics (tasks/metrics/scoring.py),
prediction rows and costs (harness/unit_result.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from harness.backbones import Backbones
from harness.cache import ResultCache
from harness.interface import Answer, Paradigm, Request
from harness.chunking import answer_in_chunks
from harness.keys import KeyedSample, keyed_sample, paradigm_fingerprint
from harness.models.llm import GenerationSettings
from harness.plan import Plan, PlannedParadigm, Unit
from harness.progress import Stopwatch, progress_bar
from harness.request_builder import build_request
from harness.unit_result import UnitResult, prediction_rows, shot_strategy, unit_costs
from tasks.metrics.scoring import UnitScoring
from tasks.shots import ShotSelector

log = logging.getLogger(__name__)


class Runner:
    """Executes a :class:`Plan`. One instance per ``mmbench run``."""

    def __init__(
        self,
        plan: Plan,
        *,
        cache: ResultCache,
        backbones: Backbones | None = None,
        progress: bool = True,
        on_unit: Callable[[UnitResult], None] | None = None,
        on_prepared: Callable[[str, Paradigm], None] | None = None,
        shard: tuple[int, int] = (0, 1),
        retry_failed: bool = False,
    ) -> None:
        self.plan = plan
        self.retry_failed = retry_failed
        self.config = plan.config
        self.cache = cache
        self.backbones = backbones or Backbones(self.config.models, seed=self.config.seed)
        self.progress = progress
        self.on_unit = on_unit
        self.on_prepared = on_prepared
        self.shard = shard
        self._instances: dict[str, Paradigm] = {}
        self._prepared: set[str] = set()  # labels of paradigms whose prepare() has run
        self._fingerprints: dict[str, str] | None = None
        self.watch = Stopwatch()

        def scorer() -> Any:
            return self.backbones.scorer

        def scorer_fingerprint() -> str:
            return self.fingerprints()["scorer"]

        self.shots = ShotSelector(
            cache, strategy=self.config.in_context.strategy, seed=self.config.seed, scorer=scorer,
            scorer_fingerprint=scorer_fingerprint, embeddings_dir=Path(self.backbones.cache_dir) / "support_embeddings",
        )
        self.scoring = UnitScoring(cache, self.config, scorer=scorer, scorer_fingerprint=scorer_fingerprint)

    # ------------------------------------------------------------------ helpers
    def fingerprints(self) -> dict[str, str]:
        if self._fingerprints is None:
            self._fingerprints = self.backbones.fingerprints()
        return self._fingerprints

    def instance(self, p: PlannedParadigm) -> Paradigm:
        if p.label not in self._instances:
            gen = GenerationSettings(
                max_new_tokens=self.config.generation.max_new_tokens,
                stop=tuple(self.config.generation.stop),
                greedy=self.config.generation.greedy,
                temperature=self.config.generation.temperature,
                seed=self.config.seed,
            )
            instance = p.cls(self.backbones, p.options, gen)
            instance.progress = self.progress
            self._instances[p.label] = instance
        return self._instances[p.label]

    def _keyed_samples(self, unit: Unit) -> list[KeyedSample]:
        """Every sample of the unit with its demonstrations, prompt and cache key."""
        pfp = paradigm_fingerprint(self.instance(unit.paradigm), self.fingerprints())
        out = []
        with self.watch("shot_selection"):  # RICES runs the scorer: model work, not harness
            selected = self.shots.select(unit.task, unit.shots, unit.trial)
        for s in unit.task.dataset.samples:
            with self.watch("prepare_keys"):
                out.append(keyed_sample(unit, pfp, s, selected[s.sample_id], self.config))
        return out

    # -------------------------------------------------------------- computing
    def _answer(self, paradigm: Paradigm, requests: list[Request]) -> list[Answer]:
        """The whole batch in one call; if it raises, each sample alone (``harness.chunking``)."""
        return answer_in_chunks(requests, max(1, len(requests)), paradigm.answer_batch, what=paradigm.name)

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _prepare_paradigm(self, unit: Unit) -> None:
        """Run the paradigm's one-time set-up (training, LM adaptation, conversions).

        With several processes rank 0 goes first: what prepare() trains or converts is cached on
        disk, so the other ranks then load it rather than repeating the work on the same files.
        """
        paradigm = self.instance(unit.paradigm)
        rank, world = self.shard
        if world > 1 and rank != 0:
            self.barrier()
        with self.watch("prepare_paradigm"):
            paradigm.prepare()
        if world > 1 and rank == 0:
            self.barrier()
        self._prepared.add(unit.paradigm.label)
        if self.on_prepared:
            self.on_prepared(unit.paradigm.label, paradigm)

    def run_unit(self, unit: Unit) -> UnitResult | None:
        started = time.time()
        keyed = self._keyed_samples(unit)
        if self.shard[1] > 1:
            self.barrier()  # all ranks see the same cache state, so "cached" means "before this run"
        with self.watch("cache"):
            found = self.cache.get_many([p.key for p in keyed])
        if self.retry_failed:  # --retry-failed: cached failures count as missing and are recomputed
            found = {k: v for k, v in found.items() if not v.get("error")}
        missing = [p for p in keyed if p.key not in found]
        rank, world = self.shard
        if world > 1:
            missing = [p for i, p in enumerate(missing) if int(p.key[:8], 16) % world == rank]
        n_cached = len(keyed) - sum(1 for p in keyed if p.key not in found)
        bar = progress_bar(len(keyed), n_cached, unit.name, self.progress)
        computed = 0
        if n_cached < len(keyed) and unit.paradigm.label not in self._prepared:
            # Decided on what every rank sees (not on this rank's shard), so all ranks take part.
            self._prepare_paradigm(unit)
        if missing:
            paradigm = self.instance(unit.paradigm)
            bs = self.config.batch_size
            for start in range(0, len(missing), bs):
                chunk = missing[start : start + bs]
                with self.watch("load_inputs"):
                    built = [build_request(unit.task.spec, p.sample, p.prompt, p.shots) for p in chunk]
                reqs = [b for b in built if isinstance(b, Request)]
                with self.watch("model"):
                    answers = iter(self._answer(paradigm, reqs) if reqs else [])
                results = [next(answers) if isinstance(b, Request) else b for b in built]
                with self.watch("cache"):  # transient failures are reported, never cached
                    self.cache.put_many(
                        unit.name,
                        [(p.key, p.sample.sample_id, a.to_dict()) for p, a in zip(chunk, results) if not a.transient],
                    )
                for p, a in zip(chunk, results):
                    found[p.key] = {**a.to_dict(), "transient": True} if a.transient else a.to_dict()
                computed += len(chunk)
                bar.update(len(chunk))
        bar.close()
        if world > 1:
            # Every rank has written its shard; rank 0 reads the others' answers back and scores.
            self.barrier()
            if rank != 0:
                return None
            found = {**self.cache.get_many([p.key for p in keyed]), **found}
            for p in keyed:  # another rank's transient failure: not cached, so not readable here
                if p.key not in found:
                    found[p.key] = {**Answer.retryable("transient failure on another rank (see its log)").to_dict(),
                                    "transient": True}
            computed = len(keyed) - n_cached  # by all ranks together
        answers = [Answer.from_dict(found[p.key]) for p in keyed]
        return self._finish_unit(unit, keyed, answers, computed, n_cached, started)

    def _finish_unit(
        self, unit: Unit, keyed: list[KeyedSample], answers: list[Answer], computed: int, cached: int,
        started: float = 0.0,
    ) -> UnitResult:
        samples = [p.sample for p in keyed]
        preds = ["" if a.error else a.text for a in answers]
        with self.watch("metrics"):
            metrics = self.scoring.score(unit.task, samples, preds)
        rows = prediction_rows(unit, keyed, answers, preds, metrics, self.config)
        result = UnitResult(unit, metrics, rows, computed, cached, unit_costs(answers, rows),
                            shot_strategy(unit, self.config), started_s=started, ended_s=time.time())
        if self.on_unit:
            with self.watch("logging"):
                self.on_unit(result)
        return result

    def close(self) -> None:
        self.scoring.close()

    def run(self) -> list[UnitResult]:
        units = self.plan.units()
        results = []
        try:
            for i, unit in enumerate(units, 1):
                log.info("[%d/%d] %s", i, len(units), unit.name)
                r = self.run_unit(unit)
                if r is not None:
                    results.append(r)
        finally:
            self.close()
        return results
