"""The one gate every image passes before it is decoded, in every room: the pipeline's read-time check, teacher
request encoding and --embed_images, the trainer's training rows, the evaluator and the Python API (and the
server). Beam-free and torch-free: it needs Pillow and the standard library only.

Contract (the same file has the same fate everywhere):
  * A file path is read only when it is a regular file (os.stat before the open, os.fstat after it; the open
    uses O_NONBLOCK, so a FIFO, device or socket put there between the two checks never blocks) and only when
    its size is within the byte cap; at most max_bytes + 1 bytes are ever read (a file growing meanwhile
    is refused, not read whole). Object-store paths are read through the caller's opener, also capped.
  * Bytes given directly (embedded Parquet structs, API/server input, base64) pass the same byte cap.
  * Decoding starts only after the header: the format must be one of FORMATS (never Ghostscript's EPS or
    the like) and width * height must be within the pixel cap. Over the cap is an error, never Pillow's warning
    (Pillow only warns up to twice its own MAX_IMAGE_PIXELS); a process that lowers Image.MAX_IMAGE_PIXELS
    lowers the cap with it.
  * Every refusal is an ImageRejected (a ValueError) carrying one of the reason codes in pipeline/mbeir/reasons:
    missing_image, image_not_a_file, image_too_large, decompression_bomb, unreadable_image (plus
    unsafe_image_path from images.UnsafeImagePath, a subclass). Its message names the input (`where`).
    Rooms count refusals by that code: the pipeline rejects the record, training skips and counts the row,
    evaluation counts per pool/pair, the API and server raise ValueError naming the input.

The limits are module constants (one set for every room, so no room decodes what another refuses); a caller
may pass other ImageLimits (tests do).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO

from PIL import Image

from pipeline.mbeir import reasons

MAX_IMAGE_BYTES = 64 * 2**20  # M-BEIR images are JPEGs of a few dozen KB; a phone photo is a few MB
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own default MAX_IMAGE_PIXELS (about 9459 x 9459): 256 MiB as RGB
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG's opener also opens MPO (multi-frame camera JPEGs)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


LIMITS = ImageLimits()
RemoteOpener = Callable[[str], AbstractContextManager[IO[bytes]]]


class ImageRejected(ValueError):
    """An image the gate refuses: `reason` is a code of pipeline/mbeir/reasons, `detail` what was wrong."""

    def __init__(self, reason: str, detail: str, where: str = ""):
        super().__init__(f"{where}: {detail}" if where else detail)
        self.reason, self.detail, self.where = reason, detail, where

    def __reduce__(self):  # args hold the message only: rebuild from the fields (crossing a process boundary)
        return _restore, (type(self), self.reason, self.detail, self.where)


def _restore(cls: type[ImageRejected], reason: str, detail: str, where: str) -> ImageRejected:
    err = Exception.__new__(cls)
    ImageRejected.__init__(err, reason, detail, where)
    return err


def reason_of(error: BaseException) -> str:
    """The reason code for an error met while reading or decoding an image (a missing file from any opener is
    missing_image; anything the gate did not name is unreadable_image)."""
    if isinstance(error, ImageRejected):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return reasons.MISSING_IMAGE
    return reasons.UNREADABLE_IMAGE


def is_local(path: str) -> bool:
    """True for a local file path (no URL scheme, or file:)."""
    return not _SCHEME.match(path) or path.startswith("file:")


def _check_stat(st: os.stat_result, limits: ImageLimits, where: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected(reasons.IMAGE_NOT_A_FILE, "not a regular file (a folder, FIFO, device or socket)", where)
    if st.st_size > limits.max_bytes:
        raise ImageRejected(reasons.IMAGE_TOO_LARGE, f"{st.st_size} bytes, over the {limits.max_bytes}-byte cap",
                            where)


def _capped(f: IO[bytes], limits: ImageLimits, where: str) -> bytes:
    data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageRejected(reasons.IMAGE_TOO_LARGE, f"over the {limits.max_bytes}-byte cap", where)
    return data


def stat_file(path: str | os.PathLike, limits: ImageLimits = LIMITS, where: str | None = None) -> None:
    """Nothing when a local path is a regular file within the byte cap; ImageRejected otherwise. Reads nothing."""
    where = str(path) if where is None else where
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageRejected(reasons.MISSING_IMAGE, "no such file", where) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"cannot stat it ({e})", where) from None
    _check_stat(st, limits, where)


def read_file(path: str | os.PathLike, limits: ImageLimits = LIMITS, where: str | None = None) -> bytes:
    """The bytes of a local image file; ImageRejected (missing_image, image_not_a_file, image_too_large,
    unreadable_image) instead of ever blocking or reading past the cap."""
    where = str(path) if where is None else where
    stat_file(path, limits, where)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageRejected(reasons.MISSING_IMAGE, "no such file", where) from None
    except OSError as e:
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"cannot open it ({e.strerror or e})", where) from None
    with os.fdopen(fd, "rb") as f:
        _check_stat(os.fstat(fd), limits, where)  # the file opened is the file checked
        try:
            return _capped(f, limits, where)
        except OSError as e:
            raise ImageRejected(reasons.UNREADABLE_IMAGE, f"cannot read it ({e.strerror or e})", where) from None


def read_path(path: str, open_remote: RemoteOpener | None = None, limits: ImageLimits = LIMITS,
              where: str | None = None) -> bytes:
    """read_file for a local path; for an object-store path (gs://, s3://, hf://) the bytes from
    `open_remote(path)` (Beam's FileSystems in the pipeline, fsspec in the trainer), capped the same way."""
    where = path if where is None else where
    if is_local(path):
        return read_file(path.removeprefix("file://"), limits, where)
    if open_remote is None:
        raise ImageRejected(reasons.UNREADABLE_IMAGE, "an object-store path needs an opener", where)
    try:
        with open_remote(path) as f:
            return _capped(f, limits, where)
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - each store raises its own types (BeamIOError, ClientError ...)
        raise ImageRejected(reason_of(e), f"cannot read it ({e})", where) from None


def check_bytes(data: object, limits: ImageLimits = LIMITS, where: str = "image bytes") -> bytes:
    """`data` when it is bytes within the byte cap; ImageRejected otherwise (also for a non-bytes value)."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"image bytes must be bytes, got {type(data).__name__}", where)
    if len(data) > limits.max_bytes:
        raise ImageRejected(reasons.IMAGE_TOO_LARGE, f"{len(data)} bytes, over the {limits.max_bytes}-byte cap",
                            where)
    return data


def bytes_from_base64(text: str, limits: ImageLimits = LIMITS, where: str = "image") -> bytes:
    """The bytes of a base64 image (bare, or a data:image/...;base64, URL): the byte cap is checked on the
    encoded length before decoding, and the text must be strict base64."""
    if not isinstance(text, str):
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"a base64 image is a string, got {type(text).__name__}",
                            where)
    body = _DATA_URL.sub("", text, count=1)
    if len(body) > 4 * (-(-limits.max_bytes // 3)):
        raise ImageRejected(reasons.IMAGE_TOO_LARGE, f"over the {limits.max_bytes}-byte cap (base64)", where)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"not base64 ({e})", where) from None
    return check_bytes(data, limits, where)


def open_image(data: bytes, limits: ImageLimits = LIMITS, where: str = "image") -> Image.Image:
    """The image with only its header read: an allowed format, width * height within the pixel cap. Its pixels
    are not decoded yet (a caller may draft() it first); decode them with load()."""
    data = check_bytes(data, limits, where)
    try:
        with warnings.catch_warnings():  # Pillow's own check, between 1x and 2x its limit, is only a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(reasons.DECOMPRESSION_BOMB, f"over the pixel cap; not decoded ({e})", where) from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types (OSError, SyntaxError, struct.error ...)
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"cannot be decoded as {'/'.join(FORMATS)} ({e})", where) from None
    cap = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    if img.width * img.height > cap:
        raise ImageRejected(reasons.DECOMPRESSION_BOMB,
                            f"{img.width} x {img.height} pixels, over the {cap}-pixel cap; not decoded", where)
    return img


def load(img: Image.Image, where: str = "image") -> Image.Image:
    """`img` (from open_image) with its pixels decoded; ImageRejected unreadable_image for a truncated or corrupt
    stream."""
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(reasons.DECOMPRESSION_BOMB, str(e), where) from None
    except Exception as e:  # noqa: BLE001 - as in open_image
        raise ImageRejected(reasons.UNREADABLE_IMAGE, f"cannot be decoded ({e})", where) from None
    return img


def decode(data: bytes, limits: ImageLimits = LIMITS, where: str = "image") -> Image.Image:
    """The decoded image of `data` (header checked first)."""
    return load(open_image(data, limits, where), where)


def load_rgb(source: str | os.PathLike | bytes, limits: ImageLimits = LIMITS, where: str | None = None
             ) -> Image.Image:
    """A local image file (by path) or image bytes, through every check above, decoded as RGB."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = where or "image bytes"
        data = check_bytes(source, limits, where)
    else:
        where = str(source) if where is None else where
        data = read_file(source, limits, where)
    return decode(data, limits, where).convert("RGB")
