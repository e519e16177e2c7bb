"""``trained_adapter/flamingo_pretrained``: a published Flamingo-architecture checkpoint (IDEFICS v1).

IDEFICS (Laurençon et al. 2023) is the open reproduction of Flamingo: a frozen CLIP ViT, a
Perceiver Resampler, gated cross-attention blocks every ``cross_layer_interval`` layers of a
frozen LLaMA — in transformers as ``IdeficsForVisionText2Text`` with ``IdeficsProcessor``. It
reads interleaved sequences, so demonstrations are shown as earlier image–text chunks of the same
sequence, in the order the shot sampler gives them (nothing is re-sorted here).

Prompt formats (``format``):

- ``instruct`` (idefics-9b/80b-instruct): ``User:<image>prompt<end_of_utterance>\\nAssistant: answer
  <end_of_utterance>\\n`` per demonstration, then ``User:<image>prompt<end_of_utterance>\\nAssistant:``;
- ``base`` (idefics-9b/80b): ``<image>prompt answer\\n`` per demonstration, then ``<image>prompt``.

The processor turns each image into ``<fake_token_around_image><image><fake_token_around_image>``
and the model's cross-attention reads the image only from positions after it. Nothing is trained
here; the checkpoint brings its own LLM and encoder. Generation never emits the image tokens
(``bad_words_ids``), as the model card advises.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import torch
from pydantic import Field

from harness.chunking import answer_in_chunks
from harness.interface import Answer, Request, Timer
from harness.models.llm import ModelUnavailable
from harness.registry import register_paradigm
from paradigms.trained_adapter.vlm_pretrained import VlmPretrained, VlmPretrainedOptions

END_OF_UTTERANCE = "<end_of_utterance>"
IMAGE_TOKENS = ("<image>", "<fake_token_around_image>")


class FlamingoPretrainedOptions(VlmPretrainedOptions):
    #: ``instruct`` for the -instruct checkpoints, ``base`` for the pretrained ones.
    format: Literal["instruct", "base"] = "instruct"
    batch_size: int = Field(4, ge=1)


def _text(s: str) -> str:
    """A text chunk as the processor will read it; one it would take for an image URL is refused."""
    from transformers.models.idefics.processing_idefics import is_url

    if is_url(s.strip(" ")):
        raise ValueError(f"text {s!r} would be fetched as an image URL by the IDEFICS processor")
    return s


def interleaved_prompt(r: Request, fmt: str) -> tuple[list[Any], int]:
    """The processor's interleaved list (strings and images) for one request, and the image count."""
    if r.image is None:
        raise ValueError("sample has no image")
    items: list[Any] = []
    n = 0
    for s in r.shots:
        if s.image is None:
            raise ValueError(f"demonstration {s.sample_id} has no image")
        if fmt == "instruct":
            items += ["User:", s.image.convert("RGB"),
                      f"{s.prompt}{END_OF_UTTERANCE}\nAssistant: {s.answer.strip()}{END_OF_UTTERANCE}\n"]
        else:
            items += [s.image.convert("RGB"), f"{s.prompt} {s.answer.strip()}\n"]
        n += 1
    if fmt == "instruct":
        items += ["User:", r.image.convert("RGB"), f"{r.prompt}{END_OF_UTTERANCE}\nAssistant:"]
    else:
        items += [r.image.convert("RGB"), r.prompt]
    # adjacent strings would get an <end_of_utterance> inserted between them by the processor: join them
    merged: list[Any] = []
    for it in items:
        if isinstance(it, str) and merged and isinstance(merged[-1], str):
            merged[-1] += it
        else:
            merged.append(it)
    return [_text(x) if isinstance(x, str) else x for x in merged], n + 1


@register_paradigm
class FlamingoPretrained(VlmPretrained):
    """IDEFICS v1 (the open Flamingo) answering with demonstrations as earlier image–text chunks."""

    variant: ClassVar[str] = "flamingo_pretrained"
    description: ClassVar[str] = (
        "a published Flamingo-architecture checkpoint (IDEFICS v1, IdeficsForVisionText2Text): interleaved "
        "few-shot prompts, demonstrations as earlier image-text chunks"
    )
    Options: ClassVar[type] = FlamingoPretrainedOptions
    uses: ClassVar[tuple[str, ...]] = ()  # the checkpoint brings its own LLM and image encoder

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "format": self.options.format}

    def prepare(self) -> None:
        if self.model is not None:
            return
        from transformers import IdeficsForVisionText2Text

        processor, model, device = self._load(
            IdeficsForVisionText2Text, "IDEFICS checkpoint", "IdeficsForVisionText2Text + IdeficsProcessor"
        )
        if type(processor).__name__ != "IdeficsProcessor":
            raise ModelUnavailable(f"option 'model': {self.options.model!r} has a {type(processor).__name__}, "
                                   "not an IdeficsProcessor")
        vocab = processor.tokenizer.get_vocab()
        missing = [t for t in IMAGE_TOKENS if t not in vocab]
        if missing:
            raise ModelUnavailable(f"option 'model': the tokenizer of {self.options.model!r} lacks {missing}")
        self._ready(processor, model, device, (END_OF_UTTERANCE,) if self.options.format == "instruct" else ())
        self._bad = [[vocab[t]] for t in IMAGE_TOKENS]

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        self.prepare()
        out: list[Answer | None] = [None] * len(requests)
        ready: list[tuple[int, Request, tuple[list[Any], int]]] = []
        for i, r in enumerate(requests):
            try:
                ready.append((i, r, interleaved_prompt(r, self.options.format)))
            except Exception as exc:  # noqa: BLE001 - this sample's own failure; its neighbours go on
                out[i] = Answer.from_exception(exc)
        for (i, _, _), a in zip(ready, answer_in_chunks(ready, self.options.batch_size, self._chunk_prompts)):
            out[i] = a
        return [a for a in out if a is not None]

    @torch.inference_mode()
    def _chunk_prompts(self, ready: Sequence[tuple[int, Request, tuple[list[Any], int]]]) -> list[Answer]:
        prompts = [p for _, _, (p, _) in ready]
        requests = [r for _, r, _ in ready]
        with Timer() as t:
            enc = self.processor(text=prompts, return_tensors="pt", padding="longest", add_end_of_utterance_token=False)
            enc, seqs = self._generate(enc, requests, bad_words_ids=self._bad)
        tok = self.processor.tokenizer
        image_id = tok.convert_tokens_to_ids("<image>")
        out = []
        for b, (_, r, (_, n_images)) in enumerate(ready):
            ids, text = self._decode(seqs[b], r)
            prompt_ids = enc["input_ids"][b][enc["attention_mask"][b].bool()]
            out.append(self._answer(enc, b, ids, text, t.elapsed / len(ready), {
                "model": self.options.model,
                "format": self.options.format,
                "prompt": tok.decode(prompt_ids),
                "n_images": n_images,
                "n_shots": len(r.shots),
                "image_tokens": int((prompt_ids == image_id).sum()),
            }))
        return out
