"""What the run loop shows and times: a per-unit progress bar and seconds spent per phase."""

from __future__ import annotations

import time
from typing import Any


class Stopwatch:
    """Seconds spent per phase, so the harness's own overhead can be reported against model time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> "_Lap":
        return _Lap(self, phase)

    def overhead_fraction(self) -> float:
        """(cache + metrics + logging + planning) / model time."""
        model = self.seconds.get("model", 0.0)
        own = sum(self.seconds.get(k, 0.0) for k in ("cache", "logging", "prepare_keys"))
        return own / model if model > 0 else float("nan")


class _Lap:
    def __init__(self, watch: Stopwatch, phase: str) -> None:
        self.watch, self.phase = watch, phase

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.watch.seconds[self.phase] = self.watch.seconds.get(self.phase, 0.0) + time.perf_counter() - self.start


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over a unit's samples (``initial`` already cached), or one that shows nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", leave=True, dynamic_ncols=True)
