"""MM-REACT's image-understanding expert: caption, tags, objects, faces and OCR in one observation.

MM-REACT's default call ("Assistant, what objects do you see in this image? <path>") went to one
Azure service whose reply listed the image size, a description, object boxes in pixels, tags and
faces; its OCR expert read the text. This composite renders the same layout from the run's experts:
the first configured captioner (or the oracle), detector, classifier and OCR expert, each falling
back to the packaged tool of that role (no packaged captioner exists); faces always come from the
packaged face detector. A part that fails is reported in its section, never dropped silently.
"""

from __future__ import annotations

from typing import Any, Callable

from harness.experts.detector import Detector, DetectorSpec
from harness.experts.classifier import Classifier, ClassifierSpec
from harness.experts.ocr import OcrExpert, OcrSpec


def _first(backbones: Any, *kinds: str) -> Any:
    experts = getattr(backbones, "experts", None)
    found = experts.of_kind(*kinds) if experts is not None else []
    return found[0] if found else None


def _section(title: str, fn: Callable[[], list[str]]) -> str:
    try:
        lines = fn()
    except Exception as exc:  # noqa: BLE001 - one failing expert must not hide the others
        return f"{title}\n({type(exc).__name__}: {exc})"
    return f"{title}\n" + "\n".join(lines) if lines else ""


def image_understanding(backbones: Any, ref: Any) -> str:
    """The combined observation for one :class:`~harness.agent_tools.ImageRef`."""
    image = ref.image
    w, h = image.size
    tools = lambda: backbones.tools  # noqa: E731
    reg = getattr(backbones, "experts", None)

    def run(expert: Any) -> Any:
        if reg is not None and expert.name in reg and reg.get(expert.name) is expert:
            return reg.run(expert.name, image, withheld=ref.withheld)
        return expert(image)

    head = f"This is an image ({w} x {h})"
    cap = _first(backbones, "captioner", "reference_captions")
    if cap is not None:
        try:
            facts = run(cap).facts
            if facts:
                head += f" with description {facts[0].text}"
        except Exception as exc:  # noqa: BLE001
            head += f" (description unavailable: {type(exc).__name__}: {exc})"
    det = _first(backbones, "detector") or Detector(DetectorSpec(), tools)
    cls = _first(backbones, "classifier") or Classifier(ClassifierSpec(), tools)
    ocr = _first(backbones, "ocr") or OcrExpert(OcrSpec(), tools)

    def objects() -> list[str]:
        return [f"{lab} {b[0]}, {b[1]}, {b[2]}, {b[3]}" for lab, _, b in run(det).boxes]

    def tags() -> list[str]:
        return [f.text for f in run(cls).facts]

    def faces() -> list[str]:
        out = backbones.tools.run("face_detector", ref.image_id, image)
        return [
            f"face {round(f.box[0] * w)}, {round(f.box[1] * h)}, {round(f.box[2] * w)}, {round(f.box[3] * h)}"
            for f in out.items
        ]

    def text() -> list[str]:
        return [f.text.strip("'") for f in run(ocr).facts]

    sections = [
        _section("List of object descriptions, and their location in this image:", objects),
        _section("List of object tags seen in this image:", tags),
        _section("List of people faces, and their location in this image:", faces),
        _section("List of texts (words) seen in this image:", text),
    ]
    body = "\n\n".join(s for s in sections if s)
    return f"{head}.\n\n{body}" if body else f"{head}.\nNothing else was recognised in this image."
