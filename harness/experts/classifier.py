"""Image-classifier expert: ``packaged`` (EfficientNet-Lite3 ImageNet, the offline default) or a
transformers classifier (``AutoModelForImageClassification``: ViT, ConvNeXt, ...). PICa's "tags"."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from harness.experts.base import Expert, ExpertResult, Fact, HFExpertSpec, image_content_key, load_hf, register_kind


class ClassifierSpec(HFExpertSpec):
    kind: Literal["classifier"] = "classifier"
    model: str = "packaged"
    top_k: int = Field(5, ge=1, le=100)
    min_score: float = Field(0.05, ge=0, le=1)


@register_kind(ClassifierSpec)
class Classifier(Expert):
    default_name = "Classify Image"
    default_description = (
        "useful when you want to know the main category of the whole image (its most likely labels). "
        "The input to this tool should be a string, representing the image_path."
    )
    spec: ClassifierSpec

    def _load(self) -> Any:
        if self.spec.model == "packaged":
            return None
        import transformers

        return load_hf(self.spec, transformers.AutoModelForImageClassification, transformers.AutoImageProcessor, "classifier")

    def labels(self, image: Image.Image) -> list[tuple[str, float]]:
        s = self.spec
        if s.model == "packaged":
            kw = {"top_k": s.top_k, "min_score": s.min_score} if (s.top_k > 5 or s.min_score < 0.05) else {}
            out = self.toolbox().run("image_classifier", image_content_key(image), image, **kw)
            return [(c.label, c.score) for c in out.items if c.score >= s.min_score][: s.top_k]
        import torch

        model, processor = self.model()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(s.device)
        with torch.inference_mode():
            probs = model(**inputs).logits[0].softmax(-1)
        top = probs.topk(min(s.top_k, probs.numel()))
        return [
            (str(model.config.id2label[int(i)]).split(",")[0].strip(), round(float(p), 4))
            for p, i in zip(top.values, top.indices)
            if float(p) >= s.min_score
        ]

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        items = self.labels(image)
        if not items:
            return ExpertResult("no confident class")
        return ExpertResult(
            "; ".join(f"{lab} ({p:.2f})" for lab, p in items),
            tuple(Fact("Scene tags", lab, p) for lab, p in items),
        )
