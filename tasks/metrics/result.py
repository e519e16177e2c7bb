"""The metric result type returned by every scorer in this package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from tasks.base import MetricResult


@dataclass(frozen=True)
class MetricReport(MetricResult):
    """A :class:`~tasks.base.MetricResult` plus how the numbers were made.

    ``info`` records choices that change the numbers (tokenizer, VQA mode, CI method, matching
    rule), so a result read later says what it is. Being a subclass, it goes wherever a
    ``MetricResult`` goes.
    """

    info: Mapping[str, str] = field(default_factory=dict)
