"""M-BEIR image access through Beam FileSystems (local paths, gs://, ...): check, read, load, digest.

Nothing outside the M-BEIR root is ever read: a relative path must pass safe_image_path (no scheme, no
absolute path, no ".."), and under a local root the image's real path (symlinks resolved) must stay inside the
root's real path. Object stores (gs://, s3://) have no symlinks: there the path check is the whole check.
Beam is imported on first file access only, so parse.py and the trainer (which need these checks) stay Beam-free.
Every read and decode goes through pipeline/mbeir/image_gate.py (regular files only, byte and pixel caps).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from functools import lru_cache

from PIL import Image

from pipeline.mbeir import image_gate, reasons
from pipeline.mbeir.image_gate import ImageRejected
from pipeline.mbeir.records import ImageFacts

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
CHECK_MODES = ("none", "exists", "decode")  # "none" still refuses unsafe paths: that check is never off


class UnsafeImagePath(ImageRejected):
    """An image path that leads out of the M-BEIR root (reason code unsafe_image_path)."""

    def __init__(self, detail: str):
        super().__init__(reasons.UNSAFE_IMAGE_PATH, detail)


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


is_local_root = image_gate.is_local


@lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root.removeprefix("file://"))


@lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    """Real path of an image folder; cached, as M-BEIR's images share a few thousand folders (a static tree:
    the threat is a link shipped in it, not one created during the run)."""
    return os.path.realpath(path)


def local_image_path(root: str, rel_path: str) -> str | None:
    """The real path of an image under a local root, or None when the path is unsafe or its real path
    (symlinks resolved) leaves the root's real path. Beam-free (the trainer calls it)."""
    if not safe_image_path(rel_path):
        return None
    base = _real_root(str(root))
    folder, name = os.path.split(os.path.join(base, rel_path))
    real = os.path.join(_real_dir(folder), name)
    if os.path.islink(real):
        real = os.path.realpath(real)
    return real if real.startswith(base.rstrip(os.sep) + os.sep) else None


def image_path(root: str, rel_path: str, join: Callable[[str, str], str] | None = None) -> str:
    """The path to open for an image: its real path under a local root, root + path under an object store
    (joined by `join`, default Beam's FileSystems.join). Raises UnsafeImagePath for a path out of the root."""
    if is_local_root(root):
        real = local_image_path(root, rel_path)
        if real is None:
            raise UnsafeImagePath(f"unsafe image path {rel_path!r}: it leads out of the M-BEIR root {root}")
        return real
    if not safe_image_path(rel_path):
        raise UnsafeImagePath(f"unsafe image path {rel_path!r}")
    return (join or _fs().join)(root, rel_path)


def _open_remote(path: str):
    return _fs().open(path, compression_type="uncompressed")


def _read(root: str, path: str) -> bytes:
    """The bytes at `path` (image_path's answer), through the image gate. A local root is read directly: Beam's
    file system layer costs more than reading an M-BEIR image."""
    if is_local_root(root):
        return image_gate.read_file(path)
    return image_gate.read_path(path, open_remote=_open_remote)


def read_image_bytes(root: str, rel_path: str) -> bytes:
    return _read(root, image_path(root, rel_path))


class ImageLoader:
    """Picklable rel_path -> bytes under an M-BEIR root (any Beam FileSystems path). Defined here, Beam-free, so
    the teacher process unpickles it without importing Beam."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, rel_path: str) -> bytes:
        return read_image_bytes(self.root, rel_path)


def image_digest(data: bytes) -> str:
    """sha256 hex of the image bytes (part of the teacher request key)."""
    return hashlib.sha256(data).hexdigest()


def _decode(data: bytes, reduce_jpeg: bool = False) -> tuple[Image.Image, tuple[str, str, tuple[int, int]]]:
    """(the fully decoded image, its header's (format, mode, size)), through the image gate. `reduce_jpeg`: a
    JPEG is decoded at 1/8 scale and in grey (no colour conversion), for half the CPU: every byte of its
    compressed data is still read and checked (a truncated stream fails the same way)."""
    img = image_gate.open_image(data)
    header = (img.format or "", img.mode, tuple(img.size))
    if reduce_jpeg and img.format == "JPEG":
        img.draft("L", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
    return image_gate.load(img), header


def inspect_image(root: str, rel_path: str, mode: str = "decode") -> tuple[str | None, ImageFacts | None]:
    """(reason code or None, what the check learnt). Reasons: unsafe_image_path, missing_image, and (mode
    "decode", or "exists" under a local root) the image gate's: image_not_a_file, image_too_large,
    unreadable_image, decompression_bomb. Mode "none" checks only that the path stays inside the root; facts
    (digest, format, mode, size) come from mode "decode" only, from the bytes at the path that passed the check."""
    if mode not in CHECK_MODES:
        raise ValueError(f"mode must be one of {CHECK_MODES}, got {mode!r}")
    try:
        path = image_path(root, rel_path)
    except UnsafeImagePath:
        return reasons.UNSAFE_IMAGE_PATH, None
    if mode == "none":
        return None, None
    local = is_local_root(root)
    try:
        if mode == "exists":
            if local:
                image_gate.stat_file(path)
                return None, None
            return (None if _fs().exists(path) else reasons.MISSING_IMAGE), None
        data = _read(root, path)
        _, (image_format, image_mode, size) = _decode(data, reduce_jpeg=True)
    except ImageRejected as e:
        if e.reason == reasons.UNREADABLE_IMAGE and not local and not _fs().exists(path):
            return reasons.MISSING_IMAGE, None  # an object store's "not found" comes in its own error type
        return e.reason, None
    return None, ImageFacts(image_digest(data), image_format, image_mode, size)


def check_image(root: str, rel_path: str, mode: str = "decode") -> str | None:
    """A reason code (see inspect_image) or None if fine. Mode "none" checks only that the path stays inside
    the root."""
    return inspect_image(root, rel_path, mode)[0]


def load_image(root: str, rel_path: str, max_side: int | None = None) -> Image.Image:
    """The image as RGB, shrunk (aspect kept) so its longer side is at most max_side."""
    img = _decode(read_image_bytes(root, rel_path))[0].convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img
