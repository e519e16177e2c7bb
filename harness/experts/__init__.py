"""Vision experts configured per run (``models.experts``): one file per kind, one registry per run.

Kinds: captioner, vqa, detector, open_vocab_detector, ocr, classifier, reference_captions (the
oracle). Adding a kind = one file here with a spec model and an :class:`Expert` subclass decorated
with :func:`register_kind`, plus its import below (see docs/paradigms/tool_agent.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Sequence, Union

from pydantic import Field

from harness.experts import captioner, classifier, detector, ocr, open_vocab_detector, reference_captions, vqa
from harness.experts.base import (
    Expert,
    ExpertRegistry,
    ExpertResult,
    ExpertSpecBase,
    Fact,
    OracleLeak,
    expert_kinds,
)

ExpertSpec = Annotated[
    Union[
        captioner.CaptionerSpec,
        vqa.VQASpec,
        detector.DetectorSpec,
        open_vocab_detector.OpenVocabDetectorSpec,
        ocr.OcrSpec,
        classifier.ClassifierSpec,
        reference_captions.ReferenceCaptionsSpec,
    ],
    Field(discriminator="kind"),
]


def build_experts(specs: Sequence[ExpertSpecBase], tools: Callable[[], Any] | None = None) -> ExpertRegistry:
    """The run's registry (nothing loads here); ``tools`` gives the run's ToolBox to packaged experts."""
    kinds = expert_kinds()
    return ExpertRegistry(kinds[s.kind][1](s, tools) for s in specs)


def check_names(specs: Sequence[ExpertSpecBase]) -> None:
    """Offline checks: unique names (case-insensitive); an oracle's source is a registered caption task."""
    build_experts(specs)
    for s in specs:
        if isinstance(s, reference_captions.ReferenceCaptionsSpec):
            reference_captions.ReferenceCaptions(s).source_task()


def perception(specs: Sequence[ExpertSpecBase]) -> str:
    """How a run perceives images, for its parameters: oracle / experts / packaged."""
    if any(s.kind == "reference_captions" for s in specs):
        return "oracle"
    return "experts" if specs else "packaged"


def describe_setup(specs: Sequence[ExpertSpecBase]) -> list[str]:
    """``name=kind:model`` per configured expert (``source`` for the oracle), for run parameters."""
    reg = build_experts(specs)
    out = []
    for e in reg:
        s = e.spec
        what = getattr(s, "model", None) or getattr(s, "source", "")
        out.append(f"{e.name}={e.kind}:{what}")
    return out


__all__ = [
    "Expert", "ExpertRegistry", "ExpertResult", "ExpertSpec", "ExpertSpecBase", "Fact", "OracleLeak",
    "build_experts", "check_names", "describe_setup", "expert_kinds", "perception",
]  # fmt: skip
