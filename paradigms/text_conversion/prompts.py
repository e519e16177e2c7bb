"""Prompt layouts of the text-conversion paradigm.

The VQA layout is PICa's, byte for byte (Yang et al. 2022, official ``gpt3_api_okvqa.py``): a
header line, then ``===``-separated blocks ``Context: ... / Q: ... / A: ...``, the query block
ending in ``A:``. Captioning, multiple choice and binding reuse the same block structure so that a
reader sees one format across kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PICA_HEADER = "Please answer the question according to the above context."
CAPTION_HEADER = "Please write a short caption for the image according to the above context."


@dataclass(frozen=True)
class Example:
    """One demonstration as the LLM sees it: converted image text, question (if any), answer."""

    context: str
    question: str
    answer: str


def pica_prompt(examples: Sequence[Example], context: str, question: str, header: str = PICA_HEADER) -> str:
    """PICa's prompt: ``header\\n===\\n`` + per example ``Context: c\\n===\\nQ: q\\nA: a\\n\\n===\\n``
    + ``Context: c\\n===\\nQ: q\\nA:``."""
    parts = [header, "\n===\n"]
    for ex in examples:
        parts.append(f"Context: {ex.context}\n===\nQ: {ex.question}\nA: {ex.answer}\n\n===\n")
    parts.append(f"Context: {context}\n===\nQ: {question}\nA:")
    return "".join(parts)


def caption_prompt(examples: Sequence[Example], context: str, header: str = CAPTION_HEADER) -> str:
    """PICa's block layout with ``Caption:`` in place of Q/A (demonstrations are context -> caption)."""
    parts = [header, "\n===\n"]
    for ex in examples:
        parts.append(f"Context: {ex.context}\n===\nCaption: {ex.answer}\n\n===\n")
    parts.append(f"Context: {context}\n===\nCaption:")
    return "".join(parts)


def choice_question(question: str, choices: Sequence[str]) -> str:
    """The question line of a multiple-choice query: the options are listed after the question."""
    return f"{question} Options: {', '.join(choices)}."


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to ``max_chars`` at a word boundary (keeps prompts bounded on cluttered images)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."
