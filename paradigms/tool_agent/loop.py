"""The agent loop: think -> act -> observe, with all samples at the same step sharing one LLM call.

Each sample is an :class:`Episode` whose prompt is the format's system text, worked
demonstrations and question, plus a growing scratchpad. Per round, every unfinished episode that
still has budget is stepped in one batched ``generate`` call; the others get a forced final turn.
An action is parsed by the format, validated by the tool registry and only then run; bad actions
and tool failures come back to the agent as observations, never as exceptions.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from pydantic import Field

from harness.agent_tools import ImageRef, ToolInputError, ToolRegistry, image_path
from harness.config import Strict
from harness.interface import Answer, Request
from harness.models.llm import Generation, GenerationSettings
from paradigms.tool_agent.formats import Call, Demo, Final, Malformed, PromptFormat, is_placeholder


class AgentLLM(Protocol):
    """The part of :class:`~harness.models.llm.LanguageModel` the agent uses (tests script it)."""

    def chat_prompt(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings = ..., *, batch_size: int = 8
    ) -> list[Generation]: ...


class LoopOptions(Strict):
    """Budgets of one agent episode (all per sample)."""

    max_steps: int = Field(15, ge=1, le=20)  # LLM turns that may call tools (LangChain's max_iterations)
    step_tokens: int = Field(48, ge=4, le=512)  # new tokens per turn
    token_budget: int = Field(1024, ge=8)  # generated tokens over all turns, final answer excluded (15 x 48 fit)
    max_prompt_tokens: int = Field(4096, ge=64)  # context the prompt may fill
    max_parse_errors: int = Field(1, ge=0)  # corrective observations before free text counts as the answer
    # Harness aid (off = the papers' memory, which keeps only Human/AI turns): show this tool's call
    # on each demonstration image as a worked transcript.
    shot_tool: str | None = None
    # Small-model aid (off = the papers' behaviour): open the first turn with the format's tool-call
    # words ("Yes\nAction:" / "Assistant,") so the model picks a tool instead of guessing blind.
    force_first_tool: bool = False
    # A watchword request naming no file ("Assistant, what objects are in this image?") refers to the
    # sample's image; off: it is malformed and gets a corrective observation.
    implicit_image: bool = True
    # Send the whole rendered prompt as one user turn of the LLM's chat template (what LangChain does
    # with a chat model); off: the raw completion prompt, as the papers sent to text-davinci-003.
    chat_template: bool = True


@dataclass
class Episode:
    """One sample's state through the loop."""

    request: Request
    head: str
    scratch: str
    images: dict[str, ImageRef]
    tail: str = ""
    forced: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    demos: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    shot_tool_calls: int = 0
    tools_used: list[str] = field(default_factory=list)
    parse_errors: int = 0
    tool_failures: int = 0  # tool calls (shown, uploaded or the agent's own) that raised
    steps: int = 0
    latency: float = 0.0
    answer: str | None = None
    source: str = ""
    budget_exhausted: bool = False
    error: str | None = None

    @property
    def text(self) -> str:
        """The rendered prompt with the scratchpad in its slot (before any chat wrapping)."""
        return self.head + self.scratch + self.tail

    @property
    def open(self) -> bool:
        return self.answer is None and self.error is None


class AgentLoop:
    """Runs a batch of requests through one prompt format over one tool registry."""

    def __init__(
        self, llm: AgentLLM, registry: ToolRegistry, fmt: PromptFormat, options: LoopOptions,
        upload_tool: str | None = None,
    ) -> None:
        self.llm = llm
        self.registry = registry
        self.fmt = fmt
        self.options = options
        self.upload_tool = upload_tool  # Visual ChatGPT: the captioner whose caption the upload turn carries

    def prompt(self, e: "Episode", extra: str = "") -> str:
        """What the LLM is sent: the rendered text (chat-wrapped or raw) and ``extra`` opening its reply."""
        if self.options.chat_template:
            return self.llm.chat_prompt(e.text, assistant_prefix=e.forced + extra)
        return e.text + e.forced + extra

    # ------------------------------------------------------------------ public
    def run(self, requests: Sequence[Request]) -> list[Answer]:
        episodes: list[Episode | Answer] = [self._start(r) for r in requests]
        live = [e for e in episodes if isinstance(e, Episode)]
        while any(e.open for e in live):
            stepping, forcing = [], []
            for e in (e for e in live if e.open):
                (forcing if self._out_of_budget(e) else stepping).append(e)
            if stepping:
                self._step(stepping)
            if forcing:
                self._force(forcing)
        return [self._finish(e) if isinstance(e, Episode) else e for e in episodes]

    # ------------------------------------------------------------------- setup
    def _start(self, req: Request) -> Episode | Answer:
        if req.image is None:
            return Answer.failed("no image", sample_id=req.sample_id)
        t0 = time.perf_counter()
        path = image_path(req.image_id)
        ref = ImageRef(path, req.image_id, req.image, tuple(getattr(req, "withheld", ())))
        ep = Episode(req, "", self.fmt.start(), {path: ref})
        demos = [self._demo(ep, s) for s in req.shots]
        caption = self._upload_caption(ep, ref)
        ep.head, ep.tail = self.fmt.render(self.registry, demos, path, req.prompt, caption)
        ep.latency += time.perf_counter() - t0
        n = self.llm.count_tokens(self.prompt(ep))
        if n + self.options.step_tokens > self.options.max_prompt_tokens:
            return Answer.failed(
                f"prompt too long: {n} tokens + {self.options.step_tokens} > {self.options.max_prompt_tokens}",
                sample_id=req.sample_id,
            )
        return ep

    def _upload_caption(self, ep: Episode, ref: ImageRef) -> str | None:
        """The configured captioner's caption for the upload turn (None without one); failures are shown."""
        if not self.upload_tool or self.upload_tool not in self.registry:
            return None
        tool = self.registry.get(self.upload_tool)
        try:
            text = self.registry.run(tool, tool.args(image=ref.path), {ref.path: ref})
        except Exception as exc:  # noqa: BLE001 - shown to the agent as the live tool would be
            text = f"{tool.name} failed: {type(exc).__name__}: {exc}"
            ep.tool_failures += 1
        ep.shot_tool_calls += 1
        ep.uploads.append({"image": ref.path, "tool": tool.name, "caption": text})
        return text

    def _demo(self, ep: Episode, shot: Any) -> Demo:
        """A shot becomes an earlier exchange (its upload turn, question and answer); with ``shot_tool``
        also a worked tool call on its image."""
        if shot.image is None:
            ep.demos.append({"sample_id": shot.sample_id, "tool": None})
            return Demo(None, shot.prompt, None, "", shot.answer)
        path = image_path(shot.image_id)
        ref = ImageRef(path, shot.image_id, shot.image)
        caption = self._upload_caption(ep, ref)
        if not self.options.shot_tool or self.options.shot_tool not in self.registry:
            ep.demos.append({"sample_id": shot.sample_id, "path": path, "tool": None})
            return Demo(path, shot.prompt, None, "", shot.answer, caption)
        tool = self.registry.get(self.options.shot_tool)
        try:
            obs = self.registry.run(tool, tool.args(image=path), {path: ref})
        except Exception as exc:  # a failing tool is shown as such, as it would be live
            obs = f"{tool.name} failed: {type(exc).__name__}: {exc}"
            ep.tool_failures += 1
        ep.shot_tool_calls += 1
        ep.demos.append({"sample_id": shot.sample_id, "path": path, "tool": tool.name, "observation": obs})
        return Demo(path, shot.prompt, tool, obs, shot.answer, caption)

    # -------------------------------------------------------------------- steps
    def _out_of_budget(self, e: Episode) -> bool:
        o = self.options
        return (
            e.steps >= o.max_steps
            or e.tokens_out + o.step_tokens > o.token_budget
            or self.llm.count_tokens(self.prompt(e)) + o.step_tokens > o.max_prompt_tokens
        )

    def _generate(self, eps: list[Episode], prompts: list[str], settings: GenerationSettings) -> list[Generation]:
        t0 = time.perf_counter()
        gens = self.llm.generate(prompts, settings, batch_size=8)
        share = (time.perf_counter() - t0) / len(eps)
        for e, g in zip(eps, gens):
            e.latency += share
            e.tokens_in += g.tokens_in
            e.tokens_out += g.tokens_out
        return gens

    def _step(self, eps: list[Episode]) -> None:
        settings = GenerationSettings(max_new_tokens=self.options.step_tokens, stop=self.fmt.stop, greedy=True)
        primers = [self._primer(e) for e in eps]
        prompts = [self.prompt(e, p) for e, p in zip(eps, primers)]
        for e, p, g in zip(eps, primers, self._generate(eps, prompts, settings)):
            t0 = time.perf_counter()
            self._handle(e, p + g.text)
            e.latency += time.perf_counter() - t0

    def _primer(self, e: Episode) -> str:
        return self.fmt.prime_tool() if self.options.force_first_tool and e.steps == 0 else ""

    def _handle(self, e: Episode, text: str) -> None:
        e.steps += 1
        implicit = next(iter(e.images)) if self.options.implicit_image else None
        parsed = self.fmt.parse(text, self.registry, implicit)
        entry: dict[str, Any] = {"step": e.steps, "generated": text}
        e.transcript.append(entry)
        if isinstance(parsed, Final) and parsed.answer:
            entry["kind"] = "final"
            self._set_answer(e, parsed.answer, "final")
            return
        if isinstance(parsed, Call):
            entry.update(kind="action", tool=parsed.tool, input=parsed.raw_input)
            obs = self._call(e, parsed, entry)
        else:
            reason = parsed.reason if isinstance(parsed, Malformed) else "Empty answer."
            free = parsed.free_text if isinstance(parsed, Malformed) else True
            entry.update(kind="malformed", error=reason)
            e.parse_errors += 1
            if free and e.parse_errors > self.options.max_parse_errors:
                fallback = free_text_answer(text)
                if fallback:
                    self._set_answer(e, fallback, "free_text")
                    return
            obs = reason
        entry["observation"] = obs
        e.scratch += self.fmt.kept(text, parsed) + self.fmt.observe(obs)

    def _call(self, e: Episode, call: Call, entry: dict[str, Any]) -> str:
        """Validate, then run; every failure becomes the observation the agent reads next."""
        try:
            tool, args = self.registry.validate(call.tool, call.fields)
        except ToolInputError as exc:
            e.parse_errors += 1
            entry["error"] = str(exc)
            return str(exc)
        e.tool_calls += 1
        e.tools_used.append(tool.name)
        try:
            return self.registry.run(tool, args, e.images)
        except ToolInputError as exc:
            e.parse_errors += 1
            entry["error"] = str(exc)
            return str(exc)
        except Exception as exc:  # a broken tool must not end the sample
            msg = f"{tool.name} failed: {type(exc).__name__}: {exc}"
            entry["error"] = msg
            e.tool_failures += 1
            return msg

    def _force(self, eps: list[Episode]) -> None:
        """Budget spent: one last turn that must be the answer (grouped by answer length)."""
        for e in eps:
            e.budget_exhausted = True
            e.forced = self.fmt.force_final()
        groups: dict[int, list[Episode]] = {}
        for e in eps:
            groups.setdefault(e.request.max_new_tokens, []).append(e)
        for n, group in sorted(groups.items()):
            ok = []
            for e in group:
                if self.llm.count_tokens(self.prompt(e)) + n > self.options.max_prompt_tokens:
                    e.error = "prompt too long for the final answer"
                else:
                    ok.append(e)
            if not ok:
                continue
            settings = GenerationSettings(max_new_tokens=n, stop=("\n",), greedy=True)
            for e, g in zip(ok, self._generate(ok, [self.prompt(e) for e in ok], settings)):
                e.transcript.append({"step": e.steps + 1, "kind": "forced_final", "generated": g.text})
                text = self.fmt.final_from_forced(g.text)
                self._set_answer(e, "" if is_placeholder(text) else text, "forced_final")

    def _set_answer(self, e: Episode, text: str, source: str) -> None:
        e.answer = truncate_tokens(first_line(text), e.request.max_new_tokens, self.llm.count_tokens)
        e.source = source
        e.transcript[-1]["answer"] = e.answer

    # ------------------------------------------------------------------- result
    def _finish(self, e: Episode) -> Answer:
        trace: dict[str, Any] = {
            "sample_id": e.request.sample_id,
            "format": self.fmt.name,
            "image": next(iter(e.images)),
            "prompt": e.head + e.tail,
            "scratchpad": e.scratch,
            "uploads": e.uploads,
            "transcript": e.transcript,
            "demos": e.demos,
            "tool_calls": e.tool_calls,
            "shot_tool_calls": e.shot_tool_calls,
            "tools_used": sorted(set(e.tools_used)),
            "parse_errors": e.parse_errors,
            "tool_failures": e.tool_failures,
            "steps": e.steps,
            "budget_exhausted": e.budget_exhausted,
            "answer_source": e.source,
        }
        counters = {"parse_errors": e.parse_errors, "tool_failures": e.tool_failures,
                    "budget_exhausted": e.budget_exhausted}
        if e.error is not None:
            failed = Answer.failed(e.error, **trace)
            failed.llm_tokens_in, failed.llm_tokens_out = e.tokens_in, e.tokens_out
            return dataclasses.replace(failed, **counters)
        return Answer(
            text=e.answer or "",
            latency_s=e.latency,
            llm_tokens_in=e.tokens_in,
            llm_tokens_out=e.tokens_out,
            tool_calls=e.tool_calls + e.shot_tool_calls,
            trace=trace,
            **counters,
        )


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def truncate_tokens(text: str, limit: int, count: Any) -> str:
    """The longest whole-word prefix of ``text`` within ``limit`` tokens (short VQA answers)."""
    words = text.split()
    while words and count(" ".join(words)) > limit:
        words.pop()
    return " ".join(words)


_LEAD = re.compile(r"^(?:(?:thought|ai|answer)\s*:\s*|do i need to use a tool\?\s*|(?:yes|no)\b[\s.,!:]*)+", re.I)


def free_text_answer(text: str) -> str:
    """What a model that ignored the format meant as its answer: its first line, format words removed."""
    for line in text.split("\n"):
        line = _LEAD.sub("", line.strip()).strip()
        if line and not re.match(r"^(?:action|observation)\b", line, re.I) and not is_placeholder(line):
            return line
    return ""
