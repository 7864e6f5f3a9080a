"""M-BEIR image access through Beam FileSystems (local paths, gs://, ...): check, read, load, digest.

Beam is imported on first file access only, so parse.py (which needs safe_image_path) stays Beam-free."""

from __future__ import annotations

import hashlib
import io
import re
import warnings

from PIL import Image

from pipeline.mbeir import reasons

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
CHECK_MODES = ("exists", "decode")


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def safe_image_path(rel: str) -> bool:
    """True for a relative path: no scheme, no leading slash/backslash/~, no drive, no ".." part."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        return False
    if rel.startswith(("/", "\\", "~")) or _SCHEME.match(rel):
        return False
    return ".." not in re.split(r"[\\/]", rel)


def image_path(root: str, rel_path: str) -> str:
    """The full path of an image; raises ValueError for an unsafe relative path."""
    if not safe_image_path(rel_path):
        raise ValueError(f"unsafe image path {rel_path!r}")
    return _fs().join(root, rel_path)


def read_image_bytes(root: str, rel_path: str) -> bytes:
    with _fs().open(image_path(root, rel_path), compression_type="uncompressed") as f:
        return f.read()


def image_digest(data: bytes) -> str:
    """sha256 hex of the image bytes (part of the teacher request key)."""
    return hashlib.sha256(data).hexdigest()


def _decode(data: bytes) -> Image.Image:
    """Open and fully decode; DecompressionBombWarning is raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        img.load()
    return img


def check_image(root: str, rel_path: str, mode: str = "decode") -> str | None:
    """A reason code (unsafe_image_path, missing_image, unreadable_image, decompression_bomb) or None if fine."""
    if mode not in CHECK_MODES:
        raise ValueError(f"mode must be one of {CHECK_MODES}, got {mode!r}")
    if not safe_image_path(rel_path):
        return reasons.UNSAFE_IMAGE_PATH
    fs = _fs()
    path = fs.join(root, rel_path)
    try:
        if not fs.exists(path):
            return reasons.MISSING_IMAGE
        if mode == "exists":
            return None
        _decode(read_image_bytes(root, rel_path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return reasons.DECOMPRESSION_BOMB
    except FileNotFoundError:
        return reasons.MISSING_IMAGE
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error ...)
        return reasons.UNREADABLE_IMAGE
    return None


def load_image(root: str, rel_path: str, max_side: int | None = None) -> Image.Image:
    """The image as RGB, shrunk (aspect kept) so its longer side is at most max_side."""
    img = _decode(read_image_bytes(root, rel_path)).convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img
