"""The two prompt managers: Visual ChatGPT's ReAct format and MM-REACT's watchword format.

A manager renders the prompt (tool list, format instructions, worked demonstrations, the question),
parses what the LLM wrote into a :class:`Final`, :class:`Call` or :class:`Malformed` step using
plain regular expressions, and appends observations in its own format. It never runs anything:
:class:`Call` carries the tool *name* and its input fields as strings, which the loop validates
against the :class:`~harness.agent_tools.ToolRegistry` before any tool runs.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Union

from harness.agent_tools import IMAGE_PATH_RE, AgentTool, ToolRegistry


@dataclass(frozen=True)
class Final:
    answer: str


@dataclass(frozen=True)
class Call:
    tool: str
    fields: dict[str, str] = field(default_factory=dict)
    raw_input: str = ""


@dataclass(frozen=True)
class Malformed:
    reason: str
    free_text: bool = True  # False when the text attempted an action (never taken as the answer)


Parsed = Union[Final, Call, Malformed]


@dataclass(frozen=True)
class Demo:
    """One worked demonstration: a shot image, its tool call and observation, and the shot's answer."""

    path: str | None
    prompt: str
    tool: AgentTool | None
    observation: str
    answer: str


class PromptFormat(ABC):
    """How one paper's agent talks: the prompt, the stop strings, the parser, the observation form."""

    name: str
    stop: tuple[str, ...]

    @abstractmethod
    def system(self, registry: ToolRegistry) -> str:
        """Tool list and format instructions."""

    @abstractmethod
    def user(self, demos: list[Demo], path: str, prompt: str) -> str:
        """The conversation so far (demonstrations) and the new request about image ``path``."""

    @abstractmethod
    def start(self) -> str:
        """The agent's scratchpad before its first step."""

    @abstractmethod
    def parse(self, generated: str, registry: ToolRegistry, implicit_image: str | None = None) -> Parsed:
        """Read one step's generated text; never executes it.

        ``implicit_image``: the image a request that names none refers to (``None``: such a request
        is malformed). Only the watchword format uses it ("what objects are in this image?")."""

    @abstractmethod
    def kept(self, generated: str, parsed: Parsed) -> str:
        """The part of the generated text that stays in the scratchpad."""

    @abstractmethod
    def observe(self, observation: str) -> str:
        """Scratchpad text after a step: the observation, then the cue for the next step."""

    @abstractmethod
    def prime_tool(self) -> str:
        """Text that opens a tool call; appended to the first turn when the options force one."""

    @abstractmethod
    def force_final(self) -> str:
        """Appended to the scratchpad to make the next generation the final answer."""

    def final_from_forced(self, generated: str) -> str:
        return generated.strip().split("\n", 1)[0].strip()


# ----------------------------------------------------------------------- Visual ChatGPT / ReAct

_REACT_ACTION = re.compile(r"Action\s*:\s*(?P<tool>[^\n]*?)\s*\n+\s*Action\s*Input\s*:\s*(?P<input>[^\n]*)")
_REACT_FINAL = re.compile(r"(?:^|\n)\s*AI\s*:\s*(?P<answer>[^\n]*)")
_THOUGHT = "Thought: Do I need to use a tool?"


class ReActFormat(PromptFormat):
    """Visual ChatGPT (Wu et al., 2023): a LangChain conversational ReAct agent over vision tools.

    Tools are listed as ``> name: description``; images are files named ``image/xxxxxxxx.png``; each
    step continues ``Thought: Do I need to use a tool?`` with either ``Yes / Action / Action Input``
    (then the loop adds ``Observation:``) or ``No / AI: <answer>``.
    """

    name = "react"
    stop = ("\nObservation:", "\nHuman:", "\nNew input:")

    def system(self, registry: ToolRegistry) -> str:
        tools = "\n".join(f"> {t.name}: {t.description}" for t in registry)
        names = ", ".join(t.name for t in registry)
        return (
            "Visual ChatGPT is a language model that helps with questions about images. It cannot see "
            "images itself: each image is a file named like image/xxxxxxxx.png, and Visual ChatGPT must "
            "use tools to learn what an image shows instead of imagining it. It answers briefly.\n\n"
            "TOOLS:\n------\n\nVisual ChatGPT has access to the following tools:\n\n"
            f"{tools}\n\n"
            "To use a tool, use exactly this format:\n\n"
            f"{_THOUGHT} Yes\n"
            f"Action: the tool to use, one of [{names}]\n"
            "Action Input: the input to the tool\n"
            "Observation: the result of the tool\n\n"
            "When you have the answer for the Human, or no tool is needed, you MUST use the format:\n\n"
            f"{_THOUGHT} No\n"
            "AI: [your short answer here]"
        )

    def user(self, demos: list[Demo], path: str, prompt: str) -> str:
        history = "\n".join(self._demo(d) for d in demos)
        head = f"Previous conversation history:\n{history}\n\n" if history else ""
        return (
            f"{head}New input: provide a figure named {path}. Use tools to learn what it shows.\n"
            f"{prompt}"
        )

    @staticmethod
    def _demo(d: Demo) -> str:
        lines = []
        if d.path:
            lines.append(f"Human: provide a figure named {d.path}. Use tools to learn what it shows.")
        lines.append(f"Human: {d.prompt}")
        if d.tool is not None and d.path:
            lines += [
                f"{_THOUGHT} Yes",
                f"Action: {d.tool.name}",
                f"Action Input: {d.path}",
                f"Observation: {d.observation}",
            ]
        lines += [f"{_THOUGHT} No", f"AI: {d.answer}"]
        return "\n".join(lines)

    def start(self) -> str:
        return _THOUGHT

    def parse(self, generated: str, registry: ToolRegistry, implicit_image: str | None = None) -> Parsed:
        # As LangChain's conversational parser: a final "AI:" line wins over an action.
        final = _REACT_FINAL.search(generated)
        if final and not is_placeholder(final.group("answer")):
            return Final(final.group("answer").strip())
        act = _REACT_ACTION.search(generated)
        if act:
            raw = act.group("input").strip().strip("`\"'")
            return Call(act.group("tool").strip(), _split_react_input(raw), raw)
        return Malformed(
            "Invalid format. Write 'Action: <tool name>' and 'Action Input: <image path>' on separate "
            f"lines, or '{_THOUGHT} No' and then 'AI: <answer>'.",
            free_text=not re.search(r"\bAction\s*(?:Input)?\s*:", generated),
        )

    def kept(self, generated: str, parsed: Parsed) -> str:
        if isinstance(parsed, Call):
            act = _REACT_ACTION.search(generated)
            assert act is not None
            return generated[: act.end()].rstrip()
        return generated.rstrip()

    def observe(self, observation: str) -> str:
        return f"\nObservation: {observation}\n{_THOUGHT}"

    def prime_tool(self) -> str:
        return " Yes\nAction:"

    def force_final(self) -> str:
        return " No\nAI:"


def _split_react_input(raw: str) -> dict[str, str]:
    """``image/x.png`` or ``image/x.png, query`` (Visual ChatGPT's comma-separated inputs)."""
    head, sep, rest = raw.partition(",")
    fields = {"image": head.strip()}
    if sep:
        fields["query"] = rest.strip()
    return fields


# ---------------------------------------------------------------------------- MM-REACT watchword

_WATCHWORD = re.compile(r"\bAssistant\s*,\s*(?P<request>.*)", re.IGNORECASE)
_PATH = re.compile(IMAGE_PATH_RE)
_SHOWS = re.compile(
    r"\b(?:does|do|is|are)\b.*?\b(?:show|shows|contain|contains|there)\b\s+(?P<thing>[^?]+)", re.IGNORECASE
)


class WatchwordFormat(PromptFormat):
    """MM-REACT (Yang et al., 2023): the LLM addresses the vision experts with a watchword.

    An AI turn containing ``Assistant, <request> <image path>`` is an action; the request is routed
    to an expert by keywords, and the expert's result comes back as an ``Assistant:`` turn of text.
    An AI turn without the watchword is the final answer.
    """

    name = "watchword"
    stop = ("\n",)

    def system(self, registry: ToolRegistry) -> str:
        tasks = "\n".join(f"Assistant, {t.request} image/xxxxxxxx.png" for t in registry)
        return (
            "You are AI, talking with Human. You cannot see images. Assistant can: any time an image "
            "appears in the conversation, you may ask Assistant about it by writing one line that starts "
            "with 'Assistant,' followed by the request and the image file name. Assistant replies with "
            "a line starting 'Assistant:' that describes the image in text.\n\n"
            f"Requests Assistant understands:\n{tasks}\n\n"
            "EXAMPLE\n"
            "Human: What is on the table? image/0f3a9c21.png\n"
            "AI: Assistant, what objects do you see in this image? image/0f3a9c21.png\n"
            "Assistant: cup (0.84, centre); laptop (0.62, left)\n"
            "AI: a cup and a laptop\n\n"
            "When you know the answer, reply to Human with a short plain answer, without 'Assistant,'."
        )

    def user(self, demos: list[Demo], path: str, prompt: str) -> str:
        history = "\n".join(self._demo(d) for d in demos)
        head = f"{history}\n" if history else ""
        return f"{head}Human: {prompt} {path}"

    @staticmethod
    def _demo(d: Demo) -> str:
        lines = [f"Human: {d.prompt}" + (f" {d.path}" if d.path else "")]
        if d.tool is not None and d.path:
            lines += [f"AI: Assistant, {d.tool.request} {d.path}", f"Assistant: {d.observation}"]
        lines.append(f"AI: {d.answer}")
        return "\n".join(lines)

    def start(self) -> str:
        return "AI:"

    def parse(self, generated: str, registry: ToolRegistry, implicit_image: str | None = None) -> Parsed:
        line = generated.strip().split("\n", 1)[0].strip()
        if re.match(r"(?:Assistant|Human)\s*:", line, re.IGNORECASE):
            return Malformed(
                "Only Assistant and Human write those turns. Ask with 'Assistant, <request> <image>' "
                "or answer Human.",
                False,
            )
        m = _WATCHWORD.search(line)
        if not m:
            if not line or is_placeholder(line):
                return Malformed("Empty reply. Answer Human, or ask Assistant.")
            return Final(line)
        request = m.group("request").strip()
        path = _PATH.search(request)
        if not path and implicit_image is None:
            return Malformed(
                "Assistant needs the image file name, e.g. 'Assistant, <request> image/xxxxxxxx.png'.", False
            )
        text = (request[: path.start()] + request[path.end() :]).strip() if path else request
        tool = registry.route(text)
        if tool is None:
            known = "; ".join(t.request for t in registry)
            return Malformed(f"Assistant cannot handle that request. Assistant understands: {known}", False)
        fields = {"image": path.group(0) if path else str(implicit_image)}
        if tool.takes_query:
            shows = _SHOWS.search(text)
            if shows:
                fields["query"] = shows.group("thing").strip().rstrip("?. ")
        return Call(tool.name, fields, request)

    def kept(self, generated: str, parsed: Parsed) -> str:
        return " " + generated.strip().split("\n", 1)[0].strip()

    def observe(self, observation: str) -> str:
        return f"\nAssistant: {observation}\nAI:"

    def prime_tool(self) -> str:
        return " Assistant,"

    def force_final(self) -> str:
        return ""

    def final_from_forced(self, generated: str) -> str:
        line = super().final_from_forced(generated)
        m = _WATCHWORD.search(line)
        return line[: m.start()].strip() if m else line


def is_placeholder(answer: str) -> bool:
    """An answer that copies a template slot such as ``[your response here]`` is no answer."""
    a = answer.strip()
    return bool(re.fullmatch(r"\[[^\]]*\]\.?", a)) or "your short answer" in a.lower()


FORMATS: dict[str, type[PromptFormat]] = {"react": ReActFormat, "watchword": WatchwordFormat}
