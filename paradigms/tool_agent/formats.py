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
    caption: str | None = None  # the upload turn's description of the shot image (Visual ChatGPT)


class PromptFormat(ABC):
    """How one paper's agent talks: the prompt, the stop strings, the parser, the observation form."""

    name: str
    stop: tuple[str, ...]

    @abstractmethod
    def system(self, registry: ToolRegistry) -> str:
        """The prompt template with the tool list filled in ({chat_history}, {input}, {agent_scratchpad} open)."""

    @abstractmethod
    def render(
        self, registry: ToolRegistry, demos: list[Demo], path: str, prompt: str, caption: str | None
    ) -> tuple[str, str]:
        """The prompt before and after the scratchpad, for the request ``prompt`` about image ``path``
        (``caption``: the upload turn's description, Visual ChatGPT only)."""

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

_THOUGHT = "Thought: Do I need to use a tool?"
#: LangChain's conversational-agent output parser: "Action: x" then (after any newlines) "Action Input: y".
_LC_ACTION = re.compile(r"Action: (.*?)[\n]*Action Input: (.*)", re.DOTALL)

VCG_PREFIX = """Visual ChatGPT is designed to help with a wide range of text and visual tasks, from answering simple questions to giving in-depth explanations and discussions on a wide range of topics. Visual ChatGPT generates human-like text from the input it receives, so it can hold natural-sounding conversations and give responses that are coherent and relevant to the topic at hand.

Visual ChatGPT can process and understand large amounts of text and images. As a language model, Visual ChatGPT cannot read images directly, but it has a list of tools to carry out different visual tasks. Every image has a file name of the form "image/xxx.png", and Visual ChatGPT can call different tools to understand pictures indirectly. When talking about images, Visual ChatGPT is very strict about the file name and never makes up files that do not exist. When it uses tools to generate new image files, Visual ChatGPT also knows that the image may not be what the user asked for, and uses other visual question answering or description tools to look at the real image. Visual ChatGPT can use tools in sequence, and is faithful to the tools' observations instead of faking the image content or the image file name. It remembers to give the file name from the last tool observation if a new image was generated.

Human may give Visual ChatGPT new figures with a description. The description helps Visual ChatGPT understand the image, but Visual ChatGPT should use tools to carry out the following tasks instead of imagining from the description.

Overall, Visual ChatGPT is a powerful visual dialogue assistant that can help with a wide range of tasks and give valuable insights and information on a wide range of topics.


TOOLS:
------

Visual ChatGPT has access to the following tools:"""

VCG_FORMAT = """To use a tool, please use this format:

```
Thought: Do I need to use a tool? Yes
Action: the action to take, should be one of [{tool_names}]
Action Input: the input to the action
Observation: the result of the action
```

When you have a response to give the Human, or if you do not need to use a tool, you MUST use this format:

```
Thought: Do I need to use a tool? No
AI: [your response here]
```"""

VCG_SUFFIX = """You are very strict about file name correctness and will never fake a file name that does not exist.
You will remember to give the image file name faithfully if the last tool observation provided it.

Begin!

Previous conversation history:
{chat_history}

New input: {input}
Since Visual ChatGPT is a text language model, Visual ChatGPT must use tools to observe images instead of imagination.
The thoughts and observations are only visible to Visual ChatGPT; Visual ChatGPT should remember to repeat important information in the final response for Human.
Thought: Do I need to use a tool? {agent_scratchpad} Let's think step by step.
"""

VCG_UPLOAD = (
    "provide a figure named {path}.{description} This information helps you understand this image, but you should "
    "use tools to carry out the following tasks instead of imagining from my description. If you understand, "
    'say "Received".'
)
VCG_RECEIVED = "Received."


def fill_template(template: str, chat_history: str, input: str) -> tuple[str, str]:  # noqa: A002
    """The template's text before and after ``{agent_scratchpad}``, with ``{chat_history}`` and
    ``{input}`` filled in one pass (so braces inside the filled text are never read as slots)."""
    head, _, tail = template.partition("{agent_scratchpad}")
    values = {"chat_history": chat_history, "input": input}
    return re.sub(r"\{(chat_history|input)\}", lambda m: values[m.group(1)], head), tail


class ReActFormat(PromptFormat):
    """Visual ChatGPT (Wu et al., 2023): LangChain's conversational ReAct agent over vision tools.

    The prompt is LangChain's ``"\\n\\n".join([prefix, tools, format_instructions, suffix])`` with
    tools listed as ``> name: description``; the conversation history holds the upload turn of each
    image (file name, the captioner's caption when one is configured, the AI's "Received.") and the
    earlier Human/AI exchanges; the scratchpad sits in the suffix's last line, before
    "Let's think step by step.". Parsing follows LangChain's conversational output parser.
    """

    name = "react"
    stop = ("\nObservation:",)

    def system(self, registry: ToolRegistry) -> str:
        tools = "\n".join(f"> {t.name}: {t.description}" for t in registry)
        names = ", ".join(t.name for t in registry)
        return "\n\n".join([VCG_PREFIX, tools, VCG_FORMAT.replace("{tool_names}", names), VCG_SUFFIX])

    @staticmethod
    def upload_turn(path: str, caption: str | None) -> str:
        desc = f" The description is: {caption.strip().rstrip('.')}." if caption and caption.strip() else ""
        return f"Human: {VCG_UPLOAD.format(path=path, description=desc)}\nAI: {VCG_RECEIVED}"

    def history(self, demos: list[Demo], path: str, caption: str | None) -> str:
        turns = [self._demo(d) for d in demos]
        turns.append(self.upload_turn(path, caption))
        return "\n".join(turns)

    def _demo(self, d: Demo) -> str:
        lines = [self.upload_turn(d.path, d.caption)] if d.path else []
        lines.append(f"Human: {d.prompt}")
        if d.tool is not None and d.path:  # a worked tool call (harness option shot_tool; not in the paper)
            lines += [f"{_THOUGHT} Yes", f"Action: {d.tool.name}", f"Action Input: {d.path}",
                      f"Observation: {d.observation}", f"{_THOUGHT} No"]
        lines.append(f"AI: {d.answer}")
        return "\n".join(lines)

    def render(self, registry: ToolRegistry, demos: list[Demo], path: str, prompt: str, caption: str | None) -> tuple[str, str]:
        return fill_template(self.system(registry), self.history(demos, path, caption), prompt)

    def start(self) -> str:
        return ""

    def parse(self, generated: str, registry: ToolRegistry, implicit_image: str | None = None) -> Parsed:
        # LangChain's ConvoOutputParser: any "AI:" makes the text after the last one the answer.
        if "AI:" in generated:
            answer = generated.split("AI:")[-1].strip()
            if answer and not is_placeholder(answer.split("\n", 1)[0]):
                return Final(answer)
        act = _LC_ACTION.search(generated)
        if act:
            raw = act.group(2).strip(" ").strip('"')
            return Call(act.group(1).strip(), _split_react_input(raw), raw)
        return Malformed(
            f"Could not parse LLM output. Write 'Action: <tool name>' and 'Action Input: <image path>', or "
            f"'{_THOUGHT} No' and then 'AI: <answer>'.",
            free_text=not re.search(r"\bAction\s*(?:Input)?\s*:", generated),
        )

    def kept(self, generated: str, parsed: Parsed) -> str:
        return generated.strip()

    def observe(self, observation: str) -> str:
        return f"\nObservation: {observation}\nThought:"

    def prime_tool(self) -> str:
        return f"{_THOUGHT} Yes\nAction:"

    def force_final(self) -> str:
        return f"{_THOUGHT} No\nAI:"


def _split_react_input(raw: str) -> dict[str, str]:
    """``image/x.png`` or ``image/x.png, query`` (Visual ChatGPT's comma-separated inputs)."""
    first = raw.strip().split("\n", 1)[0]
    head, sep, rest = first.partition(",")
    fields = {"image": head.strip().strip("`'\"")}
    if sep:
        fields["query"] = rest.strip().strip("`'\"")
    return fields


# ---------------------------------------------------------------------------- MM-REACT watchword

_PATH = re.compile(IMAGE_PATH_RE)
_SHOWS = re.compile(
    r"\b(?:does|do|is|are)\b.*?\b(?:show|shows|contain|contains|there)\b\s+(?P<thing>[^?]+)", re.IGNORECASE
)
_WATCHWORD = "Assistant,"

MMREACT_PREFIX = """Human: Hey AI!
My name is Human.
Let me introduce you to Assistant. He is great at understanding what is going on in any image.
Any time there is an image in our conversation that you want to know about (objects, description, text, OCR, people, faces), you can ask Assistant by addressing him.
Make sure to give Assistant the most concise task that Assistant can handle.

For example:
AI: This is an image. Assistant, what objects do you see in this image? image/5c1e0a9d.png
Assistant: This is an image (640 x 427) with description two dogs playing with a ball on the grass.

List of object descriptions, and their location in this image:
dog 32, 120, 298, 410
dog 330, 98, 602, 415
sports ball 280, 300, 340, 360

List of object tags seen in this image:
dog
grass
outdoor

In this example 32, 120 is the left top coordinate of the first dog, and 298, 410 its right bottom coordinate
In this example 640 427 is the width height dimension of the image

For example:
Human: What is written on the sign? image/8b7f3e21.png
AI: This is an image that may contain text. Assistant, what OCR text do you see in this image? image/8b7f3e21.png
Assistant: This is an image (500 x 375)

List of texts (words) seen in this image:
STOP
ALL WAY
AI: The sign says STOP, ALL WAY.

These are the tasks that Assistant can handle for an image: {tasks}
If the task does not fit any of the above, make sure the question has the word objects in it.
For example, to ask about an image without any description, make sure the question has the word objects in it.
For example, to ask about an image that needs OCR (text, sign, label, paper, banknote in its object tags), make sure the question has the word OCR in it.
For example, to ask about the people in an image, make sure the question has the word faces in it.

For example:
Human: How many people are in this picture? image/0d44a6b2.png
AI: This is an image. Assistant, what objects do you see in this image? image/0d44a6b2.png
Assistant: This is an image (800 x 600) with description a group of people standing on a beach.

List of object descriptions, and their location in this image:
person 40, 200, 180, 590
person 210, 180, 350, 598
person 400, 220, 520, 580

List of people faces, and their location in this image:
face 80, 210, 130, 270
face 250, 190, 300, 250
AI: There are three people in this picture.
AI: 3"""

MMREACT_SUFFIX = """

Our Previous conversation history:
{chat_history}

New input:
{input}
{agent_scratchpad}"""


class WatchwordFormat(PromptFormat):
    """MM-REACT (Yang et al., 2023): the LLM addresses the vision experts with the watchword ``Assistant,``.

    An AI turn may span several lines (reasoning, then the request); the last ``Assistant,`` in it
    is the action, its last whitespace-separated token the image path, and the request is routed
    by keywords (OCR, faces, ...) and otherwise to the image-understanding expert, as in the
    authors' LangChain fork. A turn without the watchword is the final answer (after its last
    ``AI:``). The expert's reply comes back as an ``Assistant:`` turn; the whole turn, reasoning
    included, stays in the scratchpad.
    """

    name = "watchword"
    stop = ("\nAssistant: ", "\nHuman:", "\nFor example:", "\nNew input:")

    def __init__(self, fallback_tool: str | None = None) -> None:
        self.fallback_tool = fallback_tool  # where requests no keyword routes go (MM-REACT: image understanding)

    def system(self, registry: ToolRegistry) -> str:
        tasks = ", ".join(t.name for t in registry)
        return "\n\n".join([MMREACT_PREFIX.replace("{tasks}", tasks), MMREACT_SUFFIX])

    def render(self, registry: ToolRegistry, demos: list[Demo], path: str, prompt: str, caption: str | None) -> tuple[str, str]:
        history = "\n".join(self._demo(d) for d in demos)
        return fill_template(self.system(registry), history, f"{prompt} {path}")

    @staticmethod
    def _demo(d: Demo) -> str:
        lines = [f"Human: {d.prompt}" + (f" {d.path}" if d.path else "")]
        if d.tool is not None and d.path:
            lines += [f"AI: This is an image. Assistant, {d.tool.request} {d.path}", f"Assistant: {d.observation}"]
        lines.append(f"AI: {d.answer}")
        return "\n".join(lines)

    def start(self) -> str:
        return ""

    def parse(self, generated: str, registry: ToolRegistry, implicit_image: str | None = None) -> Parsed:
        text = generated.strip()
        if re.match(r"(?:Assistant|Human)\s*:", text, re.IGNORECASE):  # not in MM-REACT: see the docs
            return Malformed(
                "Only Assistant and Human write those turns. Ask with 'Assistant, <request> <image>' "
                "or answer Human.",
                False,
            )
        idx = text.rfind(_WATCHWORD)
        if idx < 0:
            answer = text.split("AI:")[-1].strip() if "AI:" in text else text
            if not answer or is_placeholder(answer.split("\n", 1)[0]):
                return Malformed("Empty reply. Answer Human, or ask Assistant.")
            return Final(answer)
        request = text[idx + len(_WATCHWORD):].strip().split("\n", 1)[0].strip()
        path = _PATH.search(request)
        if not path and implicit_image is None:
            return Malformed(
                "Assistant needs the image file name, e.g. 'Assistant, <request> image/xxxxxxxx.png'.", False
            )
        words = (request[: path.start()] + request[path.end():]).strip() if path else request
        tool = registry.route(words, self.fallback_tool)
        if tool is None:
            known = "; ".join(t.request for t in registry)
            return Malformed(f"Assistant cannot handle that request. Assistant understands: {known}", False)
        fields = {"image": path.group(0) if path else str(implicit_image)}
        if tool.takes_query:
            shows = _SHOWS.search(words)
            q = shows.group("thing").strip().rstrip("?. ") if shows else words.rstrip()
            fields["query"] = _strip_request(q)
        return Call(tool.name, fields, request)

    def kept(self, generated: str, parsed: Parsed) -> str:
        return generated.rstrip()

    def observe(self, observation: str) -> str:
        return f"\nAssistant: {observation}\nAI:"

    def prime_tool(self) -> str:
        return "AI: This is an image. Assistant,"

    def force_final(self) -> str:
        return ""  # the scratchpad already ends with the "AI:" cue

    def final_from_forced(self, generated: str) -> str:
        line = super().final_from_forced(generated)
        idx = line.find(_WATCHWORD)
        return line[:idx].strip() if idx >= 0 else line


def _strip_request(q: str) -> str:
    """The question/object names of a routed request, without the routing words."""
    q = re.sub(r"^(?:answer this question about the image|question)\s*:\s*", "", q.strip(), flags=re.I)
    q = re.sub(r"^(?:find|locate|look for)\s+", "", q, flags=re.I)
    return re.sub(r"\s+in this image\W*$", "", q).strip() or q


def is_placeholder(answer: str) -> bool:
    """An answer that copies a template slot such as ``[your response here]`` is no answer."""
    a = answer.strip()
    return bool(re.fullmatch(r"\[[^\]]*\]\.?", a)) or "your short answer" in a.lower()
