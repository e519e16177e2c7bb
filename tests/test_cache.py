"""The result cache: atomic batches, keys from content, survives reopen."""

from __future__ import annotations

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


def test_failed_transaction_writes_nothing(tmp_path):
    c = ResultCache(tmp_path / "c.sqlite")

    def rows():
        yield ("k1", "s1", {"text": "a"})
        raise RuntimeError("boom")

    try:
        c.put_many("u", rows())
    except RuntimeError:
        pass
    assert c.count() == 0
