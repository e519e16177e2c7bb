"""harness.distributed over a real 2-process gloo group: JSON on the wire, rank 0's files reaching a rank
with its own model cache byte for byte, heartbeats outlasting the collective timeout while rank 0
prepares, a rank's error reaching the others, and ranks that planned different keys stopping."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str, timeout_s: float) -> None:
    """Every scenario in turn in one process group (spawning processes is the slow part)."""
    import torch.distributed as dist

    import harness.distributed as hd

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=timeout_s))
    d = hd.Distributed(rank, 2, rank, 2, "gloo", timeout_s)
    for name, scenario in SCENARIOS.items():
        out: dict = {}
        try:
            scenario(d, Path(tmp), out)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["trace"] = traceback.format_exc()
        (Path(tmp) / f"{name}{rank}.json").write_text(json.dumps(out))
    d.close()


def _share(d, tmp: Path, out: dict) -> None:
    root = tmp / f"cache{d.rank}"  # each rank its own model cache
    folder = root / "adapters" / "k1"
    folder.mkdir(parents=True, exist_ok=True)
    prepared = []
    if d.rank == 1:  # a stale partial copy: one file differs, one is missing, one is identical
        (folder / "final.safetensors").write_bytes(b"old")
        (folder / "same.json").write_text("{}")

    def prepare() -> None:
        prepared.append(True)
        if d.rank == 0:
            (folder / "sub").mkdir(exist_ok=True)
            (folder / "final.safetensors").write_bytes(os.urandom(3 * 1024 + 7))
            (folder / "sub" / "features.bin").write_bytes(b"")
            (folder / "same.json").write_text("{}")
            (folder / "half.123.tmp").write_text("a temporary is never sent")
        else:  # what a paradigm does: finds the finished files and loads them
            out["seen"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    d.prepare_in_order(prepare, lambda: folder, root, "frozen")
    out["manifest"] = hd_manifest(folder)
    out["prepared"] = len(prepared)


def hd_manifest(folder: Path) -> dict:
    from harness.distributed import _manifest

    return _manifest(folder)


def _slow_prepare(d, tmp: Path, out: dict) -> None:
    """rank 0 prepares for 2.5× the collective timeout; heartbeats keep rank 1 waiting."""
    d.prepare_in_order(lambda: time.sleep(2.5 * d.timeout_s) if d.rank == 0 else None, lambda: None, tmp, "slow")
    out["ok"] = True


def _worker_fails_after(d, tmp: Path, out: dict) -> None:
    stored: list = []
    try:
        _worker_fails_inner(d, stored)
    finally:
        out["stored"] = stored


def _worker_fails_inner(d, stored: list) -> None:
    def compute() -> list:
        if d.rank == 1:
            raise RuntimeError("LLM endpoint refused the key")
        return [["k0", {"text": "a"}, False]]

    d.answer_round(compute, stored.extend, "u")


def _plans_differ(d, tmp: Path, out: dict) -> None:
    keys = ["a", "b"] if d.rank == 0 else ["a", "c"]
    out["missing"] = d.agree_missing("u", keys, ["b"] if d.rank == 0 else None)


def _rounds(d, tmp: Path, out: dict) -> None:
    missing = d.agree_missing("u", ["k%d" % i for i in range(7)], ["k%d" % i for i in (1, 2, 3, 4, 6)] if d.rank == 0 else None)
    stored: list = []
    mine: list = []
    for start, stop in d.rounds(len(missing), 2):
        chunk = missing[start:stop]
        mine.append(chunk)
        d.answer_round(lambda chunk=chunk: [[k, {"text": k.upper(), "n": 0.1}, k == "k6"] for k in chunk], stored.extend, "u")
    out.update(stored=stored, mine=mine)


SCENARIOS = {"rounds": _rounds, "share": _share, "worker_fails": _worker_fails_after,
             "plans_differ": _plans_differ, "slow_prepare": _slow_prepare}


TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(_port(), str(tmp), TIMEOUT_S), nprocs=2, start_method="spawn")
    return {name: [json.loads((tmp / f"{name}{r}.json").read_text()) for r in (0, 1)] for name in SCENARIOS}


def test_rank0_files_reach_a_rank_with_its_own_cache_byte_for_byte_before_it_prepares(outcomes):
    r0, r1 = outcomes["share"]
    assert "error" not in r0 and "error" not in r1, (r0.get("trace"), r1.get("trace"))
    assert r0["prepared"] == r1["prepared"] == 1
    assert r1["manifest"] == {k: v for k, v in r0["manifest"].items() if not k.endswith(".tmp")}
    assert r1["seen"] == ["final.safetensors", "same.json", "sub/features.bin"]  # before rank 1's prepare ran


def test_heartbeats_keep_waiting_ranks_alive_through_a_prepare_longer_than_the_timeout(outcomes):
    r0, r1 = outcomes["slow_prepare"]
    assert r0.get("ok") and r1.get("ok"), (r0.get("trace"), r1.get("trace"))


def test_a_ranks_error_reaches_rank0_which_still_caches_the_others_answers(outcomes):
    r0, r1 = outcomes["worker_fails"]
    assert r0["stored"] == [["k0", {"text": "a"}, False]]
    assert "rank 1 stopped the run" in r0["error"] and "LLM endpoint refused the key" in r0["error"]
    assert r1["error"] == "RuntimeError: LLM endpoint refused the key"


def test_ranks_that_planned_other_keys_stop_before_computing(outcomes):
    r0, r1 = outcomes["plans_differ"]
    for r in (r0, r1):
        assert "rank(s) [1] planned other cache keys than rank 0" in r["error"]
        assert "missing" not in r


def test_rounds_give_each_rank_its_share_of_rank0s_missing_keys_and_gather_them_in_order(outcomes):
    r0, r1 = outcomes["rounds"]
    assert r0["mine"] == [["k1", "k2"], ["k6"]] and r1["mine"] == [["k3", "k4"], []]
    assert [row[0] for row in r0["stored"]] == ["k1", "k2", "k3", "k4", "k6"]
    assert r0["stored"][-1] == ["k6", {"text": "K6", "n": 0.1}, True]
    assert r1["stored"] == []  # only rank 0 stores
