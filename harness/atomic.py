"""Files that a kill or a power cut cannot leave half written: write a temporary, fsync, rename, fsync.

The temporary name carries the process id because torchrun ranks (or two runs sharing a cache)
may write the same file at the same moment; ``os.replace`` makes the last complete copy win.
The file is fsynced before the rename (so the new name never points at unwritten blocks) and the
folder after it (so the rename itself survives a power cut). Temporaries of processes that died
are removed by :func:`remove_stale_temps`; a file that is unreadable anyway (written by something
else, or a disk that lied) is moved aside by :func:`set_aside`, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_TMP = re.compile(r"^.+\.(\d+)\.tmp$")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` durably, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    from harness.cache import fault_point

    try:
        yield tmp
        if tmp.is_file():
            fsync_path(tmp)
        fault_point("file_write")  # tests: a kill with the temporary written, not yet renamed
        os.replace(tmp, path)
        fault_point("file_replaced")  # tests: a kill right after the rename
        fsync_path(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_json(obj: object, path: Path) -> None:
    atomic_text(json.dumps(obj, indent=1), path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, *, skip: tuple[str, ...] = ("mlartifacts",)) -> list[Path]:
    """Delete ``*.<pid>.tmp`` files and folders under ``folder`` whose process no longer runs.

    Left by a SIGKILL between writing a temporary and renaming it. Temporaries of live processes
    (another run sharing the folder) are left alone. Returns what was removed.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in list(filenames) + list(dirnames):
            m = _TMP.match(name)
            if not m or _pid_alive(int(m.group(1))):
                continue
            p = Path(dirpath) / name
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    dirnames.remove(name)
                else:
                    p.unlink()
            except OSError:
                continue
            removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) left by killed processes under %s", len(removed), folder)
    return removed


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unreadable file to ``<name>.corrupt-<time>`` (kept for inspection) and warn."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    log.warning("%s is unreadable (%s); moved it to %s and continuing from the last good state", path, reason, target.name)
    return target
