"""Start ``transformers serve`` (transformers' own OpenAI-compatible server) on a free local port.

Used by the served-LLM tests and ``benchmarks/bench_served.py``; also the quickest way to try
``models.llm.source: openai`` on one machine. Needs the ``transformers[serving]`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    """A running ``transformers serve`` process serving one model folder on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    model: str  # the model id requests must name (the folder path)
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def _serve_command() -> list[str]:
    exe = Path(sys.executable).parent / "transformers"
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    if found:
        return [found, "serve"]
    raise RuntimeError("`transformers serve` not found: pip install 'transformers[serving]'")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies (no orphan servers)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def start_transformers_serve(
    model_dir: Path | str,
    log_path: Path,
    *,
    port: int | None = None,
    continuous_batching: bool = False,
    threads: int = 1,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 180.0,
) -> LocalServer:
    """Start the server as a real subprocess and wait until the model answers ``/v1/models``."""
    port = port or free_port()
    model = str(model_dir)
    cmd = [*_serve_command(), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
           "--log-level", "warning"]
    cmd += ["--continuous-batching"] if continuous_batching else []
    cmd += [*extra_args, model]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    server = LocalServer(proc, port, model, Path(log_path))
    deadline = time.time() + startup_timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}; log: {log_path}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as r:
                if any(m.get("id") == model for m in json.load(r).get("data", [])):
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"transformers serve did not come up in {startup_timeout_s:.0f} s; log: {log_path}")
