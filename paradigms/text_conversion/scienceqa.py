"""ScienceQA (Lu et al., 2022) as its authors ran GPT-3: the image becomes a caption, the hint
and caption form the Context, prompts in the paper's formats, the answer read from "The answer
is X.".

Prompt formats (the paper's ``QCM→A`` and ``QCM→ALE``), one block per demonstration then the
query, blocks separated by a blank line::

    Question: {question}
    Context: {hint} {caption}        ("N/A" when both are empty)
    Options: (A) ... (B) ...
    Answer: The answer is A. BECAUSE: {lecture} {solution}     (demonstration, ALE)
    Answer:                                                     (query)

Line breaks inside a lecture or solution are written as the two characters ``\\n`` (as the
authors do) so that the whole answer stays on one line; decoding stops at a newline.

Extraction follows the authors' scorer: exactly one "The answer is X" in the output names the
option; we also accept the parenthesised form "The answer is (B)." that instruction-tuned
models often write. Anything else is unparsed: the authors then pick a random option
(``on_unparsed: random``, seeded per sample here so reruns agree); ``on_unparsed: wrong``
counts it wrong instead. Unparsed outputs are counted (``parse_errors``) either way.

Demonstrations come from the run's shot selection (ScienceQA's own runs used 2 random training
questions for GPT-3). A question without an image (``meta["has_image"]`` false, from
``scienceqa_local`` with ``questions: all``) gets no caption, only its hint.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from harness.interface import Answer, Request
from harness.registry import register_paradigm
from paradigms.text_conversion.base import LlmJob, TextConversionOptions, TextConversionParadigm

LETTERS = "ABCDE"
#: "The answer is B" or "The answer is (B)". The authors' pattern is ``The answer is ([A-Z]).``
#: (any character after the letter); here the letter may not run on into a word, so "The answer
#: is Because ..." is not read as B.
_ANSWER = re.compile(r"The answer is \(?([A-Z])(?![A-Za-z])\)?")


def extract_letter(output: str) -> str | None:
    """The option letter of a model output, or None if there is not exactly one statement of it."""
    found = _ANSWER.findall(output)
    return found[0] if len(found) == 1 else None


def choice_text(choices: Sequence[str]) -> str:
    return " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def context_text(hint: str, caption: str) -> str:
    text = " ".join([hint, caption]).strip()
    return text or "N/A"


def one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def example_block(
    fmt: str, question: str, context: str, choices: Sequence[str], answer: str | None, lecture: str = "", solution: str = ""
) -> str:
    """One demonstration (``answer`` given) or the query (``answer`` None) in the paper's layout."""
    block = f"Question: {question}\nContext: {context}\nOptions: {choice_text(choices)}\n"
    if answer is None:
        block += "Answer:"
    elif fmt == "QCM-A":
        block += f"Answer: The answer is {answer}."
    else:  # QCM-ALE
        block += f"Answer: The answer is {answer}. BECAUSE: {one_line(lecture)} {one_line(solution)}"
    block = block.replace("  ", " ").strip()
    if block.endswith("BECAUSE:"):
        block = block[: -len("BECAUSE:")].strip()
    return block


class ScienceQAOptions(TextConversionOptions):
    """ScienceQA's settings; the converters make the image caption (see ``TextConversionOptions``)."""

    prompt_format: Literal["QCM-A", "QCM-ALE"] = Field(
        "QCM-A", description="QCM-A: answer only; QCM-ALE: answer, then lecture and explanation (chain of thought)"
    )
    use_caption: bool = Field(True, description="put the converted image text into the Context (the paper's 'captions')")
    answer_max_new_tokens: int | None = Field(
        None, ge=1, description="decoding budget; default 32 for QCM-A, 512 for QCM-ALE (the authors' max_tokens)"
    )
    on_unparsed: Literal["random", "wrong"] = Field(
        "random", description="random: a seeded random option as the authors' scorer does; wrong: no answer"
    )


@register_paradigm
class ScienceQA(TextConversionParadigm):
    variant = "scienceqa"
    description = (
        "ScienceQA (GPT-3 CoT): hint + image caption as Context in the QCM→A / QCM→ALE prompt; "
        "the answer read from 'The answer is X.'"
    )
    Options = ScienceQAOptions
    uses = ("llm", "tools")

    def _budget(self) -> int:
        o = self.options
        return o.answer_max_new_tokens or (32 if o.prompt_format == "QCM-A" else 512)

    def _caption(self, image_id: str, image: Any, meta: Mapping[str, Any]) -> tuple[str, int, float]:
        if not self.options.use_caption or not meta.get("has_image", True):
            return "", 0, 0.0
        text, _, calls, secs = self.context(image_id, image, "")
        return text, calls, secs

    def _llm_job(self, r: Request) -> LlmJob:
        if r.kind != "multiple_choice" or not r.choices:
            raise ValueError("the ScienceQA method answers multiple-choice questions (a ScienceQA task)")
        if len(r.choices) > len(LETTERS):
            raise ValueError(f"{len(r.choices)} options; ScienceQA's format has letters for at most {len(LETTERS)}")
        fmt = self.options.prompt_format
        blocks, shot_traces = [], []
        calls, secs = 0, 0.0
        for s in r.shots:
            if not s.choices or s.answer not in s.choices:
                raise ValueError(f"demonstration {s.sample_id!r} is not a multiple-choice question with its answer")
            cap, c, t = self._caption(s.image_id, s.image, s.meta)
            calls, secs = calls + c, secs + t
            letter = LETTERS[list(s.choices).index(s.answer)]
            ctx = context_text(str(s.meta.get("hint", "")), cap)
            blocks.append(example_block(fmt, s.question, ctx, s.choices, letter,
                                        str(s.meta.get("lecture", "")), str(s.meta.get("solution", ""))))
            shot_traces.append({"sample_id": s.sample_id, "context": ctx, "answer": letter})
        cap, c, t = self._caption(r.image_id, r.image, r.meta)
        calls, secs = calls + c, secs + t
        ctx = context_text(str(r.meta.get("hint", "")), cap)
        blocks.append(example_block(fmt, r.question or r.prompt, ctx, r.choices, None))
        prompt = self._wrap("\n\n".join(blocks))
        job = LlmJob("scienceqa", [prompt], max_new=self._budget())
        self._check_length(job)
        job.trace = {"format": fmt, "context": ctx, "shots": shot_traces, "prompts": [prompt],
                      "options": list(r.choices), "sample_id": r.sample_id}
        job.tool_calls, job.convert_s = calls, secs
        return job

    def _finish(self, job: LlmJob, n_in: int, share: float) -> Answer:
        """Read the option from the one generation (the base class runs the batched decoding)."""
        choices, sample_id = job.trace["options"], job.trace["sample_id"]
        output = job.generations[0].text.strip()
        letter = extract_letter(output)
        trace = dict(job.trace, output=output, parsed=letter)
        index = LETTERS.index(letter) if letter is not None and LETTERS.index(letter) < len(choices) else None
        unparsed = index is None
        if unparsed:
            trace["parse_errors"] = 1
            if self.options.on_unparsed == "random":
                seed = int.from_bytes(hashlib.sha256(f"scienceqa\x00{sample_id}".encode()).digest()[:8], "big")
                index = random.Random(seed).randrange(len(choices))
                trace["random_choice"] = True
        text = ""
        if index is not None:
            # the option's text designates it unambiguously unless two options read the same
            text = choices[index] if choices.count(choices[index]) == 1 else f"({LETTERS[index]})"
        trace["chosen"] = index
        return Answer(
            text=text,
            latency_s=job.convert_s + share,
            llm_tokens_in=n_in,
            llm_tokens_out=sum(g.tokens_out for g in job.generations),
            tool_calls=job.tool_calls,
            trace=trace,
            parse_errors=int(unparsed),
        )
