"""Open-vocabulary detector expert: OWL-ViT (``OwlViTForObjectDetection``) finds the objects a text names.

As an agent tool (Visual ChatGPT's "Detect the Give Object") the input is the image path and the
object names; as a converter it looks for the configured ``queries``.
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, HFExpertSpec, load_hf, pixel_box, register_kind
from harness.experts.detector import detections_result


class OpenVocabDetectorSpec(HFExpertSpec):
    kind: Literal["open_vocab_detector"] = "open_vocab_detector"
    threshold: float = Field(0.1, ge=0, le=1)
    max_items: int = Field(20, ge=1)
    queries: tuple[str, ...] = ()  # what to look for when no query is given (converter use)


def split_queries(text: str) -> list[str]:
    return [q.strip() for q in text.replace(";", ",").split(",") if q.strip()]


@register_kind(OpenVocabDetectorSpec)
class OpenVocabDetector(Expert):
    default_name = "Detect the Given Object"
    default_description = (
        "useful when you only want to detect or find out given objects in the picture. The input to this tool "
        "should be a comma separated string of two, representing the image_path, the text description of the "
        "object to be found"
    )
    query_meaning = "the names of the objects to find"
    spec: OpenVocabDetectorSpec

    def _load(self) -> Any:
        import transformers

        return load_hf(self.spec, transformers.OwlViTForObjectDetection, transformers.OwlViTProcessor, "open-vocabulary detector")

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        import torch

        names = split_queries(query) or list(self.spec.queries)
        if not names:
            raise ValueError(f"{self.name} needs the names of the objects to find (or 'queries' in its config)")
        model, processor = self.model()
        rgb = image.convert("RGB")
        inputs = processor(text=[names], images=rgb, return_tensors="pt").to(self.spec.device)
        with torch.inference_mode():
            out = model(**inputs)
        res = processor.image_processor.post_process_object_detection(
            out, threshold=self.spec.threshold, target_sizes=torch.tensor([[rgb.height, rgb.width]])
        )[0]
        boxes = [
            (names[int(lab)], round(float(s), 4), pixel_box(b.tolist(), rgb.size))
            for s, lab, b in zip(res["scores"], res["labels"], res["boxes"])
        ]
        boxes.sort(key=lambda b: -b[1])
        result = detections_result(boxes[: self.spec.max_items], rgb.size, label="Found")
        if not boxes:
            return ExpertResult(f"none of {', '.join(names)} found")
        return result
