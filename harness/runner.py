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
from harness.distributed import Distributed
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
        dist: Distributed | None = None,
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
        self.dist = dist or Distributed()  # several processes/nodes: see harness/distributed.py
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

    def _prepare_paradigm(self, unit: Unit) -> None:
        """Run the paradigm's one-time set-up (training, LM adaptation, conversions).

        With several processes rank 0 goes first and sends the files it trained or converted (the
        paradigm's ``checkpoint_dir``) to the other ranks, which then load them: every rank answers
        with the same weights, and no shared file system is needed (``Distributed.prepare_in_order``).
        """
        paradigm = self.instance(unit.paradigm)
        with self.watch("prepare_paradigm"):
            self.dist.prepare_in_order(paradigm.prepare, lambda: paradigm.checkpoint_dir,
                                       Path(self.backbones.cache_dir), unit.paradigm.label)
        self._prepared.add(unit.paradigm.label)
        if self.on_prepared:
            self.on_prepared(unit.paradigm.label, paradigm)

    def run_unit(self, unit: Unit) -> UnitResult | None:
        started = time.time()
        keyed = self._keyed_samples(unit)
        found: dict[str, dict[str, Any]] = {}
        if self.dist.is_main:  # rank 0's cache decides what is missing; other ranks own no cache
            with self.watch("cache"):
                found = self.cache.get_many([p.key for p in keyed])
            if self.retry_failed:  # --retry-failed: cached failures count as missing and are recomputed
                found = {k: v for k, v in found.items() if not v.get("error")}
        by_key = {p.key: p for p in keyed}
        missing_keys = self.dist.agree_missing(unit.name, [p.key for p in keyed],
                                               [p.key for p in keyed if p.key not in found] if self.dist.is_main else None)
        missing = [by_key[k] for k in missing_keys]
        n_cached = len(keyed) - len(missing)
        bar = progress_bar(len(keyed), n_cached, unit.name, self.progress)
        if missing and unit.paradigm.label not in self._prepared:
            # Decided on rank 0's cache (not on this rank's share), so all ranks take part.
            self._prepare_paradigm(unit)
        if missing:
            paradigm = self.instance(unit.paradigm)

            def store(rows: list[list[Any]]) -> None:
                """Rank 0: cache the round's answers of every rank (transient failures are reported, never cached)."""
                with self.watch("cache"):
                    self.cache.put_many(unit.name, [(k, by_key[k].sample.sample_id, a) for k, a, transient in rows
                                                    if not transient])
                for k, a, transient in rows:
                    found[k] = {**a, "transient": True} if transient else a
                bar.update(len(rows))

            for start, stop in self.dist.rounds(len(missing), self.config.batch_size):
                chunk = missing[start:stop]
                self.dist.answer_round(lambda chunk=chunk: self._compute(unit, paradigm, chunk), store, unit.name)
        bar.close()
        if not self.dist.is_main:
            return None
        answers = [Answer.from_dict(found[p.key]) for p in keyed]
        return self._finish_unit(unit, keyed, answers, len(missing), n_cached, started)

    def _compute(self, unit: Unit, paradigm: Paradigm, chunk: list[KeyedSample]) -> list[list[Any]]:
        """This rank's answers to ``chunk`` as rows ``[key, answer dict, transient]``."""
        with self.watch("load_inputs"):
            built = [build_request(unit.task.spec, p.sample, p.prompt, p.shots) for p in chunk]
        reqs = [b for b in built if isinstance(b, Request)]
        with self.watch("model"):
            answers = iter(self._answer(paradigm, reqs) if reqs else [])
        results = [next(answers) if isinstance(b, Request) else b for b in built]
        return [[p.key, a.to_dict(), a.transient] for p, a in zip(chunk, results)]

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
