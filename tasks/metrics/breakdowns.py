"""Per-group accuracies of a task, as its paper's results table breaks them down.

``scienceqa``: the columns of ScienceQA's table (and its scorer): subject — NAT (natural
science), SOC (social science), LAN (language science); context — TXT (has a text hint), IMG
(has an image), NO (neither); grade — G1-6 and G7-12; computed from the per-sample scores of the
task's metric. TXT and IMG overlap (a question with both counts in both), as in the paper.
A group with no sample is left out rather than reported as 0.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from tasks.base import MetricResult, Sample

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def _grade(meta: Mapping[str, object]) -> int | None:
    text = str(meta.get("grade", "")).lower().removeprefix("grade")
    return int(text) if text.isdigit() else None


def scienceqa_groups(s: Sample) -> list[str]:
    """The table columns a ScienceQA sample counts in."""
    m = s.meta
    groups = []
    if str(m.get("subject", "")) in SUBJECTS:
        groups.append(SUBJECTS[str(m["subject"])])
    hint = str(m.get("hint", "") or "").strip()
    has_image = bool(m.get("has_image", True))  # hub rows are the image subset
    has_text = bool(m.get("has_text", bool(hint)))
    if has_text:
        groups.append("TXT")
    if has_image:
        groups.append("IMG")
    if not has_text and not has_image:
        groups.append("NO")
    g = _grade(m)
    if g is not None:
        groups.append("G1-6" if g <= 6 else "G7-12")
    return groups


GROUPERS: dict[str, Callable[[Sample], list[str]]] = {"scienceqa": scienceqa_groups}
ORDER = {"scienceqa": ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")}


def breakdown(name: str, samples: Sequence[Sample], result: MetricResult) -> MetricResult:
    """``{primary}_{group}`` means and ``n_{group}`` counts from ``result``'s per-sample scores."""
    if name not in GROUPERS:
        raise ValueError(f"unknown breakdown {name!r}; choices: {sorted(GROUPERS)}")
    scores = result.per_sample.get(result.primary)
    if scores is None or len(scores) != len(samples):
        raise ValueError(f"breakdown {name!r} needs per-sample scores of {result.primary!r} for every sample")
    members: dict[str, list[float]] = {}
    for s, score in zip(samples, scores):
        for g in GROUPERS[name](s):
            members.setdefault(g, []).append(float(score))
    values: dict[str, float] = {}
    for g in ORDER[name]:
        if g in members:
            values[f"{result.primary}_{g}"] = float(np.mean(members[g]))
            values[f"n_{g}"] = float(len(members[g]))
    return MetricResult(values=values)
