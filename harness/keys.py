"""Cache keys of answers: everything that determines a sample's answer, and nothing else.

A key hashes the paradigm's own fingerprint with the fingerprints of only the backbones it
``uses``, the task's fingerprint, the sample's id, image and annotation digests, its rendered
prompt, its demonstrations, the generation settings, seed and trial. Changing anything here
changes every cached answer's key: ``tests/test_keys.py`` pins known keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from harness.cache import sample_key
from harness.config import RunConfig
from harness.interface import Paradigm
from harness.plan import Unit
from harness.request_builder import render_prompt
from tasks.base import Sample


@dataclass(frozen=True)
class KeyedSample:
    """A sample of a unit with what identifies its answer: its cache key, prompt and demonstrations."""

    sample: Sample
    key: str
    prompt: str
    shots: tuple[Sample, ...]


def paradigm_fingerprint(paradigm: Paradigm, backbone_fingerprints: Mapping[str, str]) -> dict[str, Any]:
    """The paradigm's own fingerprint plus those of the backbones it declares in ``uses``."""
    return {
        "paradigm": paradigm.fingerprint(),
        "backbones": {k: backbone_fingerprints[k] for k in type(paradigm).uses},
    }


def keyed_sample(
    unit: Unit, paradigm_fp: dict[str, Any], s: Sample, shots: tuple[Sample, ...], config: RunConfig
) -> KeyedSample:
    """Sample ``s`` of ``unit`` with its prompt and cache key, given its demonstrations ``shots``."""
    spec = unit.task.spec
    prompt = render_prompt(spec, s)
    key = sample_key(
        paradigm=paradigm_fp,
        task=unit.task.fingerprint,
        sample=s.sample_id,
        image=s.image_digest(),
        annotation=s.annotation_digest(),
        prompt=prompt,
        shots=[(x.sample_id, x.gold_text, x.image_digest(), x.annotation_digest()) for x in shots],
        generation=config.generation.model_dump(mode="json"),
        max_new_tokens=spec.max_new_tokens,
        seed=config.seed,
        trial=unit.trial,
        # how the demonstrations were chosen (left out at 0 shots: those keys stay as they were)
        **({"shot_strategy": config.in_context.strategy} if unit.shots > 0 else {}),
    )
    return KeyedSample(s, key, prompt, shots)
