"""Captioner expert: BLIP (``BlipForConditionalGeneration``) or any image-text-to-text captioner (GIT, ...).

Visual ChatGPT's first look at an image is a BLIP caption (tool "Get Photo Description"); PICa and
PromptCap put a caption in the prompt. ``query`` is an optional text prompt the caption continues
(PromptCap's question-aware prompt); the echoed prompt is removed from the output.
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, Fact, HFExpertSpec, load_hf, register_kind


class CaptionerSpec(HFExpertSpec):
    kind: Literal["captioner"] = "captioner"
    max_new_tokens: int = Field(30, ge=1, le=256)


def strip_prompt(text: str, prompt: str) -> str:
    """Drop an echoed text prompt from a caption (BLIP/GIT return prompt + caption; tokenizers may
    re-space punctuation, so the match ignores whitespace and case)."""
    target = "".join(prompt.lower().split())
    acc = ""
    for i, ch in enumerate(text):
        if not target:
            break
        if not ch.isspace():
            acc += ch.lower()
        if acc == target:
            return text[i + 1 :].strip()
        if not target.startswith(acc):
            break
    return text.strip()


def model_type(spec: HFExpertSpec) -> str:
    """The checkpoint's ``model_type`` from its config (no weights read); '' when unreadable."""
    from transformers import AutoConfig

    kw = {"revision": spec.revision} if spec.revision else {}
    try:
        return str(AutoConfig.from_pretrained(spec.model, trust_remote_code=False, **kw).model_type)
    except (OSError, ValueError):
        return ""


@register_kind(CaptionerSpec)
class Captioner(Expert):
    default_name = "Get Photo Description"
    default_description = (
        "useful when you want to know what is inside the photo. receives image_path as input. "
        "The input to this tool should be a string, representing the image_path."
    )
    spec: CaptionerSpec

    def _load(self) -> Any:
        import transformers

        if model_type(self.spec) == "blip":
            return load_hf(self.spec, transformers.BlipForConditionalGeneration, transformers.BlipProcessor, "captioner")
        return load_hf(self.spec, transformers.AutoModelForImageTextToText, transformers.AutoProcessor, "captioner")

    def caption(self, image: Image.Image, prompt: str = "") -> str:
        import torch

        model, processor = self.model()
        kwargs: dict[str, Any] = {"images": image.convert("RGB"), "return_tensors": "pt"}
        if prompt:
            kwargs["text"] = prompt
        inputs = processor(**kwargs).to(self.spec.device)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False)
        return strip_prompt(processor.batch_decode(ids, skip_special_tokens=True)[0], prompt)

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        text = self.caption(image, query)
        return ExpertResult(text or "no caption", (Fact("Caption", text),) if text else ())
