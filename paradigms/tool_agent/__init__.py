"""Paradigm 1, tool agents: the LLM decides which vision tools to call and answers from their text.

Two variants share one loop (:mod:`paradigms.tool_agent.loop`) and differ only in how the agent
talks (:mod:`paradigms.tool_agent.formats`): ``visual_chatgpt`` (ReAct Thought/Action/Observation)
and ``mm_react`` (the ``Assistant, <request> <image>`` watchword). See docs/paradigms/tool_agent.md.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from pydantic import Field

from harness.agent_tools import AgentToolsOptions, ToolRegistry, build_registry
from harness.interface import Answer, Paradigm, Request
from harness.registry import register_paradigm
from paradigms.tool_agent.formats import PromptFormat, ReActFormat, WatchwordFormat
from paradigms.tool_agent.loop import AgentLoop, LoopOptions


class ToolAgentOptions(LoopOptions):
    """Loop budgets plus which tools the agent gets."""

    tools: tuple[str, ...] | None = None  # agent tool names to offer (default: all available)
    scorer_threshold: float = 0.3  # similarity at which "Check Image Shows" says yes (uncalibrated)
    max_observation_chars: int = Field(400, ge=50)


class _ToolAgent(Paradigm):
    family = "tool_agent"
    uses = ("llm", "tools", "scorer")
    Options = ToolAgentOptions
    format_cls: ClassVar[type[PromptFormat]]

    def registry(self) -> ToolRegistry:
        o = self.options
        return build_registry(
            self.backbones,
            AgentToolsOptions(tools=o.tools, scorer_threshold=o.scorer_threshold, max_observation_chars=o.max_observation_chars),
        )

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        loop_opts = LoopOptions(**{k: getattr(self.options, k) for k in LoopOptions.model_fields})
        loop = AgentLoop(self.backbones.llm, self.registry(), self.format_cls(), loop_opts)
        return loop.run(requests)


@register_paradigm
class VisualChatGPT(_ToolAgent):
    variant = "visual_chatgpt"
    description = "Visual ChatGPT-style ReAct agent (Thought/Action/Action Input/Observation) over vision tools"
    format_cls = ReActFormat


@register_paradigm
class MMReact(_ToolAgent):
    variant = "mm_react"
    description = "MM-REACT-style agent: the LLM asks vision experts with 'Assistant, <request> <image>'"
    format_cls = WatchwordFormat
