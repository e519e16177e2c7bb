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
#: connector training, and after its checkpoint when one is due), ``file_write`` / ``file_replaced``
#: (in :func:`harness.atomic.atomic_path`, before / after the rename), ``answer_round`` (before each
#: round of a multi-process run computes, :mod:`harness.distributed`). Actions: ``kill`` (SIGKILL this
#: process, the default), ``sigint`` (send SIGINT to this process, as Ctrl-C would), ``stop`` (SIGSTOP:
#: the process freezes like a hung machine until a test kills it) and ``raise``
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
            elif action == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)


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


class CacheError(RuntimeError):
    """The result cache cannot be used (corrupt file, full disk, read-only folder); says what to do."""


def explain_sqlite_error(path: Path, err: sqlite3.Error) -> CacheError:
    """Turn SQLite's terse message into what happened and what to do about it."""
    msg = str(err)
    low = msg.lower()
    if "full" in low:
        return CacheError(
            f"the disk holding the result cache {path} is full (SQLite: {msg}). Every batch written "
            f"before this one is safe; free some space (or use --results-dir on another disk) and run "
            f"the same command again to resume."
        )
    if "disk i/o error" in low:
        import shutil

        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        return CacheError(
            f"could not write the result cache {path} (SQLite: {msg}; {free}): the disk is full, over a "
            f"size quota, or failing. Every batch written before this one is safe; free some space (or use "
            f"--results-dir on another disk) and run the same command again to resume."
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return CacheError(
            f"the result cache {path} is corrupt (SQLite: {msg}). Move it aside and run again; "
            f"every answer will be recomputed:\n  mv {path} {path}.corrupt"
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return CacheError(
            f"cannot write the result cache {path} (SQLite: {msg}). Make its folder writable, or pass "
            f"--results-dir with a writable folder."
        )
    return CacheError(f"result cache {path}: SQLite error: {msg}")


class ResultCache:
    """Answers and memoised derived values (metrics, shot selections) in one SQLite file.

    Every SQLite failure surfaces as a :class:`CacheError` that names the file and the remedy.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the results folder {self.path.parent}: {exc}") from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=60000")
            _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=NORMAL")
            _retry_locked(lambda: self._db.executescript(SCHEMA))
        except sqlite3.Error as err:
            raise explain_sqlite_error(self.path, err) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- answers
    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        try:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, payload FROM answers WHERE key IN ({marks})", chunk)
                for key, payload in rows:
                    found[key] = json.loads(payload)
        except sqlite3.Error as err:
            raise explain_sqlite_error(self.path, err) from None
        except json.JSONDecodeError as err:
            raise CacheError(f"the result cache {self.path} holds an unreadable answer ({err}); "
                             f"move it aside and run again: mv {self.path} {self.path}.corrupt") from None
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

    # ------------------------------------------------------------ inspection
    def unit_summary(self) -> list[tuple[str, int, int]]:
        """(unit name, answers, of which failed) per unit, for ``mmbench cache info``."""
        rows = self._db.execute(
            "SELECT unit, COUNT(*), SUM(CASE WHEN json_extract(payload, '$.error') IS NULL THEN 0 ELSE 1 END) "
            "FROM answers GROUP BY unit ORDER BY unit"
        ).fetchall()
        return [(u, int(n), int(f or 0)) for u, n, f in rows]

    def memo_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM memo").fetchone()[0]

    def clear(self, paradigm: str | None = None, task: str | None = None) -> int:
        """Delete the answers of matching units (all answers and memos when nothing is named)."""
        units = [u for u, _, _ in self.unit_summary() if unit_matches(u, paradigm, task)]
        with self._transaction():
            n = 0
            for u in units:
                n += self._db.execute("DELETE FROM answers WHERE unit=?", (u,)).rowcount
            if paradigm is None and task is None:
                self._db.execute("DELETE FROM memo")  # memos are derived from answers; stale without them
        return n

    def _transaction(self) -> "_Tx":
        return _Tx(self._db, self.path)


def unit_matches(unit: str, paradigm: str | None, task: str | None) -> bool:
    """Whether a unit name (``label | task | k-shot | trial t``) is selected by ``--paradigm``/``--task``.

    A paradigm matches its label exactly or as a family prefix (``tool_agent`` selects ``tool_agent/...``).
    """
    parts = [p.strip() for p in unit.split(" | ")]
    label, unit_task = parts[0], (parts[1] if len(parts) > 1 else "")
    if paradigm is not None and not (label == paradigm or label.startswith(paradigm + "/")):
        return False
    return task is None or unit_task == task


class _Tx:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise explain_sqlite_error(self.path, err) from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                fault_point("cache_write")
            except BaseException:
                self._rollback()
                raise
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                self._rollback()
                raise explain_sqlite_error(self.path, err) from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            # e.g. "database or disk is full" from an INSERT: say so (SQLite has already rolled back,
            # and a plain ROLLBACK would replace the cause with "no transaction is active").
            raise explain_sqlite_error(self.path, exc) from None

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back on its own (disk full, I/O error); nothing is half-written
