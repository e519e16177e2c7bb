"""``trained_adapter/vlm_pretrained``: a user's pretrained interleaved image-text model.

The open Flamingo successors (IDEFICS2/IDEFICS3, SmolVLM) and LLaVA-style models whose processor
has a chat template load through ``AutoProcessor`` + ``AutoModelForImageTextToText``. Their
adapter was trained by their authors, so nothing is trained here (``trainable_params`` = 0) and
no shared backbone is used: the checkpoint brings its own LLM and image encoder. Unlike BLIP-2
they read several images per sequence, so demonstrations are shown Flamingo-style, as earlier
user/assistant turns each with its own image. Nothing ships offline: the weights are loaded
lazily in ``prepare()`` and a missing model fails with a message naming the ``model`` option.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
from pydantic import Field

from harness.chunking import answer_in_chunks
from harness.config import Strict
from harness.interface import Answer, Paradigm, Request, Timer
from harness.models.llm import ModelUnavailable, resolve_dtype, cut_at_stop, llm_fingerprint, resolve_device
from harness.registry import register_paradigm
from paradigms.trained_adapter.blip2_pretrained import no_image

log = logging.getLogger(__name__)

#: Tokens some checkpoints end a turn with but do not list as EOS in their generation config.
_END_OF_TURN = ("<end_of_utterance>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")


class VlmPretrainedOptions(Strict):
    #: Hub id, ``id@revision``, or a local folder with a saved model + processor. Required: there
    #: is no sensible default, and a placeholder model would produce meaningless numbers.
    model: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    #: "auto": accelerate spreads the model over every GPU this process sees (IDEFICS-80B and other models
    #: larger than one GPU); placement only, so not part of the fingerprint (harness/placement.py).
    device_map: Literal["auto"] | None = None
    #: Overrides the task's ``max_new_tokens`` when set.
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    #: Runs code from the checkpoint's repository; off unless the user opts in.
    trust_remote_code: bool = False
    batch_size: int = Field(4, ge=1)

    def source(self) -> tuple[str, str | None, bool]:
        """(name to load, revision, is a local folder); ``id@rev`` is split unless it is a folder."""
        if Path(self.model).is_dir():
            return self.model, None, True
        if "@" in self.model:
            name, rev = self.model.rsplit("@", 1)
            return name, rev or None, False
        return self.model, None, False


@register_paradigm
class VlmPretrained(Paradigm):
    family: ClassVar[str] = "trained_adapter"
    variant: ClassVar[str] = "vlm_pretrained"
    description: ClassVar[str] = (
        "a pretrained interleaved image-text model (IDEFICS2/3, SmolVLM, LLaVA) loaded with transformers"
    )
    Options: ClassVar[type] = VlmPretrainedOptions
    uses: ClassVar[tuple[str, ...]] = ()
    # tests: test_vlm_pretrained.py and test_flamingo_pretrained.py compare batched with one-by-one answers
    speed_only: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self.model: Any = None
        self.processor: Any = None
        self._eos: list[int] = []

    def fingerprint(self) -> dict[str, Any]:
        """Options plus what identifies the weights (hub id@revision or a local folder digest)."""
        name, rev, local = self.options.source()
        fp = super().fingerprint()
        fp["options"].pop("device_map", None)  # where layers run, not what they compute: keys unchanged
        fp["weights"] = llm_fingerprint("local" if local else "hub", name, rev)
        fp["dtype"] = self.options.dtype
        return fp

    def prepare(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForImageTextToText

        processor, model, device = self._load(
            AutoModelForImageTextToText, "image-text model", "AutoModelForImageTextToText + AutoProcessor"
        )
        if not getattr(processor, "chat_template", None):
            raise ModelUnavailable(
                f"option 'model': the processor of {self.options.model!r} has no chat template, so images and "
                "demonstrations cannot be placed in the prompt"
            )
        self._ready(processor, model, device, _END_OF_TURN)

    def _load(self, model_cls: Any, what: str, saved: str) -> tuple[Any, Any, Any]:
        """(processor, model, device) for the ``model`` option; a failure names the option and what to give."""
        from transformers import AutoProcessor

        o = self.options
        name, rev, _ = o.source()
        if o.trust_remote_code:
            log.warning("%s: trust_remote_code=true runs code shipped with %r", self.variant, o.model)
        device = resolve_device(o.device)
        kwargs: dict[str, Any] = {"trust_remote_code": o.trust_remote_code}
        if rev:
            kwargs["revision"] = rev
        try:
            processor = AutoProcessor.from_pretrained(name, **kwargs)
            placement = {"device_map": o.device_map} if o.device_map else {}
            model = model_cls.from_pretrained(name, dtype=resolve_dtype(o.dtype, device), **placement, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(
                f"option 'model': cannot load the {what} {o.model!r}: {exc}. Give a local folder "
                f"with a saved {saved}, or a hub id (id@revision) on a machine with hub access."
            ) from exc
        return processor, model, device

    def _ready(self, processor: Any, model: Any, device: Any, end_tokens: Sequence[str]) -> None:
        """Left padding, the end-of-answer ids (EOS + ``end_tokens`` the vocabulary has), model on its device."""
        tok = processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        eos = model.generation_config.eos_token_id
        ids = set([eos] if isinstance(eos, int) else list(eos or []))
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        vocab = tok.get_vocab()
        ids.update(vocab[t] for t in end_tokens if t in vocab)
        self._eos = sorted(ids)
        self.processor = processor
        self.model = (model if self.options.device_map else model.to(device)).eval()

    def _messages(self, r: Request) -> tuple[list[dict[str, Any]], list[Any], int]:
        """Chat turns for one request: shots as earlier user/assistant turns, then the query.

        Returns the messages, the images in the order they appear, and how many shots had no image
        (shown as text-only turns).
        """
        messages: list[dict[str, Any]] = []
        images: list[Any] = []
        text_only = 0
        for s in r.shots:
            content: list[dict[str, Any]] = []
            if s.image is not None:
                content.append({"type": "image"})
                images.append(s.image.convert("RGB"))
            else:
                text_only += 1
            content.append({"type": "text", "text": s.prompt})
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": s.answer}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]})
        images.append(r.image.convert("RGB"))
        return messages, images, text_only

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        self.prepare()
        return answer_in_chunks(requests, self.options.batch_size, self._chunk, refuse=no_image)

    def _max_new(self, r: Request) -> int:
        return self.options.max_new_tokens or r.max_new_tokens

    def _generate(self, enc: Any, requests: Sequence[Request], **extra: Any) -> tuple[Any, torch.Tensor]:
        """Greedy generation for an encoded chunk (float inputs in the model's dtype): (inputs, new tokens)."""
        enc = enc.to(self.model.device)
        for k, v in enc.items():
            if torch.is_tensor(v) and v.is_floating_point():
                enc[k] = v.to(self.model.dtype)
        seqs = self.model.generate(
            **enc,
            max_new_tokens=max(self._max_new(r) for r in requests),
            do_sample=False,
            eos_token_id=self._eos or None,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            **extra,
        )
        return enc, seqs[:, enc["input_ids"].shape[1]:]  # decoder-only: generate returns the prompt too

    @staticmethod
    def _answer(enc: Any, b: int, ids: Any, text: str, latency_s: float, trace: dict[str, Any]) -> Answer:
        """Row ``b`` of a generated batch as an Answer (nothing here is trained: 0 trainable parameters)."""
        return Answer(text=text, latency_s=latency_s, llm_tokens_in=int(enc["attention_mask"][b].sum()),
                      llm_tokens_out=len(ids), trainable_params=0, trace=trace)

    def _decode(self, new_tokens: torch.Tensor, r: Request) -> tuple[list[int], str]:
        """The answer's ids (up to and including EOS; padding after it does not count) and its text."""
        ids = new_tokens.tolist()[: self._max_new(r)]
        eos = set(self._eos)
        end = next((j for j, x in enumerate(ids) if x in eos), None)
        ids = ids if end is None else ids[: end + 1]
        text, _ = cut_at_stop(self.processor.tokenizer.decode(ids, skip_special_tokens=True), self.generation.stop)
        return ids, text.strip()

    @torch.inference_mode()
    def _chunk(self, requests: Sequence[Request]) -> list[Answer]:
        rows = [self._messages(r) for r in requests]
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _, _ in rows]
        with Timer() as t:
            enc = self.processor(text=texts, images=[imgs for _, imgs, _ in rows], return_tensors="pt", padding=True)
            enc, seqs = self._generate(enc, requests)
        image_token_id = getattr(self.processor, "image_token_id", None)
        out = []
        for b, r in enumerate(requests):
            ids, text = self._decode(seqs[b], r)
            trace: dict[str, Any] = {
                "model": self.options.model,
                "prompt": texts[b],
                "n_images": len(rows[b][1]),
                "n_shots": len(r.shots),
                "text_only_shots": rows[b][2],
            }
            if image_token_id is not None:
                trace["image_tokens"] = int((enc["input_ids"][b] == image_token_id).sum())
            out.append(self._answer(enc, b, ids, text, t.elapsed / len(requests), trace))
        return out
