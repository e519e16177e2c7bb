"""Shared answering of the text-conversion variants: convert images, build PICa-layout prompts,
decode all samples of a batch with one ``generate`` call, pick answers by LLM log-probability.

Variants differ only in how an image (and, for PromptCap, the question) becomes its context
string — :meth:`TextConversionParadigm.context`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from pydantic import Field

from harness.config import Strict
from harness.interface import Answer, Paradigm, Request, Shot
from harness.models.converters import (
    DEFAULT_CONVERTERS,
    CompositeConverter,
    ConversionCache,
    ConverterSpec,
    build_converters,
)
from harness.models.llm import GenerationSettings
from paradigms.text_conversion.prompts import (
    Example,
    caption_prompt,
    choice_question,
    pica_prompt,
    truncate,
)

NO_FACTS = "nothing was recognised in the image."


class TextConversionOptions(Strict):
    """Settings shared by PICa and PromptCap (all enter the result-cache key)."""

    converters: tuple[ConverterSpec, ...] = DEFAULT_CONVERTERS
    n_ensemble: int = Field(1, ge=1, description="PICa's m prompts; 5 in the paper")
    ensemble_mode: Literal["split", "permute"] = Field(
        "split",
        description="split: prompt i gets shots[i*n:(i+1)*n] with n=len(shots)//m (PICa; give it n*m shots); "
        "permute: every prompt gets all shots, prompt 0 in the given order, others shuffled",
    )
    max_context_chars: int = Field(400, ge=20)
    use_chat_template: bool = False
    vqa_max_new_tokens: int = Field(5, ge=1, description="PICa decodes at most 5 tokens")
    binding_mode: Literal["logprob", "generate"] = "logprob"


@dataclass
class LlmJob:
    """One sample's work for the LLM: the prompts to decode or the candidates to score, what came
    back (generations, log-probabilities), and the trace and conversion costs its answer reports."""

    kind: str
    prompts: list[str]
    candidates: list[str] = field(default_factory=list)  # scored continuations (MC / binding)
    max_new: int = 16
    trace: dict[str, Any] = field(default_factory=dict)
    tool_calls: int = 0
    convert_s: float = 0.0
    generations: list[Any] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def shot_question(shot: Shot) -> str:
    """A demonstration's raw question (falls back to its rendered prompt if the Shot carries none)."""
    return getattr(shot, "question", "") or shot.prompt


def ensemble_shot_sets(shots: Sequence[Shot], m: int, mode: str, seed: str) -> list[tuple[Shot, ...]]:
    """The demonstration sets of PICa's m prompts (identical sets are dropped later)."""
    shots = tuple(shots)
    if m == 1 or not shots:
        return [shots]
    if mode == "split":
        n = max(1, len(shots) // m)
        return [shots[i * n : (i + 1) * n] or shots[-n:] for i in range(m)]
    sets = [shots]
    for i in range(1, m):
        perm = list(shots)
        random.Random(f"{seed}:{i}").shuffle(perm)  # str seeds are stable across processes
        sets.append(tuple(perm))
    return sets


class TextConversionParadigm(Paradigm):
    """Base of the text-conversion variants (not registered itself)."""

    family = "text_conversion"
    Options = TextConversionOptions
    caption_prompt_template: str = ""  # what a captioner converter is asked (PromptCap sets one)

    def __init__(self, backbones: Any, options: Any, generation: GenerationSettings) -> None:
        super().__init__(backbones, options, generation)
        # Shared across variants when the run's Backbones offers one; otherwise per instance (tool
        # outputs are shared either way through the ToolBox's own cache).
        shared = getattr(backbones, "conversion_cache", None)
        self.cache: ConversionCache = shared if isinstance(shared, ConversionCache) else ConversionCache()
        self._converters: list[Any] | None = None

    # ----------------------------------------------------------------- conversion
    @property
    def converters(self) -> list[Any]:
        if self._converters is None:
            needs_tools = any(s.kind not in ("captioner", "expert") for s in self.options.converters)
            tools = self.backbones.tools if needs_tools else None
            experts = getattr(self.backbones, "experts", None) if any(
                s.kind == "expert" for s in self.options.converters) else None
            self._converters = [
                c
                for s in self.options.converters
                for c in build_converters(s, tools, caption_prompt=self.caption_prompt_template, experts=experts)
            ]
        return self._converters

    def context(
        self, image_id: str, image: Any, question: str, withheld: Sequence[str] = ()
    ) -> tuple[str, dict[str, Any], int, float]:
        """Context text for one image, plus its trace entry, tool calls and seconds spent.

        ``withheld``: the sample's scored references, which an oracle converter must not show."""
        conv = CompositeConverter(self.converters, self.cache).convert(image_id, image, question, withheld)
        text = truncate(conv.text or NO_FACTS, self.options.max_context_chars)
        return text, {"image_id": image_id, "context": text}, conv.tool_calls, conv.seconds

    def perception_setup(self) -> dict[str, str]:
        """How this paradigm perceives images, for the run's parameters (oracle vs real in the report)."""
        from harness.models.converters import ExpertConverter

        parts, oracle, experts = [], False, False
        for c in self.converters:
            if isinstance(c, ExpertConverter):
                experts, oracle = True, oracle or c.oracle
                s = c.expert.spec
                parts.append(f"{c.name}={c.expert.kind}:{getattr(s, 'model', None) or getattr(s, 'source', '')}")
            elif c.spec.kind == "captioner":
                experts = True
                parts.append(f"captioner={c.spec.model}")
            else:
                parts.append(f"{c.spec.kind}=packaged")
        return {"perception": "oracle" if oracle else ("experts" if experts else "packaged"), "experts": "; ".join(parts)}

    # ----------------------------------------------------------------- prompts
    def _wrap(self, text: str) -> str:
        return self.backbones.llm.chat_prompt(text) if self.options.use_chat_template else text

    def _space(self) -> str:
        """Raw completion continues after ``A:`` with a space; a chat reply starts bare."""
        return "" if self.options.use_chat_template else " "

    def _llm_job(self, r: Request) -> LlmJob:
        if r.image is None:
            raise ValueError("image is missing")
        question = r.question or r.prompt
        q_ctx, q_trace, calls, secs = self.context(
            r.image_id, r.image, "" if r.kind == "caption" else question, getattr(r, "withheld", ())
        )
        examples: list[Example] = []
        shot_traces = []
        for s in r.shots:
            sq = "" if r.kind == "caption" else shot_question(s)
            ctx, tr, c, t = self.context(s.image_id, s.image, sq)
            examples.append(Example(ctx, sq, s.answer))
            shot_traces.append({**tr, "sample_id": s.sample_id, "answer": s.answer})
            calls, secs = calls + c, secs + t
        by_id = {s.sample_id: e for s, e in zip(r.shots, examples)}
        trace: dict[str, Any] = {"context": q_ctx, "query": q_trace, "shots": shot_traces}
        if r.kind == "caption":
            prompts = [caption_prompt(examples, q_ctx)]
            job = LlmJob("caption", prompts, max_new=r.max_new_tokens)
        elif r.kind == "multiple_choice":
            if not r.choices:
                raise ValueError("multiple-choice sample without choices")
            prompts = [pica_prompt(examples, q_ctx, choice_question(question, r.choices))]
            job = LlmJob("multiple_choice", prompts, candidates=list(r.choices))
        elif r.kind == "binding":
            words = list(dict.fromkeys(s.answer for s in r.shots))
            prompts = [pica_prompt(examples, q_ctx, question)]
            if self.options.binding_mode == "logprob":
                if not words:
                    raise ValueError("binding sample without support shots")
                job = LlmJob("binding", prompts, candidates=words)
            else:
                job = LlmJob("binding_generate", prompts, max_new=r.max_new_tokens)
        else:
            o = self.options
            sets = ensemble_shot_sets(r.shots, o.n_ensemble, o.ensemble_mode, r.sample_id)
            prompts = list(dict.fromkeys(pica_prompt([by_id[s.sample_id] for s in ss], q_ctx, question) for ss in sets))
            job = LlmJob("vqa", prompts, max_new=min(r.max_new_tokens, self.options.vqa_max_new_tokens))
            trace["shots_per_prompt"] = [len(ss) for ss in sets]
        job.prompts = [self._wrap(p) for p in job.prompts]
        self._check_length(job)
        job.trace, job.tool_calls, job.convert_s = trace, calls, secs
        job.trace["prompts"] = job.prompts
        return job

    def _check_length(self, job: LlmJob) -> None:
        llm = self.backbones.llm
        limit = getattr(llm.model.config, "max_position_embeddings", None)
        if not limit:
            return
        longest = max(llm.count_tokens(p) for p in job.prompts)
        extra = max([llm.count_tokens(self._space() + c) for c in job.candidates] + [job.max_new])
        if longest + extra > limit:
            raise ValueError(f"prompt too long: {longest} + {extra} tokens > the LLM's {limit}")

    # ----------------------------------------------------------------- answering
    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(requests)
        jobs: dict[int, LlmJob] = {}
        for i, r in enumerate(requests):
            try:
                jobs[i] = self._llm_job(r)
            except Exception as exc:  # one bad sample (missing image, tool error) must not stop the batch
                answers[i] = Answer.failed(f"{type(exc).__name__}: {exc}", sample_id=r.sample_id)
        t0 = time.perf_counter()
        tokens_in = {i: 0 for i in jobs}
        self._generate(jobs, tokens_in)
        self._score(jobs, tokens_in)
        llm_share = (time.perf_counter() - t0) / max(1, len(jobs))
        for i, p in jobs.items():
            answers[i] = self._finish(p, tokens_in[i], llm_share)
        return [a for a in answers if a is not None]

    def _generate(self, jobs: dict[int, LlmJob], tokens_in: dict[int, int]) -> None:
        """One ``generate`` call per answer length for every prompt of every sample in the batch."""
        pending = [(i, p) for i, job in jobs.items() if not job.candidates for p in job.prompts]
        stop = tuple(dict.fromkeys((*self.generation.stop, "\n")))
        for max_new in sorted({jobs[i].max_new for i, _ in pending}):
            sub = [(i, p) for i, p in pending if jobs[i].max_new == max_new]
            settings = GenerationSettings(max_new, stop, self.generation.greedy, self.generation.temperature)
            gens = self.backbones.llm.generate([p for _, p in sub], settings)
            for (i, _), g in zip(sub, gens):
                jobs[i].generations.append(g)
                tokens_in[i] += g.tokens_in

    def _score(self, jobs: dict[int, LlmJob], tokens_in: dict[int, int]) -> None:
        """Log-probabilities in one call: options (MC/binding) and ensemble members' own answers."""
        pairs: list[tuple[int, str, str]] = []
        for i, job in jobs.items():
            if job.candidates:
                pairs += [(i, job.prompts[0], self._space() + c) for c in job.candidates]
            elif len(job.prompts) > 1:
                pairs += [(i, p, g.text) for p, g in zip(job.prompts, job.generations) if g.text.strip()]
        if not pairs:
            return
        llm = self.backbones.llm
        scores = llm.continuation_logprobs([p for _, p, _ in pairs], [c for _, _, c in pairs])
        for (i, p, c), s in zip(pairs, scores):
            jobs[i].scores.append(s)
            tokens_in[i] += llm.count_tokens(p + c)

    def _finish(self, job: LlmJob, n_in: int, llm_share: float) -> Answer:
        trace = job.trace
        n_out = sum(g.tokens_out for g in job.generations)
        if job.candidates:
            best = max(range(len(job.candidates)), key=lambda k: (job.scores[k], -k))
            text = job.candidates[best]
            trace["candidates"] = job.candidates
            trace["logprobs"] = job.scores
        else:
            texts = [g.text.strip() for g in job.generations]
            trace["generations"] = texts
            best = 0
            if len(texts) > 1:
                # PICa: the member whose answer has the highest summed token log-probability wins;
                # an empty answer has no tokens to score and never wins.
                it = iter(job.scores)
                full = [next(it) if t else float("-inf") for t in texts]
                best = max(range(len(texts)), key=lambda k: (full[k], -k))
                trace["logprobs"] = [s if s != float("-inf") else None for s in full]
            text = texts[best]
        trace["chosen"] = best
        return Answer(
            text=text,
            latency_s=job.convert_s + llm_share,
            llm_tokens_in=n_in,
            llm_tokens_out=n_out,
            tool_calls=job.tool_calls,
            trace=trace,
        )
