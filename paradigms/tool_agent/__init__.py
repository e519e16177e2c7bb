"""Paradigm 1, tool agents: the LLM decides which vision tools to call and answers from their text.

Two variants share one loop (:mod:`paradigms.tool_agent.loop`) and differ only in how the agent
talks (:mod:`paradigms.tool_agent.formats`): ``visual_chatgpt`` (ReAct Thought/Action/Observation)
and ``mm_react`` (the ``Assistant, <request> <image>`` watchword). See docs/paradigms/tool_agent.md.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from pydantic import Field

from harness.agent_tools import IMAGE_UNDERSTANDING, AgentToolsOptions, ToolRegistry, build_registry
from harness.interface import Answer, Paradigm, Request
from harness.registry import register_paradigm
from paradigms.tool_agent.formats import PromptFormat, ReActFormat, WatchwordFormat
from paradigms.tool_agent.loop import AgentLoop, LoopOptions


class ToolAgentOptions(LoopOptions):
    """Loop budgets plus which tools the agent gets."""

    tools: tuple[str, ...] | None = None  # agent tool names to offer (default: all available)
    scorer_threshold: float = 0.3  # similarity at which "Check Image Shows" says yes (uncalibrated)
    max_observation_chars: int = Field(400, ge=50)


class VisualChatGPTOptions(ToolAgentOptions):
    # The upload turn carries the first configured captioner's (or the oracle's) caption, as
    # Visual ChatGPT's BLIP caption; off, or without a captioner: the file name only.
    upload_caption: bool = True


class MMReactOptions(ToolAgentOptions):
    # MM-REACT's default expert: one call returning caption, tags, objects, faces and OCR.
    image_understanding: bool = True


class _ToolAgent(Paradigm):
    family = "tool_agent"
    Options: ClassVar[type[ToolAgentOptions]] = ToolAgentOptions

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self.registry()  # unknown tool names stop the run here, before any compute

    def registry(self) -> ToolRegistry:
        o = self.options
        return build_registry(
            self.backbones,
            AgentToolsOptions(
                tools=o.tools, scorer_threshold=o.scorer_threshold, max_observation_chars=o.max_observation_chars,
                image_understanding=bool(getattr(o, "image_understanding", False)),
            ),
        )

    def make_format(self, registry: ToolRegistry) -> PromptFormat:
        raise NotImplementedError

    def perception_setup(self) -> dict[str, str]:
        """How this agent perceives images, for the run's parameters (oracle vs real in the report)."""
        reg = self.registry()
        experts = getattr(self.backbones, "experts", None)
        parts, oracle, configured = [], False, False
        for t in reg:
            e = experts.get(t.name) if experts is not None and t.name in experts else None
            if e is not None:
                configured, oracle = True, oracle or e.oracle
                parts.append(f"{t.name}={e.kind}:{getattr(e.spec, 'model', None) or getattr(e.spec, 'source', '')}")
            else:
                parts.append(f"{t.name}=packaged")
        if IMAGE_UNDERSTANDING in reg and experts is not None:  # the composite reads the captioner/oracle too
            oracle = oracle or any(e.oracle for e in experts.of_kind("reference_captions"))
        return {"perception": "oracle" if oracle else ("experts" if configured else "packaged"), "experts": "; ".join(parts)}

    def upload_tool(self, registry: ToolRegistry) -> str | None:
        return None

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        loop_opts = LoopOptions(**{k: getattr(self.options, k) for k in LoopOptions.model_fields})
        reg = self.registry()
        loop = AgentLoop(self.backbones.llm, reg, self.make_format(reg), loop_opts, self.upload_tool(reg))
        return loop.run(requests)


@register_paradigm
class VisualChatGPT(_ToolAgent):
    variant = "visual_chatgpt"
    description = "Visual ChatGPT-style ReAct agent (Thought/Action/Action Input/Observation) over vision tools"
    Options = VisualChatGPTOptions
    uses = ("llm", "tools", "scorer")

    def make_format(self, registry: ToolRegistry) -> PromptFormat:
        return ReActFormat()

    def upload_tool(self, registry: ToolRegistry) -> str | None:
        """The first configured captioner (or oracle) that is among the agent's tools."""
        if not getattr(self.options, "upload_caption", True):
            return None
        experts = getattr(self.backbones, "experts", None)
        for e in experts.of_kind("captioner", "reference_captions") if experts is not None else ():
            if e.name in registry:
                return e.name
        return None


@register_paradigm
class MMReact(_ToolAgent):
    variant = "mm_react"
    description = "MM-REACT-style agent: the LLM asks vision experts with 'Assistant, <request> <image>'"
    Options = MMReactOptions
    uses = ("llm", "tools", "scorer")

    def make_format(self, registry: ToolRegistry) -> PromptFormat:
        fallback = IMAGE_UNDERSTANDING if IMAGE_UNDERSTANDING in registry else None
        return WatchwordFormat(fallback)
