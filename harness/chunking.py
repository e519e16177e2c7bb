"""The one batching policy: answer items chunk by chunk; a chunk that raises is answered one by one.

The runner and every paradigm that batches (MAGIC, ZeroCap, the trained adapters, the pretrained
checkpoints) go through :func:`answer_in_chunks`, so they treat a failing batch the same way:

- the items of a batch are independent, so when the batched call raises (an overlong row, a padded
  batch too large for memory, a corrupt image) each item is answered alone: its neighbours get the
  answer they would get alone, and only the failing item fails, with its own reason;
- that failure is classified by :func:`harness.failures.is_transient` (``Answer.from_exception``):
  a transient one (out of memory, I/O error, timeout) is never cached, a deterministic one is;
- :class:`~harness.interface.RetryableFailure` (no answer can be had for a reason outside the
  sample, e.g. the endpoint is down) and ``KeyboardInterrupt`` are not a sample's failure: they
  propagate, and nothing of the batch is answered.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

from harness.interface import Answer, RetryableFailure

T = TypeVar("T")

#: Answers one chunk of items: one Answer per item, in order (it may raise).
AnswerChunk = Callable[[Sequence[T]], Sequence[Answer]]


def answer_in_chunks(
    items: Sequence[T],
    size: int,
    answer: AnswerChunk,
    *,
    refuse: Callable[[T], str | None] | None = None,
    what: str = "answer",
) -> list[Answer]:
    """``answer`` over consecutive chunks of ``size`` items; one Answer per item, in order.

    ``refuse(item)`` may name a reason an item cannot be answered (e.g. no image): that item fails
    with it (deterministic, cached) and is never sent, so its neighbours stay batched. An answer
    whose ``latency_s`` is 0 gets its share of its call's wall time. ``what`` names the batched
    function in the error when it returns the wrong number of answers.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    out: list[Answer | None] = [None] * len(items)
    sent: list[int] = []
    for i, item in enumerate(items):
        reason = refuse(item) if refuse is not None else None
        if reason is None:
            sent.append(i)
        else:
            out[i] = Answer.failed(reason)
    for start in range(0, len(sent), size):
        idx = sent[start : start + size]
        chunk = [items[i] for i in idx]
        got: list[Answer] | None = None
        try:
            got = _call(answer, chunk, what)
        except (KeyboardInterrupt, RetryableFailure):
            raise
        except Exception as exc:  # noqa: BLE001 - isolated below, classified by harness.failures
            if len(chunk) == 1:
                got = [Answer.from_exception(exc)]
        if got is None:
            # Outside the handler: an item's own exception must not chain to the batch's (is_transient
            # reads the chain, so a batch's OOM would make every later deterministic failure transient).
            got = [_alone(answer, x, what) for x in chunk]
        for i, a in zip(idx, got):
            out[i] = a
    return [a for a in out if a is not None]


def _alone(answer: AnswerChunk, item: T, what: str) -> Answer:
    try:
        return _call(answer, [item], what)[0]
    except (KeyboardInterrupt, RetryableFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - this item's own failure
        return Answer.from_exception(exc)


def _call(answer: AnswerChunk, chunk: Sequence[T], what: str) -> list[Answer]:
    start = time.perf_counter()
    answers = list(answer(chunk))
    if len(answers) != len(chunk):
        raise RuntimeError(f"{what} returned {len(answers)} answers for {len(chunk)} requests")
    share = (time.perf_counter() - start) / len(chunk)
    for a in answers:
        if not a.latency_s:
            a.latency_s = share
    return answers
