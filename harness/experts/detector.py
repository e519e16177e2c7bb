"""Object-detector expert: ``packaged`` (SSD-MobileNet-v2 COCO, the offline default tool) or a
transformers detector such as DETR (``AutoModelForObjectDetection``: facebook/detr-resnet-50)."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, Fact, HFExpertSpec, load_hf, pixel_box, register_kind
from harness.models.tools import describe_position


class DetectorSpec(HFExpertSpec):
    kind: Literal["detector"] = "detector"
    model: str = "packaged"
    threshold: float = Field(0.5, ge=0, le=1)
    max_items: int = Field(20, ge=1)


Box = tuple[str, float, tuple[int, int, int, int]]


def detections_result(boxes: list[Box], size: tuple[int, int], label: str = "Objects") -> ExpertResult:
    """Detections as the agent reads them (``dog (0.98, left)``) and as converter facts (``dog (left)``)."""
    boxes = sorted(boxes, key=lambda b: -b[1])
    w, h = size

    def where(b: tuple[int, int, int, int]) -> str:
        return describe_position((b[0] / w, b[1] / h, b[2] / w, b[3] / h))

    if not boxes:
        return ExpertResult("no objects detected")
    text = "; ".join(f"{lab} ({score:.2f}, {where(b)})" for lab, score, b in boxes)
    facts = tuple(Fact(label, f"{lab} ({where(b)})", score, phrase=lab) for lab, score, b in boxes)
    return ExpertResult(text, facts, tuple(boxes))


@register_kind(DetectorSpec)
class Detector(Expert):
    default_name = "Detect Objects"
    default_description = (
        "useful when you want to know which objects are in the image and where they are. "
        "The input to this tool should be a string, representing the image_path."
    )
    spec: DetectorSpec

    def _load(self) -> Any:
        if self.spec.model == "packaged":
            return None
        import transformers

        return load_hf(self.spec, transformers.AutoModelForObjectDetection, transformers.AutoImageProcessor, "detector")

    def model(self) -> Any:
        return None if self.spec.model == "packaged" else super().model()

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        if self.spec.model == "packaged":
            out = self.toolbox().run("object_detector", _content_id(image), image,
                                     **({"score_threshold": self.spec.threshold} if self.spec.threshold < 0.4 else {}))
            w, h = image.size
            boxes = [(d.label, d.score, pixel_box((d.box[0] * w, d.box[1] * h, d.box[2] * w, d.box[3] * h), image.size))
                     for d in out.items if d.score >= self.spec.threshold]
            return detections_result(boxes[: self.spec.max_items], image.size)
        import torch

        model, processor = self.model()
        rgb = image.convert("RGB")
        inputs = processor(images=rgb, return_tensors="pt").to(self.spec.device)
        with torch.inference_mode():
            out = model(**inputs)
        res = processor.post_process_object_detection(
            out, threshold=self.spec.threshold, target_sizes=[(rgb.height, rgb.width)]
        )[0]
        boxes = [
            (str(model.config.id2label[int(lab)]), round(float(s), 4), pixel_box(b.tolist(), rgb.size))
            for s, lab, b in zip(res["scores"], res["labels"], res["boxes"])
        ]
        boxes.sort(key=lambda b: -b[1])
        return detections_result(boxes[: self.spec.max_items], rgb.size)


def _content_id(image: Image.Image) -> str:
    from harness.experts.base import image_content_key

    return image_content_key(image)



