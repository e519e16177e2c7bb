"""The one batching policy (harness/chunking.py): a failing chunk is answered one by one, so only
the failing item fails, with its own reason, classified transient or deterministic; failures that
are not an item's propagate. The paradigms' own tests (MAGIC, ZeroCap, trained adapter) check the
same on tiny real models."""

from __future__ import annotations

import errno
from typing import Sequence

import pytest

from harness.chunking import answer_in_chunks
from harness.interface import Answer, RetryableFailure

LIMIT = 12  # the longest padded row the "model" below accepts


def padded_upper(items: Sequence[str]) -> list[Answer]:
    """A batched function that, like a model's forward pass, pads its rows to the longest one and
    fails as a whole when that is too long; an unreadable item fails the batch with an I/O error."""
    width = max(len(x) for x in items)
    if width > LIMIT:
        raise ValueError(f"padded row of {width} characters is longer than {LIMIT}")
    for x in items:
        if x.startswith("eio"):
            raise OSError(errno.EIO, "input/output error", x)
        if x.startswith("missing"):
            raise FileNotFoundError(errno.ENOENT, "no such file", x)
    return [Answer(text=x.ljust(width, ".").upper(), trace={"width": width}) for x in items]


def test_one_overlong_item_fails_alone_and_its_neighbours_equal_their_single_answers() -> None:
    items = ["cat", "a dog", "x" * 20, "owl", "bird", "ant"]
    got = answer_in_chunks(items, 4, padded_upper)
    assert [a.error is None for a in got] == [True, True, False, True, True, True]
    assert got[2].error == "ValueError: padded row of 20 characters is longer than 12"
    assert not got[2].transient  # deterministic: cached with its reason
    for i in (0, 1, 3):  # the bad item's chunk: each neighbour answered alone, as a single run would
        assert got[i].text == padded_upper([items[i]])[0].text
    # the next chunk, without a bad item, stayed batched (padded to its own longest row)
    assert [a.text for a in got[4:]] == ["BIRD", "ANT."]


def test_failures_are_classified_transient_or_deterministic() -> None:
    got = answer_in_chunks(["cat", "eio-1", "missing", "dog"], 4, padded_upper)
    assert got[1].error.startswith("OSError") and got[1].transient  # EIO may not repeat: never cached
    assert got[2].error.startswith("FileNotFoundError") and not got[2].transient  # absent input: cached
    assert (got[0].text, got[3].text) == ("CAT", "DOG") and not got[0].error and not got[3].error


@pytest.mark.parametrize("exc", [RetryableFailure("endpoint down"), KeyboardInterrupt()])
@pytest.mark.parametrize("when", ["batch", "alone"])
def test_what_is_not_an_items_failure_propagates(exc: BaseException, when: str) -> None:
    calls: list[int] = []

    def answer(items: Sequence[str]) -> list[Answer]:
        calls.append(len(items))
        if when == "batch" or len(items) == 1:
            if "bad" in items:
                raise exc
        if len(items) > 1 and when == "alone":
            raise ValueError("a batch failure that sends the items one by one")
        return [Answer(text=x) for x in items]

    with pytest.raises(type(exc)):
        answer_in_chunks(["ok", "bad", "ok2"], 3, answer)
    assert calls[0] == 3 and (when == "batch") == (len(calls) == 1)


def test_wrong_answer_count_sends_items_one_by_one_and_refused_items_are_never_sent() -> None:
    sent: list[list[str]] = []

    def drops_last(items: Sequence[str]) -> list[Answer]:
        sent.append(list(items))
        return [Answer(text=x) for x in items][: max(1, len(items) - 1)]

    got = answer_in_chunks(["a", "", "b", "c"], 8, drops_last,
                           refuse=lambda x: "empty item" if not x else None)
    assert [a.text for a in got] == ["a", "", "b", "c"]
    assert got[1].error == "empty item" and not got[1].transient
    assert sent == [["a", "b", "c"], ["a"], ["b"], ["c"]]


def test_answers_without_latency_get_their_share_of_the_call() -> None:
    def answer(items: Sequence[str]) -> list[Answer]:
        return [Answer(text=x, latency_s=0.5 if x == "timed" else 0.0) for x in items]

    got = answer_in_chunks(["timed", "untimed"], 2, answer)
    assert got[0].latency_s == 0.5 and got[1].latency_s > 0.0
    with pytest.raises(ValueError):
        answer_in_chunks(["a"], 0, answer)
