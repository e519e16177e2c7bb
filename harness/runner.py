"""The evaluation loop: (paradigm × task × shots × trial) units over samples, cached and logged.

Order of work, chosen so that mistakes surface before compute and nothing computed is lost:
1. ``plan`` resolves every name and option and loads dataset *indexes* (no images, no models);
   any problem raises :class:`~harness.config.ConfigError`.
2. For each unit, answers already in the result cache are read back; only missing samples are
   computed, in batches, each batch written to the cache before the next starts.
3. Metrics (with bootstrap CIs) are computed on the full set of answers and logged to MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.backbones import Backbones
from harness.cache import ResultCache, sample_key
from harness.config import ConfigError, ParadigmSpec, RunConfig, format_validation_error, repo_root, stable_hash
from harness.distributed import Distributed
from harness.failures import describe, is_transient
from harness.interface import Answer, Paradigm, Request, RetryableFailure, Shot
from harness.models.llm import GenerationSettings
from harness.models.served_llm import llm_cost
from harness.registry import FAMILIES, paradigms
from tasks.base import Dataset, MetricResult, Sample
from tasks.spec import TaskSpec, get_task, task_specs

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
#: C0/C1 control characters other than tab and newline: junk from broken exports that some
#: tokenizers map to nothing and terminals interpret; replaced by a space before prompting.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """The question as the model sees it: control characters become spaces."""
    return _CONTROL.sub(" ", text)


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlannedTask:
    spec: TaskSpec
    dataset: Dataset
    support: Dataset | None
    fingerprint: str
    options: dict[str, Any] = field(default_factory=dict)  # resolved dataset options (paths absolute)
    shots: tuple[int, ...] | None = None  # per-task override of in_context.shots
    annotations: str = ""  # digest of every sample's annotation content (query and support splits)


@dataclass(frozen=True)
class PlannedParadigm:
    spec: ParadigmSpec
    cls: type[Paradigm]
    options: Any

    @property
    def label(self) -> str:
        return self.spec.display


@dataclass(frozen=True)
class Unit:
    paradigm: PlannedParadigm
    task: PlannedTask
    shots: int
    trial: int

    @property
    def name(self) -> str:
        return f"{self.paradigm.label} | {self.task.spec.name} | {self.shots}-shot | trial {self.trial}"


@dataclass
class UnitResult:
    unit: Unit
    metrics: MetricResult
    rows: list[dict[str, Any]]
    computed: int
    cached: int
    costs: dict[str, float] = field(default_factory=dict)
    shot_strategy: str | None = None  # how demonstrations were chosen (None at 0 shots)
    started_s: float = 0.0  # wall clock (epoch seconds) when the unit's work began / ended: real MLflow durations
    ended_s: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r["error"])


@dataclass
class Plan:
    config: RunConfig
    paradigms: list[PlannedParadigm]
    tasks: list[PlannedTask]

    def units(self) -> list[Unit]:
        out = []
        for task in self.tasks:
            for p in self.paradigms:
                for k in shot_counts(task, self.config):
                    trials = self.config.in_context.trials if k > 0 else 1
                    for t in range(trials):
                        out.append(Unit(p, task, k, t))
        return out


def shot_counts(task: PlannedTask, config: RunConfig) -> list[int]:
    """Binding episodes carry their own demonstrations; other kinds use the configured k values."""
    if task.spec.kind == "binding":
        return [0]
    if task.support is None:
        return [0]
    return list(task.shots if task.shots is not None else config.in_context.shots)


def select_paradigms(config: RunConfig, wanted: Sequence[str] | None) -> list[ParadigmSpec]:
    """``wanted``: None/['all'] = the config's list; a family name = that family's variants."""
    table = paradigms()
    specs = list(config.paradigms)
    if not wanted or list(wanted) == ["all"]:
        return specs
    chosen: list[ParadigmSpec] = []
    for w in wanted:
        if w in FAMILIES:
            fam = [s for s in specs if s.family == w]
            chosen += fam or [ParadigmSpec(name=n) for n in table if n.startswith(w + "/")]
        elif w in table:
            chosen += [s for s in specs if s.name == w] or [ParadigmSpec(name=w)]
        else:
            raise ConfigError(
                f"unknown paradigm {w!r} for --paradigm; choices: all, {', '.join(FAMILIES)}, {', '.join(table)}"
            )
    return chosen


def plan_run(
    config: RunConfig,
    paradigm_filter: Sequence[str] | None = None,
    task_filter: Sequence[str] | None = None,
) -> Plan:
    """Resolve and validate everything that can be checked without loading a model."""
    from pydantic import ValidationError

    table = paradigms()
    planned: list[PlannedParadigm] = []
    for i, spec in enumerate(select_paradigms(config, paradigm_filter)):
        if spec.name not in table:
            raise ConfigError(f"config key 'paradigms[{i}].name': unknown paradigm {spec.name!r}; choices: {', '.join(table)}")
        cls = table[spec.name]
        try:
            opts = cls.Options.model_validate(spec.options)
        except ValidationError as exc:
            msg = format_validation_error(exc, cls.Options).replace("config key '", f"config key 'paradigms[{i}].options.")
            raise ConfigError(msg) from None
        planned.append(PlannedParadigm(spec, cls, opts))
    if config.models.llm.source == "openai":
        from harness.models.served_llm import served_llm_refusal

        for i, p in enumerate(planned):
            why = served_llm_refusal(p.spec.family, p.cls.uses)
            if why:
                raise ConfigError(f"config key 'paradigms[{i}]' ({p.spec.name}) cannot use models.llm.source: openai: {why}")
    labels = [p.label for p in planned]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"paradigm labels must be unique; got {labels} (set 'label' to tell variants apart)")

    refs = list(config.tasks)
    known = task_specs()
    if task_filter:
        by_name = {r.name: r for r in refs}
        from harness.config import TaskRef

        refs = [by_name.get(n) or TaskRef(name=n) for n in task_filter]
    tasks = []
    for i, ref in enumerate(refs):
        if ref.name not in known:
            raise ConfigError(f"config key 'tasks[{i}].name': unknown task {ref.name!r}; choices: {', '.join(known)}")
        tasks.append(_plan_task(known[ref.name], ref.dataset_options, ref.limit or config.limit, config, ref.shots,
                                ref.support_options))
    if not planned:
        raise ConfigError("no paradigm selected")
    if not tasks:
        raise ConfigError("no task selected")
    return Plan(config, planned, tasks)


def _resolve_paths(options: dict[str, Any]) -> dict[str, Any]:
    """Relative ``root`` options are read from the working directory, else the mmbench checkout."""
    out = dict(options)
    root = out.get("root")
    if isinstance(root, str) and not Path(root).is_absolute() and not Path(root).exists():
        candidate = repo_root() / root
        if candidate.exists():
            out["root"] = str(candidate)
    return out


def spread_subset(samples: Sequence[Sample], n: int) -> tuple[Sample, ...]:
    """``n`` samples evenly spaced through the split (deterministic, independent of the seed).

    Datasets list several questions per image next to each other; the first ``n`` would often all
    be about one image, so a small ``--limit`` takes every (len/n)-th sample instead.
    """
    step = len(samples) / n
    return tuple(samples[int(i * step)] for i in range(n))


def _no_support_hint(spec: TaskSpec) -> str:
    return f": {spec.support_note}" if spec.support_note else ""


def _plan_task(
    spec: TaskSpec, overrides: dict[str, Any], limit: int | None, config: RunConfig, shots: tuple[int, ...] | None = None,
    support_overrides: dict[str, Any] | None = None,
) -> PlannedTask:
    from tasks.datasets import load_dataset

    options = _resolve_paths({**spec.dataset_options, **overrides})
    if support_overrides and spec.support_dataset is None:
        raise ConfigError(f"task {spec.name!r} draws demonstrations from its own dataset; set dataset_options, not support_options")
    asked = max(shots if shots is not None else config.in_context.shots, default=0)
    if spec.kind != "binding" and asked > 0 and spec.support_split is None:
        raise ConfigError(
            f"task {spec.name!r} has no support split, so it cannot be run with {asked} shots; "
            f"set shots to 0 for it (tasks[].shots) or use a task with demonstrations "
            f"(see docs/datasets.md){_no_support_hint(spec)}"
        )
    support_loader, support_options = spec.dataset, options
    if spec.support_dataset is not None:  # demonstrations from another dataset: loaded only when asked for
        support_loader = spec.support_dataset
        support_options = _resolve_paths({**spec.support_dataset_options, **(support_overrides or {})})
    load_support = spec.support_split is not None and (spec.support_dataset is None or asked > 0)
    try:
        ds = load_dataset(spec.dataset, spec.split, options)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"task {spec.name!r}: cannot load dataset {spec.dataset!r}: {exc}") from None
    try:
        support = load_dataset(support_loader, spec.support_split, support_options) if load_support else None
    except (ValueError, OSError, KeyError) as exc:
        if asked == 0:  # not needed at 0 shots (e.g. only the val files of VQAv2 are on disk)
            log.info("task %s: demonstrations not loaded (%s); not needed at 0 shots", spec.name, exc)
            support = None
        else:
            where = "tasks[].support_options" if spec.support_dataset else "dataset_options"
            raise ConfigError(
                f"task {spec.name!r}: cannot load its demonstrations ({support_loader!r} split {spec.support_split!r}; "
                f"set {where}): {exc}"
            ) from None
    if len(ds) == 0:
        raise ConfigError(f"task {spec.name!r}: dataset {spec.dataset!r} split {spec.split!r} has zero samples")
    ids = [s.sample_id for s in ds.samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"task {spec.name!r}: duplicate sample ids in the dataset: {dup}")
    if limit and limit < len(ds):
        ds = Dataset(ds.name, ds.split, ds.source, spread_subset(ds.samples, limit), ds.license)
    max_k = max(shots if shots is not None else config.in_context.shots, default=0)
    if spec.kind != "binding" and max_k > 0 and config.in_context.strategy == "rices_qi" and spec.kind == "caption":
        raise ConfigError(
            f"in_context.strategy 'rices_qi' compares questions, but task {spec.name!r} is captioning; "
            "use 'rices' or 'random'"
        )
    if spec.kind != "binding" and max_k > 0 and support is not None and max_k > len(support):
        raise ConfigError(
            f"in_context.shots asks for {max_k} demonstrations but task {spec.name!r} has only "
            f"{len(support)} support samples (split {spec.support_split!r})"
        )
    # The fingerprint identifies the task's definition; the content of its annotation files is in
    # ``annotations`` (metric memo, shot memo, logged) and per sample in each answer's key, so a fix
    # to one sample's annotation recomputes that sample's answer only.
    annotations = stable_hash(
        [[s.sample_id, s.annotation_digest()] for s in ds.samples]
        + [[s.sample_id, s.annotation_digest()] for s in (support.samples if support else ())],
        n=20,
    )
    fp = stable_hash(
        {
            "task": spec.identity(),
            "options": options,
            "source": ds.source,
            "split": ds.split,
            "support": support.source if support else None,
            **({"support_options": support_options} if spec.support_dataset is not None and support else {}),
        }
    )
    return PlannedTask(spec, ds, support, fp, options, shots, annotations)


# ---------------------------------------------------------------------- execution
def image_id_of(img: Any) -> str:
    """Content id of a decoded image: equal pixels -> equal id, whatever file it came from."""
    h = hashlib.sha1()
    h.update(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:20]


@dataclass
class _Prepared:
    sample: Sample
    key: str
    prompt: str
    shots: tuple[Sample, ...]


class Stopwatch:
    """Seconds spent per phase, so the harness's own overhead can be reported against model time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> "_Lap":
        return _Lap(self, phase)

    def overhead_fraction(self) -> float:
        """(cache + metrics + logging + planning) / model time."""
        model = self.seconds.get("model", 0.0)
        own = sum(self.seconds.get(k, 0.0) for k in ("cache", "logging", "prepare_keys"))
        return own / model if model > 0 else float("nan")


class _Lap:
    def __init__(self, watch: Stopwatch, phase: str) -> None:
        self.watch, self.phase = watch, phase

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.watch.seconds[self.phase] = self.watch.seconds.get(self.phase, 0.0) + time.perf_counter() - self.start


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
        self._prepared: set[str] = set()
        self._fingerprints: dict[str, str] | None = None
        self._meteor: Any = None
        self.watch = Stopwatch()
        self._rices: dict[str, Any] = {}  # task fingerprint:strategy -> SupportIndex

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

    def _paradigm_fp(self, p: PlannedParadigm) -> dict[str, Any]:
        fps = self.fingerprints()
        return {
            "paradigm": self.instance(p).fingerprint(),
            "backbones": {k: fps[k] for k in p.cls.uses},
        }

    def _shot_memo_key(self, unit: Unit, sample: Sample) -> str:
        ic = self.config.in_context
        parts = [unit.task.fingerprint, unit.task.annotations, sample.sample_id, unit.shots, unit.trial, ic.strategy, self.config.seed,
                 self.fingerprints()["scorer"] if ic.strategy != "random" else ""]
        if ic.strategy != "random":  # retrieval now orders most similar last: older memos are not reused
            parts.append("most-similar-last")
        return stable_hash(parts)

    def _select_unit_shots(self, unit: Unit) -> dict[str, tuple[Sample, ...]]:
        """Demonstrations of every sample of the unit (memoised; retrieval batched over the unit)."""
        samples = unit.task.dataset.samples
        if unit.task.spec.kind == "binding":
            return {s.sample_id: tuple(s.episode) for s in samples}
        if unit.shots == 0 or unit.task.support is None:
            return {s.sample_id: () for s in samples}
        from tasks.shots import select_shots

        ic = self.config.in_context
        support = unit.task.support.samples
        by_id = {s.sample_id: s for s in support}
        out: dict[str, tuple[Sample, ...]] = {}
        todo: list[Sample] = []
        for s in samples:
            cached = self.cache.memo_get("shots", self._shot_memo_key(unit, s))
            if cached is not None and all(i in by_id for i in cached):
                out[s.sample_id] = tuple(by_id[i] for i in cached)
            else:
                todo.append(s)
        if ic.strategy == "random":
            chosen = {
                s.sample_id: select_shots(s, support, unit.shots, strategy="random", seed=self.config.seed, trial=unit.trial)
                for s in todo
            }
        else:
            chosen = self._retrieve(unit, todo)
        for s in todo:
            if s.sample_id not in chosen:  # the query image itself did not load: the sample fails later
                out[s.sample_id] = ()
                continue
            out[s.sample_id] = tuple(chosen[s.sample_id])
            self.cache.memo_put("shots", self._shot_memo_key(unit, s), [x.sample_id for x in chosen[s.sample_id]])
        return out

    def _retrieve(self, unit: Unit, queries: Sequence[Sample]) -> dict[str, list[Sample]]:
        """RICES / PICa retrieval for ``queries`` in one batched search over the support index."""
        from harness.shot_embeddings import embed_queries, support_index

        if not queries:
            return {}
        strategy = self.config.in_context.strategy
        key = f"{unit.task.fingerprint}:{strategy}"
        if key not in self._rices:
            self._rices[key] = support_index(
                self.backbones.scorer, self.fingerprints()["scorer"], unit.task.support.samples,
                with_text=strategy == "rices_qi", cache_root=Path(self.backbones.cache_dir) / "support_embeddings",
            )
        index = self._rices[key]
        ok, img, txt = embed_queries(self.backbones.scorer, queries, with_text=strategy == "rices_qi")
        if not ok:
            return {}
        picked = index.select(ok, img, unit.shots, txt)
        return {q.sample_id: shots for q, shots in zip(ok, picked)}

    def _prepare_unit(self, unit: Unit) -> list[_Prepared]:
        pfp = self._paradigm_fp(unit.paradigm)
        out = []
        with self.watch("shot_selection"):  # RICES runs the scorer: model work, not harness
            selected = self._select_unit_shots(unit)
        for s in unit.task.dataset.samples:
            shots = selected[s.sample_id]
            with self.watch("prepare_keys"):
                prompt, key = self._key(unit, pfp, s, shots)
            out.append(_Prepared(s, key, prompt, shots))
        return out

    def _key(self, unit: Unit, pfp: dict[str, Any], s: Sample, shots: tuple[Sample, ...]) -> tuple[str, str]:
        """The sample's prompt and its cache key: everything that determines the answer."""
        spec = unit.task.spec
        prompt = spec.render_prompt(clean_text(s.question), s.choices, clean_text(str(s.meta.get("hint") or "")))
        key = sample_key(
            paradigm=pfp,
            task=unit.task.fingerprint,
            sample=s.sample_id,
            image=s.image_digest(),
            annotation=s.annotation_digest(),
            prompt=prompt,
            shots=[(x.sample_id, x.gold_text, x.image_digest(), x.annotation_digest()) for x in shots],
            generation=self.config.generation.model_dump(mode="json"),
            max_new_tokens=spec.max_new_tokens,
            seed=self.config.seed,
            trial=unit.trial,
            # how the demonstrations were chosen (left out at 0 shots: those keys stay as they were)
            **({"shot_strategy": self.config.in_context.strategy} if unit.shots > 0 else {}),
        )
        return prompt, key

    # -------------------------------------------------------------- computing
    def _build_request(self, unit: Unit, prep: _Prepared) -> Request | Answer:
        s = prep.sample
        if len(s.question) > MAX_QUESTION_CHARS:
            return Answer.failed(f"question too long ({len(s.question)} characters > {MAX_QUESTION_CHARS})")
        if unit.task.spec.kind in ("vqa", "multiple_choice") and not clean_text(s.question).strip():
            return Answer.failed("empty question")
        try:
            img = s.load_image()
        except Exception as exc:  # noqa: BLE001 - any image failure fails only this sample
            return _failure(f"image {s.image_ref!r}: {describe(exc)}", exc)
        shots = []
        for x in prep.shots:
            try:
                ximg = x.load_image()
            except Exception as exc:  # noqa: BLE001
                return _failure(f"demonstration image {x.image_ref!r}: {describe(exc)}", exc)
            shots.append(
                Shot(
                    sample_id=x.sample_id,
                    image_id=image_id_of(ximg),
                    image=ximg,
                    prompt=unit.task.spec.render_prompt(clean_text(x.question), x.choices, clean_text(str(x.meta.get("hint") or ""))),
                    answer=x.gold_text,
                    question=clean_text(x.question),
                    choices=tuple(x.choices),
                    meta=dict(x.meta),
                )
            )
        return Request(
            sample_id=s.sample_id,
            image_id=image_id_of(img),
            image=img,
            prompt=prep.prompt,
            shots=tuple(shots),
            kind=unit.task.spec.kind,
            choices=tuple(s.choices),
            question=clean_text(s.question),
            max_new_tokens=unit.task.spec.max_new_tokens,
            meta=dict(s.meta),
            withheld=(*s.references, *s.answers, *((s.gold_text,) if s.choices else ())),
        )

    def _answer(self, paradigm: Paradigm, requests: list[Request]) -> list[Answer]:
        """Batched answer; if the batch as a whole raises, isolate the bad sample one by one."""
        start = time.perf_counter()
        try:
            answers = paradigm.answer_batch(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"{paradigm.name} returned {len(answers)} answers for {len(requests)} requests")
        except (KeyboardInterrupt, RetryableFailure):
            raise  # RetryableFailure: not an answer; nothing of this batch is cached, the run stops
        except (Exception, MemoryError) as exc:  # noqa: BLE001 - classified: transient ones are not cached
            if len(requests) == 1:
                return [_failure(describe(exc), exc)]
            # One by one: isolates a bad sample, and a batch too large for memory may fit singly.
            return [a for r in requests for a in self._answer(paradigm, [r])]
        per = (time.perf_counter() - start) / max(1, len(requests))
        for a in answers:
            if not a.latency_s:
                a.latency_s = per
        return answers

    def _prepare_paradigm(self, unit: Unit) -> None:
        """Run the paradigm's one-time set-up (training, LM adaptation, conversions).

        With several processes rank 0 goes first and sends the files it trained or converted (the
        paradigm's ``checkpoint_dir``) to the other ranks, which then load them: every rank answers
        with the same weights, and no shared file system is needed (``Distributed.prepare_in_order``).
        """
        paradigm = self.instance(unit.paradigm)
        with self.watch("prepare_paradigm"):
            self.dist.prepare_in_order(paradigm.prepare, lambda: getattr(paradigm, "checkpoint_dir", None),
                                       Path(self.backbones.cache_dir), unit.paradigm.label)
        self._prepared.add(unit.paradigm.label)
        if self.on_prepared:
            self.on_prepared(unit.paradigm.label, paradigm)

    def run_unit(self, unit: Unit) -> UnitResult | None:
        started = time.time()
        prepared = self._prepare_unit(unit)
        found: dict[str, dict[str, Any]] = {}
        if self.dist.is_main:  # rank 0's cache decides what is missing; other ranks own no cache
            with self.watch("cache"):
                found = self.cache.get_many([p.key for p in prepared])
            if self.retry_failed:  # --retry-failed: cached failures count as missing and are recomputed
                found = {k: v for k, v in found.items() if not v.get("error")}
        by_key = {p.key: p for p in prepared}
        missing_keys = self.dist.agree_missing(unit.name, [p.key for p in prepared],
                                               [p.key for p in prepared if p.key not in found] if self.dist.is_main else None)
        missing = [by_key[k] for k in missing_keys]
        n_cached = len(prepared) - len(missing)
        bar = _progress(len(prepared), n_cached, unit.name, self.progress)
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
        answers = [Answer.from_dict(found[p.key]) for p in prepared]
        return self._finish_unit(unit, prepared, answers, len(missing), n_cached, started)

    def _compute(self, unit: Unit, paradigm: Paradigm, chunk: list[_Prepared]) -> list[list[Any]]:
        """This rank's answers to ``chunk`` as rows ``[key, answer dict, transient]``."""
        with self.watch("load_inputs"):
            built = [self._build_request(unit, p) for p in chunk]
        reqs = [b for b in built if isinstance(b, Request)]
        with self.watch("model"):
            answers = iter(self._answer(paradigm, reqs) if reqs else [])
        results = [next(answers) if isinstance(b, Request) else b for b in built]
        return [[p.key, a.to_dict(), a.transient] for p, a in zip(chunk, results)]

    def _finish_unit(
        self, unit: Unit, prepared: list[_Prepared], answers: list[Answer], computed: int, cached: int,
        started: float = 0.0,
    ) -> UnitResult:
        samples = [p.sample for p in prepared]
        preds = ["" if a.error else a.text for a in answers]
        with self.watch("metrics"):
            metrics = self._metrics(unit, samples, preds)
            if unit.task.spec.breakdown:
                from tasks.metrics.breakdowns import breakdown

                metrics = merge_metrics(metrics, breakdown(unit.task.spec.breakdown, samples, metrics))
            if unit.task.spec.kind == "caption" and self.config.clipscore:
                extra = self._clipscore(unit, samples, preds)
                if extra is not None:
                    metrics = merge_metrics(metrics, extra)
        price = getattr(self.config.models.llm, "price", None)  # served LLMs with a price table only
        rows = []
        for p, a, pred in zip(prepared, answers, preds):
            s = p.sample
            row = {
                "sample_id": s.sample_id,
                "image_ref": s.image_ref,
                "question": s.question,
                "prompt": p.prompt,
                "shots": [x.sample_id for x in p.shots],
                "shot_strategy": self.config.in_context.strategy if unit.shots > 0 else None,
                "shot_answers": [x.gold_text for x in p.shots],
                "prediction": pred,
                "references": list(s.references),
                "answers": list(s.answers),
                "choices": list(s.choices),
                "error": a.error,
                "transient": a.transient,
                "latency_s": a.latency_s,
                "llm_tokens_in": a.llm_tokens_in,
                "llm_tokens_out": a.llm_tokens_out,
                "tool_calls": a.tool_calls,
                "trace": a.trace,
            }
            if price is not None:
                row["llm_cost"] = llm_cost(a.llm_tokens_in, a.llm_tokens_out, price)
            elif isinstance(a.trace, dict) and a.trace.get("llm_cost") is not None:  # a paradigm's own endpoint
                row["llm_cost"] = float(a.trace["llm_cost"])
            for m, scores in metrics.per_sample.items():
                if len(scores) == len(prepared):
                    row[f"score_{m}"] = scores[len(rows)]
            rows.append(row)
        n = max(1, len(answers))
        costs = {
            "latency_s_mean": sum(a.latency_s for a in answers) / n,
            "llm_tokens_in_mean": sum(a.llm_tokens_in for a in answers) / n,
            "llm_tokens_out_mean": sum(a.llm_tokens_out for a in answers) / n,
            "tool_calls_mean": sum(a.tool_calls for a in answers) / n,
            "trainable_params": float(max((a.trainable_params for a in answers), default=0)),
            "n_failed": float(sum(1 for a in answers if a.error)),
            "n_transient": float(sum(1 for a in answers if a.transient)),
            "n_samples": float(len(answers)),
        }
        if any("llm_cost" in r for r in rows):  # money per sample at the configured price per million tokens
            costs["llm_cost_mean"] = sum(r.get("llm_cost", 0.0) for r in rows) / n
            costs["llm_cost_total"] = sum(r.get("llm_cost", 0.0) for r in rows)
        for counter in ("parse_errors", "budget_exhausted", "tool_failures"):
            total = sum(int(a.trace.get(counter, 0) or 0) for a in answers if isinstance(a.trace, dict))
            costs[counter] = float(total)
        strategy = self.config.in_context.strategy if unit.shots > 0 else None
        result = UnitResult(unit, metrics, rows, computed, cached, costs, strategy, started_s=started, ended_s=time.time())
        if self.on_unit:
            with self.watch("logging"):
                self.on_unit(result)
        return result

    def _metrics(self, unit: Unit, samples: list[Sample], preds: list[str]) -> MetricResult:
        from tasks.metrics import METRICS

        metric = unit.task.spec.metric
        key = stable_hash(
            [metric, unit.task.fingerprint, [(s.sample_id, s.annotation_digest()) for s in samples], preds,
             self.config.bootstrap,
             self.config.seed, METRICS_VERSION]
        )
        memo = self.cache.memo_get("metrics", key)
        if memo is not None:
            return metric_from_dict(memo)
        extra: dict[str, Any] = {}
        if metric == "caption":
            extra["meteor_process"] = self._meteor_process()
        res = METRICS[metric](samples, preds, n_boot=self.config.bootstrap, seed=self.config.seed, **extra)
        self.cache.memo_put("metrics", key, metric_to_dict(res))
        return res

    def _clipscore(self, unit: Unit, samples: list[Sample], preds: list[str]) -> MetricResult | None:
        """CLIPScore/RefCLIPScore with the run's image–text scorer, labelled with that scorer.

        Memoised by the scorer's fingerprint, so a cached rerun loads no model. Samples whose image
        cannot be loaded or whose caption is empty score 0 (as failures count as wrong).
        """
        import torch

        from tasks.metrics.clipscore import clip_scores, clipscore_result

        sc = self.config.models.scorer
        label = "tag-minilm" if sc.kind == "tag-minilm" else f"{sc.kind}-{sc.model}"
        key = stable_hash(["clipscore", self.fingerprints()["scorer"], unit.task.fingerprint,
                           [(s.sample_id, s.annotation_digest(), s.image_digest()) for s in samples], preds,
                           self.config.bootstrap, self.config.seed])
        memo = self.cache.memo_get("metrics", key)
        if memo is not None:
            return metric_from_dict(memo)
        scorer = self.backbones.scorer
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
        res = clipscore_result(label, clip_s, ref_s, n_boot=self.config.bootstrap, seed=self.config.seed)
        self.cache.memo_put("metrics", key, metric_to_dict(res))
        return res

    def _meteor_process(self) -> Any:
        """One METEOR JVM for the whole run (its start-up costs seconds); None without Java."""
        if self._meteor is None:
            from tasks.metrics import MeteorProcess

            try:
                self._meteor = MeteorProcess()
            except RuntimeError as exc:  # no Java: caption metrics report METEOR as unavailable
                log.warning("METEOR unavailable: %s", exc)
                self._meteor = False
        return self._meteor or None

    def close(self) -> None:
        if self._meteor:
            self._meteor.close()
        self._meteor = None

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


#: Part of every memoised metric's key; bump it when a metric's numbers or CIs change.
#: 2: caption CIDEr-D CIs keep the corpus's document frequencies (docs/metrics.md).
METRICS_VERSION = "2"


def merge_metrics(main: MetricResult, extra: MetricResult) -> MetricResult:
    """Add ``extra``'s metrics to ``main`` (keeping ``main``'s primary metric and type)."""
    import dataclasses

    return dataclasses.replace(
        main,
        values={**main.values, **extra.values},
        ci={**main.ci, **extra.ci},
        per_sample={**main.per_sample, **extra.per_sample},
        unavailable={**main.unavailable, **extra.unavailable},
    )


def metric_to_dict(m: MetricResult) -> dict[str, Any]:
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


def _failure(reason: str, exc: BaseException) -> Answer:
    """A failed answer, transient (not cached) or deterministic (cached) by :func:`is_transient`."""
    return Answer.retryable(reason) if is_transient(exc) else Answer.failed(reason)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", leave=True, dynamic_ncols=True)
