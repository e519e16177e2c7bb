"""Several processes (and machines) sharing one run through ``torch.distributed`` alone.

Rank 0 owns the result cache, the metrics and the MLflow logs; other ranks own nothing on disk.
Per unit, rank 0 decides which answers are missing from *its* cache and broadcasts their keys, so
every rank computes exactly its share of what rank 0 lacks (a worker's own folders may be empty).
After every round of batches the answers travel back to rank 0 as JSON over the process group
(gloo on CPU, NCCL on GPU), and rank 0 writes them to the cache before the next round starts: a
killed process or node loses at most the round in flight. Nothing needs a shared file system, and a
shared one still works (only rank 0 writes to it).

Everything on the wire is UTF-8 JSON in a ``uint8`` tensor: no pickle (``*_object`` collectives
unpickle what they receive), so a confused or hostile peer can at worst send bad JSON.

One-time work (``Paradigm.prepare``: training a connector, adapting an LM) runs on rank 0 first;
the files it left under the model cache (the paradigm's ``checkpoint_dir``) are then sent to every
rank that lacks them, byte for byte, and the other ranks run ``prepare`` too, which finds the
finished files and loads them. Every rank thus answers with rank 0's weights exactly, which
retraining on each rank would not guarantee on a GPU (non-deterministic kernels), and the training
is paid once.

A collective that fails (a peer died: its sockets closed, or nothing came back within
``MMBENCH_DIST_TIMEOUT_S``) raises :class:`RankLost`, a :class:`~harness.interface.RetryableFailure`
whose message says that a rank died and that running the command again resumes from rank 0's cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from harness.config import ConfigError
from harness.interface import RetryableFailure

log = logging.getLogger(__name__)

#: Seconds a collective waits for the other ranks before the run fails (a node that vanished without
#: closing its connections). A dead process on a live machine is noticed at once (its sockets close).
DEFAULT_TIMEOUT_S = 900.0
#: While rank 0 trains, the others wait on heartbeats this far apart (well inside the timeout).
HEARTBEAT_S = 20.0
#: Files are sent in pieces of this many bytes (bounded memory for multi-GB adapted LMs).
PIECE_BYTES = 64 * 2**20


class RankLost(RetryableFailure):
    """Another rank of the job is gone (killed, crashed, or unreachable); nothing of the round in flight is kept."""


class RankFailed(RetryableFailure):
    """Another rank stopped with an error it reported to the others (its message is included)."""


def timeout_from_env() -> float:
    raw = os.environ.get("MMBENCH_DIST_TIMEOUT_S")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"MMBENCH_DIST_TIMEOUT_S must be a positive number of seconds; got {raw!r}")
    return value


@dataclass
class Distributed:
    """This process's place in the job and the collectives the runner uses (all JSON on the wire).

    ``world == 1`` is the ordinary single-process run: every method then works locally and sends nothing.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    # ---------------------------------------------------------------- set-up
    @classmethod
    def from_env(cls) -> "Distributed":
        """Join the job torchrun / accelerate launch describes in the environment (one process: no group)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        timeout = timeout_from_env()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # NCCL needs one GPU per process on a node; otherwise (CPU, or fewer GPUs than local ranks) gloo.
        use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        backend = os.environ.get("MMBENCH_DIST_BACKEND") or ("nccl" if use_nccl else "gloo")
        if backend not in ("nccl", "gloo"):
            raise ConfigError(f"MMBENCH_DIST_BACKEND must be nccl or gloo; got {backend!r}")
        if backend == "nccl":
            # Each rank drives its own GPU: models on "cuda" and NCCL's tensors land on it.
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, local_world, backend, timeout)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # ----------------------------------------------------------- the wire
    def _device(self) -> Any:
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective into a message a person can act on."""
        try:
            yield
        except (RankLost, RankFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses with terse text
            raise RankLost(
                f"rank {self.rank} of {self.world} lost contact with the other ranks while {what}: a process or "
                f"node of this job died, was killed, or could not be reached within {self.timeout_s:.0f} s "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}). Every answer gathered before this point is in "
                f"rank 0's result cache; run the same command again (with any number of processes or nodes) to "
                f"resume. See the other ranks' logs for the cause."
            ) from None

    def _bytes_tensor(self, data: bytes) -> Any:
        import torch

        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._device()) if data else \
            torch.zeros(0, dtype=torch.uint8, device=self._device())

    def broadcast_bytes(self, data: bytes | None, what: str) -> bytes:
        """Rank 0's ``data`` on every rank (others pass None)."""
        if self.world == 1:
            return data or b""
        import torch
        import torch.distributed as dist

        with self._collective(what):
            n = torch.tensor([len(data) if self.is_main and data is not None else 0], dtype=torch.int64,
                             device=self._device())
            dist.broadcast(n, 0)
            buf = self._bytes_tensor(data or b"") if self.is_main else torch.empty(int(n.item()), dtype=torch.uint8,
                                                                                    device=self._device())
            if int(n.item()):
                dist.broadcast(buf, 0)
        return (data or b"") if self.is_main else bytes(buf.cpu().numpy().tobytes())

    def broadcast_json(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` (JSON-serialisable) on every rank."""
        raw = self.broadcast_bytes(json.dumps(obj).encode() if self.is_main else None, what)
        return json.loads(raw.decode())

    def all_gather_json(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch
        import torch.distributed as dist

        data = json.dumps(obj).encode()
        with self._collective(what):
            n = torch.tensor([len(data)], dtype=torch.int64, device=self._device())
            sizes = [torch.zeros(1, dtype=torch.int64, device=self._device()) for _ in range(self.world)]
            dist.all_gather(sizes, n)
            lengths = [int(s.item()) for s in sizes]
            width = max(lengths)
            mine = torch.zeros(width, dtype=torch.uint8, device=self._device())
            if data:
                mine[: len(data)] = self._bytes_tensor(data)
            bufs = [torch.zeros(width, dtype=torch.uint8, device=self._device()) for _ in range(self.world)]
            dist.all_gather(bufs, mine)
        return [json.loads(bytes(b[:L].cpu().numpy().tobytes()).decode()) for b, L in zip(bufs, lengths)]

    # ------------------------------------------------------- the runner's calls
    def agree_missing(self, unit: str, planned: Sequence[str], missing: Sequence[str] | None) -> list[str]:
        """Rank 0's ``missing`` keys on every rank, after checking that every rank planned the same keys.

        Ranks that planned different keys run different code, configs or data (another package version or
        dataset file on one node): their answers would be stored under keys rank 0 never asks for.
        """
        if self.world == 1:
            return list(missing or [])
        digest = hashlib.sha256("\n".join(planned).encode()).hexdigest()
        digests = self.all_gather_json(digest, f"planning unit {unit!r}")
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise RankFailed(
                f"unit {unit!r}: rank(s) {odd} planned other cache keys than rank 0 for the same samples, so they "
                f"do not run the same code, configuration, models or dataset files (compare mmbench's version, "
                f"package versions and the data folders on every node)"
            )
        return list(self.broadcast_json(list(missing) if self.is_main else None, f"sharing unit {unit!r}'s missing samples"))

    def rounds(self, n: int, batch_size: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of this rank's batch in each round over ``n`` items; every rank sees the same
        number of rounds (a rank past the end gets empty batches), so the per-round gathers line up."""
        per_round = batch_size * self.world
        for base in range(0, n, per_round):
            start = min(n, base + self.rank * batch_size)
            yield start, min(n, start + batch_size)

    def answer_round(self, compute: Callable[[], list[list[Any]]], store: Callable[[list[list[Any]]], None],
                     unit: str) -> None:
        """One round: this rank computes its batch (``compute`` -> rows ``[key, answer dict, transient]``), the
        rows of every rank travel to rank 0, which ``store``s them (caches them) before anyone goes on.

        A rank whose batch raised reports the error to the others instead of vanishing; rank 0 still stores the
        rows of the ranks that succeeded, then every rank stops (the failing one with its own exception, the
        others with :class:`RankFailed` naming it). Single process: compute, store, exceptions as they come.
        """
        if self.world == 1:
            store(compute())
            return
        from harness.cache import fault_point

        fault_point("answer_round")  # tests: freeze or kill this rank at a known round
        failure: Exception | None = None
        rows: list[list[Any]] = []
        try:
            rows = compute()
        except Exception as exc:  # noqa: BLE001 - told to every rank, then re-raised here
            failure = exc
        told = {"type": type(failure).__name__, "message": str(failure)} if failure else None
        parts = self.all_gather_json({"rows": rows, "failure": told}, f"gathering answers of unit {unit!r}")
        if self.is_main:
            store([row for p in parts if not p["failure"] for row in p["rows"]])
        if failure is not None:
            raise failure
        failed = [(r, p["failure"]) for r, p in enumerate(parts) if p["failure"]]
        if failed:
            r, f = failed[0]
            raise RankFailed(f"rank {r} stopped the run in unit {unit!r}: {f['type']}: {f['message']}. Answers of "
                             f"the other ranks are cached; run the same command again to resume.")

    # ----------------------------------------------------------- prepare
    def prepare_in_order(self, prepare: Callable[[], None], artifacts: Callable[[], Path | None], root: Path,
                         label: str) -> None:
        """Run ``prepare`` on rank 0, send the files it left in ``artifacts()`` (a folder under ``root``,
        the model cache) to every rank, then run ``prepare`` on the others (which find and load them)."""
        if self.world == 1:
            prepare()
            return
        what = f"preparing {label!r}"
        if self.is_main:
            failure = None
            with self._heartbeats(what):
                try:
                    prepare()
                except Exception as exc:  # noqa: BLE001 - told to the others, then re-raised here
                    failure = exc
            self.broadcast_json({"state": "failed" if failure else "done",
                                 "error": f"{type(failure).__name__}: {failure}" if failure else None}, what)
            if failure is not None:
                raise failure
        else:
            while True:
                msg = self.broadcast_json(None, what)
                if msg["state"] == "working":
                    continue
                if msg["state"] == "failed":
                    raise RankFailed(f"rank 0 failed {what}: {msg['error']}")
                break
        self._share_folder(artifacts() if self.is_main else None, Path(root), what)
        failure_text = None
        if not self.is_main:
            try:
                prepare()
            except Exception as exc:  # noqa: BLE001 - reported to every rank below
                failure_text = f"{type(exc).__name__}: {exc}"
                self.all_gather_json(failure_text, what)
                raise
        states = self.all_gather_json(failure_text, what)
        bad = [(r, s) for r, s in enumerate(states) if s]
        if bad:
            raise RankFailed(f"rank {bad[0][0]} failed {what}: {bad[0][1]}")

    @contextmanager
    def _heartbeats(self, what: str) -> Iterator[None]:
        """While rank 0 works, tell the waiting ranks so every ``HEARTBEAT_S`` (their wait never hits the
        collective timeout, however long the training takes; a dead rank 0 is still noticed)."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def beat() -> None:
            if self.backend == "nccl":
                import torch

                torch.cuda.set_device(self.local_rank)  # the current device is per thread
            interval = min(HEARTBEAT_S, self.timeout_s / 4)
            while not stop.wait(interval):
                try:
                    self.broadcast_json({"state": "working"}, what)
                except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
                    errors.append(exc)
                    return

        t = threading.Thread(target=beat, name="mmbench-heartbeat", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
        if errors:
            raise errors[0]

    def _share_folder(self, folder: Path | None, root: Path, what: str) -> None:
        """Make every rank's copy of rank 0's ``folder`` (relative to each rank's ``root``) byte-identical."""
        manifest: dict[str, Any] | None = None
        if self.is_main:
            if folder is not None and Path(folder).is_dir():
                try:
                    rel = Path(folder).resolve().relative_to(Path(root).resolve())
                except ValueError:
                    raise RankFailed(f"{what}: its files are in {folder}, outside the model cache {root}, so they "
                                     f"cannot be sent to the other ranks") from None
                manifest = {"folder": rel.as_posix(), "files": _manifest(Path(folder))}
            manifest = self.broadcast_json(manifest, what)
        else:
            manifest = self.broadcast_json(None, what)
        if manifest is None:
            return
        target = Path(root) / manifest["folder"]
        have = _manifest(target) if (not self.is_main and target.is_dir()) else {}
        wanted = [] if self.is_main else sorted(f for f, d in manifest["files"].items() if have.get(f) != d)
        asks = self.all_gather_json(wanted, what)
        needed = sorted({f for a in asks for f in a})
        if not needed:
            return
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp") if wanted else None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in manifest["files"]:
                if name not in wanted:  # already identical here: copy locally
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(target / name, tmp / name)
        for name in needed:
            src = Path(folder) / name if self.is_main else None
            size = manifest["files"][name][1]
            out = None
            if tmp is not None and name in wanted:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                out = open(tmp / name, "wb")
            with open(src, "rb") if src is not None else _nullfile() as fh:
                for _ in range(max(1, -(-size // PIECE_BYTES))):
                    piece = self.broadcast_bytes(fh.read(PIECE_BYTES) if fh is not None else None, what)
                    if out is not None:
                        out.write(piece)
            if out is not None:
                out.close()
        if tmp is not None:
            got = _manifest(tmp)
            if got != manifest["files"]:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RankFailed(f"{what}: the files received from rank 0 differ from what it sent")
            old = target.with_name(f"{target.name}.old.{os.getpid()}.tmp")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
            log.info("received %d file(s) of %s from rank 0 into %s", len(wanted), what, target)


@contextmanager
def _nullfile() -> Iterator[None]:
    yield None


def _manifest(folder: Path) -> dict[str, list[Any]]:
    """relative path -> [sha256, size] of every finished file under ``folder`` (temporaries left out)."""
    out: dict[str, list[Any]] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(".tmp"):
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
        out[p.relative_to(folder).as_posix()] = [h.hexdigest(), p.stat().st_size]
    return out
