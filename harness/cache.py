"""On-disk result cache (SQLite): every finished sample is written before the next batch starts.

Keys are hashes of everything that determines an answer (see :func:`sample_key`), never of the
process count or batch size, so a run resumes after a crash, with more or fewer processes, and
re-running a finished command reads everything back. SQLite in WAL mode makes each batch's
write atomic: a process killed mid-write leaves either the whole batch or none of it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from harness.config import stable_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_unit ON answers(unit);
CREATE TABLE IF NOT EXISTS memo (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
"""


# ------------------------------------------------------------------ fault injection
#: ``MMBENCH_FAULT=<site>:<n>[:<action>][,...]`` makes the n-th visit of ``site`` in this process
#: fail, so crash-safety tests can land a kill *inside* a cache write or an MLflow call instead of
#: hoping a timer does. Sites: ``cache_write`` (inside the SQLite transaction, before COMMIT),
#: ``mlflow`` (before each tracking call) and ``train_step`` (after each optimiser step of a
#: connector training, and after its checkpoint when one is due). Actions: ``kill`` (SIGKILL this
#: process, the default), ``sigint`` (send SIGINT to this process, as Ctrl-C would) and ``raise``
#: (raise ``ConnectionError`` at the n-th and every later visit: a tracking server that went away).
#: Inert when unset.
_fault_counts: dict[str, int] = {}


def fault_point(site: str) -> None:
    """Injected failure for tests (see above); does nothing unless ``MMBENCH_FAULT`` names ``site``."""
    spec = os.environ.get("MMBENCH_FAULT")
    if not spec:
        return
    _fault_counts[site] = _fault_counts.get(site, 0) + 1
    for part in spec.split(","):
        name, _, rest = part.strip().partition(":")
        if name != site:
            continue
        n_str, _, action = rest.partition(":")
        n, action = int(n_str), action or "kill"
        if action == "raise" and _fault_counts[site] >= n:
            raise ConnectionError(f"MMBENCH_FAULT: injected failure at {site} #{_fault_counts[site]}")
        if _fault_counts[site] == n:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "sigint":
                os.kill(os.getpid(), signal.SIGINT)


class _DeferSigint:
    """Hold Ctrl-C until the block ends, so an interrupted run never abandons a half-done write.

    SQLite would roll an interrupted transaction back (nothing corrupt, the batch is recomputed),
    but the batch's compute would be lost; deferring costs at most one commit's latency. Only the
    main thread can own signal handlers; elsewhere this is a no-op.
    """

    def __enter__(self) -> None:
        self._pending = False
        self._old: Any = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self._pending = True

    def __exit__(self, *exc: object) -> None:
        if self._old is None:
            return
        signal.signal(signal.SIGINT, self._old)
        if self._pending:
            if callable(self._old):
                self._old(signal.SIGINT, None)
            elif self._old == signal.SIG_DFL:
                raise KeyboardInterrupt


def sample_key(**parts: Any) -> str:
    """Cache key of one answer: a stable hash of named parts (fingerprints, prompt, shot ids, ...)."""
    return stable_hash(parts, n=32)


def _retry_locked(step: Callable[[], Any], patience_s: float = 60.0) -> Any:
    """Run a setup statement, retrying while another process holds the file.

    Switching to WAL mode (and creating the schema) takes an exclusive lock that SQLite's busy
    handler does not always wait for, so two ranks of a torchrun job opening a fresh cache at the
    same moment would otherwise see 'database is locked' immediately.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class ResultCache:
    """Answers and memoised derived values (metrics, shot selections) in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=60000")
        _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        self._db.execute("PRAGMA synchronous=NORMAL")
        _retry_locked(lambda: self._db.executescript(SCHEMA))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- answers
    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, payload FROM answers WHERE key IN ({marks})", chunk)
            for key, payload in rows:
                found[key] = json.loads(payload)
        return found

    def put_many(self, unit: str, items: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Write (key, sample_id, payload) rows in one transaction (all or nothing)."""
        now = time.time()
        rows = [(k, unit, sid, json.dumps(p, sort_keys=True), now) for k, sid, p in items]
        if not rows:
            return
        with _DeferSigint(), self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO answers(key, unit, sample_id, payload, created) VALUES (?,?,?,?,?)",
                rows,
            )

    def count(self, unit: str | None = None) -> int:
        if unit is None:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM answers WHERE unit=?", (unit,)).fetchone()[0]

    # -------------------------------------------------------------------- memo
    def memo_get(self, kind: str, key: str) -> Any | None:
        row = self._db.execute("SELECT payload FROM memo WHERE key=? AND kind=?", (key, kind)).fetchone()
        return None if row is None else json.loads(row[0])

    def memo_put(self, kind: str, key: str, value: Any) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO memo(key, kind, payload, created) VALUES (?,?,?,?)",
                (key, kind, json.dumps(value, sort_keys=True), time.time()),
            )

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def _transaction(self) -> "_Tx":
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            fault_point("cache_write")
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
