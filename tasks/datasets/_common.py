"""Helpers shared by the file-based loaders: lazy image opening, safe paths, hash splits.

Kept in one place so every loader fails the same way (a missing or corrupt image fails only its
own sample, with the path in the message) and splits the same way (by a hash of a stable key,
so a split never depends on file order or on the machine).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

#: Largest image decoded (width × height). Far above any VL benchmark image (COCO ≤ 640², 4K =
#: 8.3 M) yet small enough that a decompression bomb (a tiny file declaring a 50 000² image) fails
#: its own sample instead of eating tens of GB. Checked from the header, before decoding.
MAX_IMAGE_PIXELS = 40_000_000


class ImageLoadError(OSError):
    """An image could not be read; raised only when the sample's ``load_image`` is called."""


def open_rgb(path: Path) -> Image.Image:
    """Open an image file fully into memory as 8-bit RGB, with the path in any error.

    The camera's EXIF orientation is applied (a phone photo is seen upright, as a viewer shows
    it); transparency is composited on white (not the black PIL's plain convert gives); 16-bit
    and float greyscale are scaled to 8 bits rather than clipped to white.
    """
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageLoadError(
                    f"image {path} is {w}×{h} = {w * h} pixels, over the limit of {MAX_IMAGE_PIXELS} "
                    "(possible decompression bomb); resize it or raise tasks.datasets._common.MAX_IMAGE_PIXELS"
                )
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except ImageLoadError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        if path.stat().st_size == 0:
            raise ImageLoadError(f"cannot decode image {path}: the file is empty (0 bytes)") from err
        raise ImageLoadError(f"cannot decode image {path}: {type(err).__name__}: {err}") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, keeping what a viewer would show."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


class FileImage:
    """A zero-argument callable that opens ``path`` when called (never at dataset load time).

    ``digest()`` hashes the file's bytes (what the result cache keys on): replacing the file, or
    creating a missing one, changes it. A missing file digests as ``missing``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __call__(self) -> Image.Image:
        return open_rgb(self.path)

    def digest(self) -> str:
        h = hashlib.sha256()
        try:
            with self.path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return "missing"
        return h.hexdigest()[:20]


def lazy_file_image(path: Path) -> Callable[[], Image.Image]:
    """A zero-argument callable that opens ``path`` when called, with a file-bytes ``digest()``."""
    return FileImage(path)


def safe_relative(name: str, *, what: str) -> PurePosixPath:
    """Check that a path read from an annotation file stays inside its root.

    Annotation files are data, not code we trust: an absolute path or a ``..`` component could
    make the harness read (and log, and send to a model) files outside the dataset folder.
    """
    if not name or not name.strip():
        raise ValueError(f"{what}: empty file name")
    if "\\" in name or PureWindowsPath(name).drive:
        raise ValueError(f"{what}: file name {name!r} uses a Windows path; use '/' relative paths")
    rel = PurePosixPath(name)
    if rel.is_absolute():
        raise ValueError(f"{what}: absolute path {name!r} is not allowed; paths must be relative to the dataset root")
    if any(part == ".." for part in rel.parts):
        raise ValueError(f"{what}: path {name!r} escapes the dataset root ('..' is not allowed)")
    return rel


def hash_unit(key: str, salt: int | str) -> float:
    """A uniform number in [0, 1) from a key; identical on every machine and Python version."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, salt: int | str, val_fraction: float, test_fraction: float) -> str:
    """Assign ``key`` to train/val/test by its hash (test first, then val, rest train)."""
    u = hash_unit(key, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def read_json(path: Path, *, what: str) -> Any:
    """Read a JSON file with an error that says which annotation file was wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from err


def require_keys(record: Any, keys: tuple[str, ...], *, what: str) -> None:
    """Fail with the record's position when an annotation lacks a required field."""
    if not isinstance(record, dict):
        raise ValueError(f"{what}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{what}: missing field(s) {missing}")


def warn_missing_images(log: Any, name: str, split: str, refs: Any) -> None:
    """Log how many distinct image files named by a split are absent (their samples will fail)."""
    present = {ref: Path(ref).is_file() for ref in set(refs)}
    missing = sum(not ok for ok in present.values())
    if missing:
        log.warning("%s %s: %d of %d images are missing; samples on them will fail", name, split, missing, len(present))
