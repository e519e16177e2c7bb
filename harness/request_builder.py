"""From a planned sample to what a paradigm sees: its cleaned question, rendered prompt and
:class:`~harness.interface.Request` (decoded image, decoded demonstrations).

A sample that cannot become a request (overlong or empty question, undecodable image) becomes a
failed :class:`~harness.interface.Answer` instead, so it fails alone and the run goes on.
"""

from __future__ import annotations

import re
from typing import Sequence

from harness.interface import Answer, Request, Shot, image_id_of
from tasks.base import Sample
from tasks.spec import TaskSpec

MAX_QUESTION_CHARS = 4000
#: C0/C1 control characters other than tab and newline: junk from broken exports that some
#: tokenizers map to nothing and terminals interpret; replaced by a space before prompting.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """The question as the model sees it: control characters become spaces."""
    return _CONTROL.sub(" ", text)


def render_prompt(spec: TaskSpec, s: Sample) -> str:
    """The task's prompt template filled with the sample's cleaned question, options and hint."""
    return spec.render_prompt(clean_text(s.question), s.choices, clean_text(str(s.meta.get("hint") or "")))


def build_request(spec: TaskSpec, s: Sample, prompt: str, demonstrations: Sequence[Sample]) -> Request | Answer:
    """The request for sample ``s`` (``prompt`` as keyed), or the failed answer saying why there is none."""
    if len(s.question) > MAX_QUESTION_CHARS:
        return Answer.failed(f"question too long ({len(s.question)} characters > {MAX_QUESTION_CHARS})")
    if spec.kind in ("vqa", "multiple_choice") and not clean_text(s.question).strip():
        return Answer.failed("empty question")
    try:
        img = s.load_image()
    except Exception as exc:  # noqa: BLE001 - any image failure fails only this sample
        return Answer.from_exception(exc, about=f"image {s.image_ref!r}")
    shots = []
    for x in demonstrations:
        try:
            ximg = x.load_image()
        except Exception as exc:  # noqa: BLE001
            return Answer.from_exception(exc, about=f"demonstration image {x.image_ref!r}")
        shots.append(
            Shot(
                sample_id=x.sample_id,
                image_id=image_id_of(ximg),
                image=ximg,
                prompt=render_prompt(spec, x),
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
        prompt=prompt,
        shots=tuple(shots),
        kind=spec.kind,
        choices=tuple(s.choices),
        question=clean_text(s.question),
        max_new_tokens=spec.max_new_tokens,
        meta=dict(s.meta),
        withheld=(*s.references, *s.answers, *((s.gold_text,) if s.choices else ())),
    )
