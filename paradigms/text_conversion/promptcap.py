"""PromptCap (Hu et al., 2022): question-aware image text, then PICa-style answering.

With a captioner configured it is asked PromptCap's prompt (``please describe this image according
to the given question: {q}``). Offline no captioner exists, so the tool facts (one detection, label,
OCR line each) are ranked by MiniLM cosine similarity to the question and the top ``top_n_facts``
are written most-relevant first — an approximation of PromptCap, not its trained captioner.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from harness.models.converters import PROMPTCAP_CAPTION_PROMPT, Fact, render_facts
from harness.registry import register_paradigm
from paradigms.text_conversion.base import NO_FACTS, TextConversionOptions, TextConversionParadigm
from paradigms.text_conversion.prompts import truncate


class PromptCapOptions(TextConversionOptions):
    top_n_facts: int = Field(6, ge=1, description="facts kept after ranking by relevance to the question")


def rank_facts(embedder: Any, question: str, facts: tuple[Fact, ...]) -> list[tuple[Fact, float]]:
    """Facts by decreasing cosine similarity of their phrase (``dog (left)``, ``the text 'STOP'``) to
    the question; stable on ties. Bare phrases rank better with MiniLM than ``Objects: dog (left)``."""
    if not facts:
        return []
    emb = embedder.embed([question] + [f.ranking_text for f in facts])
    sims = (emb[1:] @ emb[0]).tolist()
    order = sorted(range(len(facts)), key=lambda k: (-round(sims[k], 6), k))
    return [(facts[k], float(sims[k])) for k in order]


def fact_line(f: Fact) -> str:
    return f"{f.label}: {f.text}"


@register_paradigm
class PromptCap(TextConversionParadigm):
    variant = "promptcap"
    description = (
        "PromptCap: question-aware image text (a prompted captioner; offline: tool facts ranked by MiniLM "
        "similarity to the question, top-n, most relevant first) answered in PICa's prompt."
    )
    Options = PromptCapOptions
    uses = ("llm", "tools", "text_embedder")
    caption_prompt_template = PROMPTCAP_CAPTION_PROMPT

    def context(
        self, image_id: str, image: Any, question: str, withheld: Sequence[str] = ()
    ) -> tuple[str, dict[str, Any], int, float]:
        if image is None:
            raise ValueError(f"image {image_id!r} is missing")
        parts, facts, calls, secs = [], [], 0, 0.0
        for conv in self.converters:
            res = self.cache.get(conv, image_id, image, question, withheld)
            calls, secs = calls + res.tool_calls, secs + res.seconds
            if conv.is_caption:  # captions (a captioner's, the oracle's) are kept whole, unranked
                if res.facts:
                    parts.append(". ".join(f.text for f in res.facts))
            else:
                facts += res.facts
        trace: dict[str, Any] = {"image_id": image_id}
        if question:
            ranked = rank_facts(self.backbones.text_embedder, question, tuple(facts))
            kept = ranked[: self.options.top_n_facts]
            trace["fact_scores"] = [[fact_line(f), round(s, 4)] for f, s in ranked]
            facts = [f for f, _ in kept]
        else:  # captioning: nothing to be relevant to; keep the converters' order
            facts = facts[: self.options.top_n_facts]
        if facts:
            parts.append(render_facts(facts))
        text = truncate(" ".join(parts) or NO_FACTS, self.options.max_context_chars)
        trace["context"] = text
        return text, trace, calls, secs
