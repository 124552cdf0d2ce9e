"""Image reading and writing with integrity checks.

OpenCV decodes a truncated JPEG into a half-grey picture with only a warning, so the
container is checked first: a PNG must end in an IEND chunk, a JPEG in an EOI marker.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import write_bytes
from pipeline.errors import DataError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def _read_checked(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes()
    if data.startswith(_PNG_MAGIC):
        if not data.rstrip(b"\x00").endswith(_PNG_IEND):
            raise DataError(path, "truncated or corrupt PNG (no IEND chunk at the end)")
    elif data.startswith(_JPEG_SOI):
        if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise DataError(path, "truncated or corrupt JPEG (no end-of-image marker)")
    else:
        raise DataError(path, "not a PNG or JPEG image (unrecognised file signature)")
    return data


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a colour image. Returns (H, W, 3) uint8 RGB."""
    path = Path(path)
    img = cv2.imdecode(np.frombuffer(_read_checked(path), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(path, "could not decode image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_raw(path: str | Path, dtype: type | None = None, channels: int = 1) -> np.ndarray:
    """Read a PNG as stored (8- or 16-bit, no colour conversion).

    ``dtype`` and ``channels`` state what the caller expects; anything else is a DataError.
    Returns (H, W) for one channel, (H, W, C) otherwise (colour channels as RGB).
    """
    path = Path(path)
    img = cv2.imdecode(np.frombuffer(_read_checked(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(path, "could not decode image")
    got_channels = 1 if img.ndim == 2 else img.shape[2]
    if got_channels != channels:
        raise DataError(path, f"expected {channels} channel(s), found {got_channels}")
    if dtype is not None and img.dtype != np.dtype(dtype):
        raise DataError(path, f"expected {np.dtype(dtype).name} pixels, found {img.dtype.name}")
    if channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def png_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a PNG from its IHDR chunk, without decoding it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    if len(head) < 24 or not head.startswith(_PNG_MAGIC) or head[12:16] != b"IHDR":
        raise DataError(path, "not a PNG image (no IHDR header)")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def encode(array: np.ndarray, ext: str, jpeg_quality: int = 95) -> bytes:
    """Encode an image; 3-channel arrays are taken as RGB."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise ValueError(f"could not encode a {array.dtype} {array.shape} array as {ext}")
    return buf.tobytes()


def write_image(path: str | Path, array: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an image atomically; the format follows the suffix."""
    path = Path(path)
    write_bytes(path, encode(array, path.suffix.lower(), jpeg_quality))


def check_same_size(a: np.ndarray, b: np.ndarray, path_b: str | Path, what: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise DataError(path_b, f"{what} is {b.shape[1]}x{b.shape[0]} but the image is {a.shape[1]}x{a.shape[0]}")
