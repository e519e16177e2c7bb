"""VQA expert: BLIP (``BlipForQuestionAnswering``, generative) or ViLT (``ViltForQuestionAnswering``, a
classifier over its answer vocabulary), chosen from the checkpoint's ``model_type``.

Visual ChatGPT's "Answer Question About The Image" tool is BLIP VQA; its input is the image path
and the question separated by a comma.
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, Fact, HFExpertSpec, load_hf, register_kind
from harness.experts.captioner import model_type


class VQASpec(HFExpertSpec):
    kind: Literal["vqa"] = "vqa"
    max_new_tokens: int = Field(10, ge=1, le=64)


@register_kind(VQASpec)
class VQAExpert(Expert):
    default_name = "Answer Question About The Image"
    default_description = (
        "useful when you need an answer for a question based on an image. like: what is the background color "
        "of the last image, how many cats in this figure, what is in this figure. The input to this tool should "
        "be a comma separated string of two, representing the image_path and the question"
    )
    needs_query = True
    query_meaning = "the question"
    spec: VQASpec

    def _load(self) -> Any:
        import transformers

        mt = model_type(self.spec)
        if mt == "vilt":
            return ("vilt", *load_hf(self.spec, transformers.ViltForQuestionAnswering, transformers.ViltProcessor, "VQA model"))
        if mt == "blip":
            return ("blip", *load_hf(self.spec, transformers.BlipForQuestionAnswering, transformers.BlipProcessor, "VQA model"))
        from harness.models.packaged import ModelUnavailable

        raise ModelUnavailable(
            f"VQA model {self.spec.model!r}: model_type {mt or 'unreadable'!r}; supported: blip, vilt"
        )

    def answer(self, image: Image.Image, question: str) -> str:
        import torch

        arch, model, processor = self.model()
        inputs = processor(images=image.convert("RGB"), text=question, return_tensors="pt").to(self.spec.device)
        with torch.inference_mode():
            if arch == "vilt":
                logits = model(**inputs).logits[0]
                return str(model.config.id2label[int(logits.argmax())])
            ids = model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False)
        return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        text = self.answer(image, query)
        return ExpertResult(text or "no answer", (Fact("Answer", text, phrase=f"{query} {text}"),) if text else ())
