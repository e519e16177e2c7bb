"""OCR expert: the packaged RapidOCR (PP-OCRv4) reader shared with the offline tools.

Hub OCR checkpoints in transformers (TrOCR) read one cropped text line, not a scene, so they do
not fit this kind; a scene-text model is a one-file addition (see docs/paradigms/tool_agent.md).
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, ExpertSpecBase, Fact, image_content_key, register_kind


class OcrSpec(ExpertSpecBase):
    kind: Literal["ocr"] = "ocr"
    model: Literal["packaged"] = "packaged"
    min_score: float = Field(0.5, ge=0, le=1)
    max_lines: int = Field(10, ge=1)


@register_kind(OcrSpec)
class OcrExpert(Expert):
    default_name = "Read Text"
    default_description = (
        "useful when you need the words written in the image (signs, labels, pages). "
        "The input to this tool should be a string, representing the image_path."
    )
    spec: OcrSpec

    def _load(self) -> Any:
        return None

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        kw = {"min_score": self.spec.min_score} if self.spec.min_score < 0.5 else {}
        out = self.toolbox().run("text_reader", image_content_key(image), image, **kw)
        lines = [t for t in out.items if t.score >= self.spec.min_score][: self.spec.max_lines]
        if not lines:
            return ExpertResult("no text found")
        facts = tuple(Fact("Text in image", f"'{t.text}'", t.score, phrase=f"the text '{t.text}'") for t in lines)
        return ExpertResult("\n".join(t.text for t in lines), facts)
