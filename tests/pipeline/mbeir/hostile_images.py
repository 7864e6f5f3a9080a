"""Hostile image files for the image gate's tests in every room (pipeline, training, evaluation, API), and a
guard that fails a call which blocks instead of hanging the test run."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.mbeir import reasons

FOLDER = "mbeir_images/cirr_images"
# name -> the code every room must give it
HOSTILE = {
    "bomb.png": reasons.DECOMPRESSION_BOMB,  # 100 MP by its header: Pillow alone only warns (under 2x its limit)
    "fifo.jpg": reasons.IMAGE_NOT_A_FILE,  # a reader's open() blocks until a writer comes
    "sparse.jpg": reasons.IMAGE_TOO_LARGE,  # 2 GiB, nothing on disk
    "cut.jpg": reasons.UNREADABLE_IMAGE,  # truncated JPEG
}


def jpeg(size: tuple[int, int] = (32, 24), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A PNG of a few dozen bytes whose IHDR claims width x height."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_hostile(folder: Path) -> dict[str, Path]:
    """The HOSTILE files, plus ok.jpg, in `folder`; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ok.jpg").write_bytes(jpeg())
    (folder / "bomb.png").write_bytes(bomb_png())
    os.mkfifo(folder / "fifo.jpg")
    with open(folder / "sparse.jpg", "wb") as f:
        f.truncate(2 * 2**30)
    (folder / "cut.jpg").write_bytes(jpeg((256, 256))[:400])
    return {name: folder / name for name in ["ok.jpg", *HOSTILE]}


def hostile_root(tmp_path: Path) -> str:
    """An M-BEIR root whose FOLDER holds write_hostile's files."""
    write_hostile(tmp_path / "root" / FOLDER)
    return str(tmp_path / "root")


def no_hang(call: Callable[[], Any], seconds: float = 20) -> Any:
    """call()'s result or exception; AssertionError when it is still running after `seconds` (a blocked open
    stays behind in a daemon thread, so the test run still ends)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")
