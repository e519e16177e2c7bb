"""``trained_adapter/blip2_pretrained``: a user's own BLIP-2 checkpoint (hub id or local folder).

Nothing ships offline, so this variant is for users who have the weights; it loads them lazily in
``prepare()`` through transformers' ``Blip2ForConditionalGeneration`` and fails with a clear
message when they cannot be found. BLIP-2 brings its own frozen LLM and image encoder, so it uses
none of the run's shared backbones; it takes one image per prompt, so demonstrations are not shown
to it (recorded in the trace) — BLIP-2 reports no in-context gains.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import torch

from harness.chunking import answer_in_chunks
from harness.config import Strict
from harness.interface import Answer, Paradigm, Request, Timer
from harness.models.llm import ModelUnavailable, resolve_dtype, cut_at_stop, resolve_device
from harness.registry import register_paradigm


def no_image(r: Request) -> str | None:
    """Why a request cannot be answered by an image-text checkpoint (None: it can)."""
    return "ValueError: sample has no image" if r.image is None else None


class Blip2PretrainedOptions(Strict):
    model: str = "Salesforce/blip2-opt-2.7b"
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    #: "auto": accelerate spreads the model over every GPU this process sees; placement only (not in the fingerprint).
    device_map: Literal["auto"] | None = None
    #: BLIP-2's captioning prompt ("a photo of" in the paper); VQA uses the task's prompt.
    caption_prompt: str = "a photo of"
    batch_size: int = 8


@register_paradigm
class Blip2Pretrained(Paradigm):
    family: ClassVar[str] = "trained_adapter"
    variant: ClassVar[str] = "blip2_pretrained"
    description: ClassVar[str] = "a pretrained BLIP-2 (Q-Former + frozen LLM) loaded with transformers"
    Options: ClassVar[type] = Blip2PretrainedOptions
    uses: ClassVar[tuple[str, ...]] = ()
    # test: test_blip2_pretrained_loads_a_local_checkpoint_and_answers (batched == one by one)
    speed_only: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self.model: Any = None
        self.processor: Any = None

    def prepare(self) -> None:
        if self.model is not None:
            return
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        o = self.options
        device = resolve_device(o.device)
        dtype = resolve_dtype(o.dtype, device)
        kwargs = {"revision": o.revision} if o.revision else {}
        try:
            self.processor = Blip2Processor.from_pretrained(o.model, **kwargs)
            placement = {"device_map": o.device_map} if o.device_map else {}
            model = Blip2ForConditionalGeneration.from_pretrained(o.model, dtype=dtype, **placement, **kwargs)
        except OSError as exc:
            raise ModelUnavailable(
                f"cannot load BLIP-2 {o.model!r}: {exc}. Give a local folder with a saved "
                "Blip2ForConditionalGeneration + Blip2Processor, or a hub id on a machine with hub access."
            ) from exc
        self.processor.tokenizer.padding_side = "left"
        self.model = (model if o.device_map else model.to(device)).eval()

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["options"].pop("device_map", None)  # where layers run, not what they compute: keys unchanged
        return fp

    @property
    def trainable_params(self) -> int:
        """BLIP-2's trained part: the Q-Former, its queries and the language projection."""
        m = self.model
        parts = [m.qformer, m.language_projection]
        return sum(p.numel() for part in parts for p in part.parameters()) + m.query_tokens.numel()

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        self.prepare()
        return answer_in_chunks(requests, self.options.batch_size, self._chunk, refuse=no_image)

    @torch.inference_mode()
    def _chunk(self, requests: Sequence[Request]) -> list[Answer]:
        prompts = [self.options.caption_prompt if r.kind == "caption" else r.prompt for r in requests]
        with Timer() as t:
            enc = self.processor(
                images=[r.image for r in requests], text=prompts, return_tensors="pt", padding=True
            ).to(self.model.device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            seqs = self.model.generate(
                **enc, max_new_tokens=max(r.max_new_tokens for r in requests), do_sample=False
            )
        n_in = enc["input_ids"].shape[1]
        if seqs.shape[1] >= n_in and torch.equal(seqs[:, :n_in], enc["input_ids"]):
            seqs = seqs[:, n_in:]  # decoder-only LLMs return the prompt too
        tok = self.processor.tokenizer
        out = []
        for b, r in enumerate(requests):
            ids = seqs[b].tolist()[: r.max_new_tokens]
            text, _ = cut_at_stop(tok.decode(ids, skip_special_tokens=True), self.generation.stop)
            out.append(Answer(
                text=text.strip(),
                latency_s=t.elapsed / len(requests),
                llm_tokens_in=int(enc["attention_mask"][b].sum()),
                llm_tokens_out=len(ids),
                trainable_params=self.trainable_params,
                trace={"prompt": prompts[b], "model": self.options.model, "shots_ignored": len(r.shots)},
            ))
        return out
