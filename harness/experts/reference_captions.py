"""The oracle expert: human captions of the image, from a caption source the config names.

Replacing a paradigm's perception (captioner, detector, ...) with this expert measures its
reasoning ceiling; the gap to the real run is its perception loss (PICa ran this ablation with
ground-truth COCO captions as context). The source is any caption task of the task registry
(``photos_caption``, ``flickr8k_caption``, ``coco_caption_local`` with the user's own COCO
captions, ...): its samples' images are hashed by content, so the oracle answers for the same
pixels whatever task the image comes from (a VQA question on a COCO image gets that image's COCO
captions).

It never shows a sample the references it is scored against: the runner hands every request its
scored references as ``withheld`` and :meth:`~harness.experts.base.ExpertRegistry.run` removes
equal captions; when none would remain the sample fails (``OracleLeak``) instead of being answered
without context.
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from typing import Sequence

from harness.experts.base import Expert, ExpertResult, ExpertSpecBase, Fact, image_content_key, register_kind, withhold


class ReferenceCaptionsSpec(ExpertSpecBase):
    kind: Literal["reference_captions"] = "reference_captions"
    source: str = Field(min_length=1, description="a caption task whose references are the oracle's captions")
    splits: tuple[str, ...] | None = None  # default: the task's split and its support split
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    max_captions: int = Field(5, ge=1, le=50)


@register_kind(ReferenceCaptionsSpec)
class ReferenceCaptions(Expert):
    # Same face as a captioner: in the ablation only what stands behind the tool changes.
    default_name = "Get Photo Description"
    default_description = (
        "useful when you want to know what is inside the photo. receives image_path as input. "
        "The input to this tool should be a string, representing the image_path."
    )
    oracle = True
    spec: ReferenceCaptionsSpec

    def source_task(self) -> Any:
        from tasks.spec import get_task

        try:
            task = get_task(self.spec.source)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"reference_captions source: {exc}") from None
        if task.kind != "caption":
            raise ValueError(f"reference_captions source {self.spec.source!r} is a {task.kind} task, not a caption task")
        return task

    def _splits(self, task: Any) -> tuple[str, ...]:
        if self.spec.splits:
            return self.spec.splits
        return tuple(s for s in (task.split, task.support_split) if s)

    def _load(self) -> dict[str, tuple[str, ...]]:
        """content hash -> captions, over every image of the source's splits."""
        from tasks.datasets import load_dataset

        task = self.source_task()
        options = {**task.dataset_options, **self.spec.dataset_options}
        table: dict[str, list[str]] = {}
        for split in self._splits(task):
            for s in load_dataset(task.dataset, split, options).samples:
                try:
                    img = s.load_image()
                except Exception:  # noqa: BLE001 - an unreadable source image just has no captions
                    continue
                caps = table.setdefault(image_content_key(img), [])
                caps += [c for c in s.references if c not in caps]
        return {k: tuple(v) for k, v in table.items()}

    def captions(self, image: Image.Image) -> tuple[str, ...]:
        return self.model().get(image_content_key(image), ())

    def _run(self, image: Image.Image, query: str) -> ExpertResult:
        caps = self.captions(image)
        if not caps:
            raise LookupError(f"{self.name}: this image is not in the caption source {self.spec.source!r}")
        # All captions are kept here: withholding the sample's own references happens per request
        # before the cut to max_captions (ExpertRegistry.run), so a withheld one frees its slot.
        facts = tuple(Fact("Caption", c.strip().rstrip(".").strip()) for c in caps)
        return ExpertResult("\n".join(f.text for f in facts), facts)

    def finalize(self, result: ExpertResult, withheld: Sequence[str]) -> ExpertResult:
        kept = withhold(result, withheld, self.name).facts[: self.spec.max_captions]
        return ExpertResult("\n".join(f.text for f in kept), kept)
