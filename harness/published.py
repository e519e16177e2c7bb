"""Published numbers from the methods' papers and model cards, as data.

They are anchors shown *beside* mmbench's measurements in the report, never mixed into the measured
leaderboard: they come from other models, other data and other protocols. Each row keeps its
verification marker: ``V`` (checked in a primary source), ``V2`` (taken from a secondary
summary of the paper; treat as checked), ``U`` (not checked — confirm before printing it in a paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: What a marker means, printed next to every published table.
MARKERS = {
    "V": "checked in a primary source (paper table, official repository, model card)",
    "V2": "from a secondary summary of the paper (treated as checked)",
    "U": "NOT checked in a primary source; confirm before citing",
}


@dataclass(frozen=True)
class Published:
    """One published result with the settings it was obtained under."""

    system: str
    model: str
    benchmark: str
    family: str  # report section it belongs beside: caption / vqa / multiple_choice / binding
    metric: str
    shots: str
    value: float
    marker: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _many(system: str, model: str, benchmark: str, family: str, metric: str, marker: str,
          shots_values: dict[str, float], note: str = "") -> list[Published]:
    return [Published(system, model, benchmark, family, metric, s, v, marker, note if s == "0" else "")
            for s, v in shots_values.items()]


_MAGIC = {"BLEU-1": 56.8, "BLEU-4": 12.9, "METEOR": 17.4, "ROUGE-L": 39.9, "CIDEr": 49.3, "SPICE": 11.3}
_FLAMINGO_0SHOT = "Flamingo-style 0-shot: prompt holds two text-only examples"

PUBLISHED: tuple[Published, ...] = tuple(
    [Published("MAGIC", "GPT-2 + CLIP ViT-B/32", "COCO Karpathy test", "caption", m, "0", v, "V")
     for m, v in _MAGIC.items()]
    + [Published("ZeroCap (as re-run by MAGIC)", "GPT-2 medium + CLIP ViT-B/32", "COCO", "caption", m, "0", v, "U")
       for m, v in {"BLEU-4": 7.0, "METEOR": 15.4, "CIDEr": 34.5}.items()]
    + _many("Flamingo-3B", "Flamingo-3B", "COCO", "caption", "CIDEr", "V", {"0": 73.0, "4": 85.0, "32": 99.0}, _FLAMINGO_0SHOT)
    + _many("Flamingo-9B", "Flamingo-9B", "COCO", "caption", "CIDEr", "V", {"0": 79.4, "4": 93.1, "32": 106.3}, _FLAMINGO_0SHOT)
    + _many("Flamingo-80B", "Flamingo-80B", "COCO", "caption", "CIDEr", "V2", {"0": 84.3, "4": 103.2, "32": 113.8}, _FLAMINGO_0SHOT)
    + _many("OpenFlamingo-9B v2", "OpenFlamingo-9B v2", "COCO", "caption", "CIDEr", "V", {"0": 79.5, "4": 89.0, "32": 99.5})
    + [Published("BLIP-2", "BLIP-2 ViT-g", "NoCaps val", "caption", "CIDEr", "0", 121.6, "V"),
       Published("BLIP-2", "BLIP-2 ViT-g", "NoCaps val", "caption", "SPICE", "0", 15.8, "V"),
       Published("PICa", "GPT-3", "OK-VQA val", "vqa", "VQA accuracy", "16", 48.0, "V",
                 "5-prompt ensemble, CLIP-selected shots"),
       Published("PromptCap + GPT-3", "GPT-3", "OK-VQA", "vqa", "VQA accuracy", "few", 60.4, "V"),
       Published("PromptCap + GPT-3", "GPT-3", "A-OKVQA", "vqa", "VQA accuracy", "few", 59.6, "V")]
    + _many("Frozen", "Frozen (7B LM)", "VQAv2 val", "vqa", "VQA accuracy", "V2", {"0": 29.5, "1": 35.7, "4": 38.2})
    + _many("Flamingo-3B", "Flamingo-3B", "VQAv2", "vqa", "VQA accuracy", "V", {"0": 49.2, "4": 53.2, "32": 57.1}, _FLAMINGO_0SHOT)
    + _many("Flamingo-9B", "Flamingo-9B", "VQAv2", "vqa", "VQA accuracy", "V", {"0": 51.8, "4": 56.3, "32": 60.4}, _FLAMINGO_0SHOT)
    + _many("Flamingo-3B", "Flamingo-3B", "OK-VQA", "vqa", "VQA accuracy", "V", {"0": 41.2, "4": 43.3, "32": 45.9}, _FLAMINGO_0SHOT)
    + _many("Flamingo-9B", "Flamingo-9B", "OK-VQA", "vqa", "VQA accuracy", "V", {"0": 44.7, "4": 49.3, "32": 51.0}, _FLAMINGO_0SHOT)
    + [Published("BLIP-2", "BLIP-2 FlanT5-XXL", "VQAv2 test-dev", "vqa", "VQA accuracy", "0", 65.0, "V"),
       Published("BLIP-2", "BLIP-2 FlanT5-XXL", "OK-VQA", "vqa", "VQA accuracy", "0", 45.9, "V"),
       Published("BLIP-2", "BLIP-2 FlanT5-XXL", "GQA", "vqa", "accuracy", "0", 44.7, "V"),
       Published("BLIP-2", "BLIP-2 OPT-2.7B", "VQAv2 val", "vqa", "VQA accuracy", "0", 53.5, "V"),
       Published("BLIP-2", "BLIP-2 OPT-2.7B", "OK-VQA", "vqa", "VQA accuracy", "0", 31.7, "V")]
    + _many("OpenFlamingo-9B", "OpenFlamingo-9B", "VQAv2", "vqa", "VQA accuracy", "V", {"0": 52.7, "4": 54.8, "32": 53.3})
    + _many("OpenFlamingo-9B", "OpenFlamingo-9B", "OK-VQA", "vqa", "VQA accuracy", "V", {"0": 37.8, "4": 40.1, "32": 42.4})
    + [Published("GPT-3 CoT", "GPT-3", "ScienceQA", "multiple_choice", "accuracy", "2", 75.17, "V"),
       Published("LLaVA", "LLaVA (fine-tuned)", "ScienceQA", "multiple_choice", "accuracy", "ft", 90.92, "V",
                 "fine-tuned on ScienceQA; human 88.40")]
)


def published_for(family: str) -> list[Published]:
    """Published rows to show beside the measured leaderboard of one task family."""
    return [p for p in PUBLISHED if p.family == family]
