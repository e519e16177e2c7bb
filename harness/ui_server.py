"""``mmbench ui``: an MLflow server that is ours to stop.

The server runs in its own process group (it forks a dozen web workers); stopping ``mmbench ui``
(Ctrl-C, SIGTERM, SIGHUP) stops the whole group, so no server or worker outlives it. A busy port is
refused up front with a message instead of the server's retry loop and a zero exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def experiment_url(uri: str, base: str, experiment: str = "mmbench") -> str:
    """The runs table of ``experiment`` (the UI's landing page otherwise lists experiments only)."""
    try:
        from mlflow import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - an unreadable store: the server will say why
        exp = None
    return f"{base}/#/experiments/{exp.experiment_id}/runs" if exp is not None else base


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def serve(uri: str, host: str, port: int, artifact_root: Path) -> int:
    """Run the MLflow server until it exits or we are told to stop; returns the exit status."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--default-artifact-root", artifact_root.resolve().as_uri()]
    proc = subprocess.Popen(cmd, start_new_session=True)
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Stop):
        stop_group(proc)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers that ignored SIGTERM, or outlived their master
    except ProcessLookupError:
        pass
    proc.wait()
