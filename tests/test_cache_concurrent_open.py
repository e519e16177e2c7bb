"""Several processes opening one fresh cache at once (torchrun ranks) must all succeed."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from harness.cache import ResultCache


def _open_and_write(path: str, rank: int, start: "mp.synchronize.Event", out: "mp.Queue") -> None:
    start.wait()
    try:
        with ResultCache(path) as cache:
            cache.put_many("unit", [(f"k{rank}", f"s{rank}", {"rank": rank})])
        out.put((rank, None))
    except Exception as err:  # reported to the parent, which fails the test
        out.put((rank, repr(err)))


@pytest.mark.slow
def test_many_processes_open_a_fresh_cache_at_the_same_moment(tmp_path: Path) -> None:
    # fork starts the openers close enough together to hit the race (about one trial in ten
    # failed with 'database is locked' before the setup statements were retried).
    ctx = mp.get_context("fork")
    for trial in range(40):
        path = str(tmp_path / f"t{trial}" / "cache.sqlite")
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(path, r, start, out)) for r in range(4)]
        for p in procs:
            p.start()
        start.set()
        results = dict(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert results == {r: None for r in range(4)}
        with ResultCache(path) as cache:
            assert cache.count("unit") == 4
