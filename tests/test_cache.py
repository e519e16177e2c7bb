"""The result cache: atomic batches, keys from content, survives reopen."""

from __future__ import annotations

import sqlite3

import pytest

from harness.cache import ResultCache, sample_key


def test_roundtrip_and_reopen(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResultCache(path) as c:
        k1 = sample_key(paradigm="p", sample="s1", prompt="q")
        k2 = sample_key(paradigm="p", sample="s2", prompt="q")
        c.put_many("u", [(k1, "s1", {"text": "a"}), (k2, "s2", {"text": "b"})])
        c.memo_put("metrics", "m", {"v": 1.5})
    with ResultCache(path) as c:
        got = c.get_many([k1, k2, "missing"])
        assert got == {k1: {"text": "a"}, k2: {"text": "b"}}
        assert c.memo_get("metrics", "m") == {"v": 1.5}
        assert c.memo_get("metrics", "other") is None
        assert c.count() == 2 and c.count("u") == 2 and c.integrity_ok()


def test_key_depends_on_every_part_and_not_on_order():
    base = dict(paradigm={"a": 1}, sample="s", prompt="p", shots=["x"], seed=0)
    k = sample_key(**base)
    assert sample_key(**dict(reversed(list(base.items())))) == k
    for part, other in [("paradigm", {"a": 2}), ("sample", "t"), ("prompt", "p2"), ("shots", ["y"]), ("seed", 1)]:
        assert sample_key(**{**base, part: other}) != k


def test_failed_transaction_writes_nothing(tmp_path, monkeypatch):
    """A failure *inside* the transaction (after the INSERT, before COMMIT) leaves no row."""
    c = ResultCache(tmp_path / "c.sqlite")
    c.put_many("u", [("k0", "s0", {"text": "kept"})])
    monkeypatch.setenv("MMBENCH_FAULT", "cache_write:1:raise")  # raises at the commit point
    monkeypatch.setattr("harness.cache._fault_counts", {})
    with pytest.raises(ConnectionError):
        c.put_many("u", [("k1", "s1", {"text": "a"}), ("k2", "s2", {"text": "b"})])
    monkeypatch.delenv("MMBENCH_FAULT")
    assert not c._db.in_transaction  # rolled back, not left open for the next write to commit
    c.put_many("u", [("k3", "s3", {"text": "c"})])
    c.close()
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert sorted(k for (k,) in db.execute("SELECT key FROM answers")) == ["k0", "k3"]


def test_cache_info_and_clear_by_paradigm_and_task(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    c = ResultCache(tmp_path / "cache.sqlite")
    c.put_many("tool_agent/visual_chatgpt | world_vqa | 0-shot | trial 0",
               [("a1", "s1", {"text": "x", "error": None}), ("a2", "s2", {"text": "", "error": "bad image"})])
    c.put_many("text_conversion/pica | world_vqa | 0-shot | trial 0", [("b1", "s1", {"text": "y", "error": None})])
    c.put_many("text_conversion/pica | world_caption | 0-shot | trial 0", [("c1", "s1", {"text": "z", "error": None})])
    c.close()
    run = CliRunner().invoke
    info = run(main, ["cache", "info", "--results-dir", str(tmp_path)])
    assert info.exit_code == 0 and "       2       1  tool_agent/visual_chatgpt | world_vqa" in info.output
    assert "       4       1  total" in info.output
    out = run(main, ["cache", "clear", "--results-dir", str(tmp_path), "--paradigm", "text_conversion",
                     "--task", "world_vqa", "--yes"])
    assert out.exit_code == 0 and "deleted 1 cached answers" in out.output
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert sorted(k for (k,) in db.execute("SELECT key FROM answers")) == ["a1", "a2", "c1"]
    assert run(main, ["cache", "clear", "--results-dir", str(tmp_path), "--yes"]).exit_code == 0
    assert "       0       0  total" in run(main, ["cache", "info", "--results-dir", str(tmp_path)]).output
