"""The image gate itself: regular files only, never blocking, byte cap before reading, pixel cap as an error,
one reason code per refusal (pipeline/mbeir/image_gate.py). The rooms' own tests are tests/*/test_image_gate.py."""

from __future__ import annotations

import base64
import io
import os
import pickle

import pytest
from PIL import Image

from pipeline.mbeir import image_gate, reasons
from pipeline.mbeir.image_gate import ImageLimits, ImageRejected
from pipeline.mbeir.images import UnsafeImagePath

from .hostile_images import HOSTILE, bomb_png, jpeg, no_hang, write_hostile


@pytest.fixture
def files(tmp_path):
    return write_hostile(tmp_path / "images")


def _reason(call) -> str:
    with pytest.raises(ImageRejected) as caught:
        no_hang(call)
    return caught.value.reason


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_is_refused_with_its_code_and_never_blocks(files, name):
    assert _reason(lambda: image_gate.load_rgb(files[name])) == HOSTILE[name]


def test_a_good_file_passes_and_a_missing_one_is_missing(files, tmp_path):
    img = image_gate.load_rgb(files["ok.jpg"])
    assert img.mode == "RGB" and img.size == (32, 24)
    assert image_gate.read_file(files["ok.jpg"]) == jpeg()
    assert _reason(lambda: image_gate.read_file(tmp_path / "gone.jpg")) == reasons.MISSING_IMAGE
    assert _reason(lambda: image_gate.read_file(tmp_path)) == reasons.IMAGE_NOT_A_FILE  # a folder
    assert _reason(lambda: image_gate.read_file("/dev/zero")) == reasons.IMAGE_NOT_A_FILE  # endless device


def test_the_byte_cap_is_checked_before_reading(files, monkeypatch):
    opened = []
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a))
    assert _reason(lambda: image_gate.read_file(files["sparse.jpg"])) == reasons.IMAGE_TOO_LARGE
    assert opened == []  # refused from its size alone: never opened, never read


def test_a_file_swapped_for_a_fifo_after_the_stat_is_caught_after_the_open(files, monkeypatch):
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(files["ok.jpg"]))  # the check sees a file
    assert _reason(lambda: image_gate.read_file(files["fifo.jpg"])) == reasons.IMAGE_NOT_A_FILE


def test_a_file_that_grows_past_the_cap_is_not_read_whole(files, tmp_path, monkeypatch):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"0123456789")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(tiny))  # both checks see 10 bytes
    monkeypatch.setattr(os, "fstat", lambda fd: real_stat(tiny))
    assert len(jpeg()) > 100
    assert _reason(lambda: image_gate.read_file(files["ok.jpg"], ImageLimits(max_bytes=100))) == \
        reasons.IMAGE_TOO_LARGE


def test_the_pixel_cap_is_an_error_in_pillows_warning_band_and_beyond():
    assert 1 < 10_000 * 10_000 / Image.MAX_IMAGE_PIXELS < 2  # Pillow alone would only warn and decode it
    for data in (bomb_png(10_000, 10_000), bomb_png(100_000, 100_000)):
        assert _reason(lambda d=data: image_gate.decode(d)) == reasons.DECOMPRESSION_BOMB
    assert _reason(lambda: image_gate.decode(jpeg(), ImageLimits(max_pixels=32 * 24 - 1))) == \
        reasons.DECOMPRESSION_BOMB
    assert image_gate.decode(jpeg(), ImageLimits(max_pixels=32 * 24)).size == (32, 24)


def test_a_process_that_lowers_pillows_limit_lowers_the_cap(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 24 - 1)
    assert _reason(lambda: image_gate.decode(jpeg())) == reasons.DECOMPRESSION_BOMB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's check off: the gate's still holds
    assert _reason(lambda: image_gate.decode(bomb_png())) == reasons.DECOMPRESSION_BOMB


def test_only_raster_formats_are_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # would run Ghostscript
    assert _reason(lambda: image_gate.decode(eps)) == reasons.UNREADABLE_IMAGE
    for fmt in ("PNG", "WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (4, 3)).save(buf, format=fmt)
        assert image_gate.decode(buf.getvalue()).size == (4, 3), fmt


def test_bytes_pass_the_same_caps():
    small = ImageLimits(max_bytes=len(jpeg()) - 1)
    assert _reason(lambda: image_gate.load_rgb(jpeg(), small)) == reasons.IMAGE_TOO_LARGE
    assert _reason(lambda: image_gate.load_rgb(bomb_png())) == reasons.DECOMPRESSION_BOMB
    assert _reason(lambda: image_gate.check_bytes("not bytes")) == reasons.UNREADABLE_IMAGE
    assert image_gate.load_rgb(bytearray(jpeg())).size == (32, 24)


def test_base64_is_capped_before_it_is_decoded():
    text = base64.b64encode(jpeg()).decode()
    assert image_gate.bytes_from_base64(text) == jpeg()
    assert image_gate.bytes_from_base64("data:image/jpeg;base64," + text) == jpeg()
    huge = "A" * (4 * 2**20)
    assert _reason(lambda: image_gate.bytes_from_base64(huge, ImageLimits(max_bytes=2**20))) == \
        reasons.IMAGE_TOO_LARGE
    assert _reason(lambda: image_gate.bytes_from_base64("not base64!")) == reasons.UNREADABLE_IMAGE


def test_object_store_reads_are_capped(files):
    small = ImageLimits(max_bytes=100)
    opened = lambda path: open(files["ok.jpg"], "rb")  # noqa: E731 - a stand-in for FileSystems.open
    assert image_gate.read_path("gs://b/ok.jpg", opened) == jpeg()
    assert _reason(lambda: image_gate.read_path("gs://b/ok.jpg", opened, small)) == reasons.IMAGE_TOO_LARGE

    def gone(path):
        raise FileNotFoundError(path)
    assert _reason(lambda: image_gate.read_path("gs://b/gone.jpg", gone)) == reasons.MISSING_IMAGE
    assert image_gate.read_path(f"file://{files['ok.jpg']}") == jpeg()


def test_refusals_name_the_input_and_survive_pickling(files):
    with pytest.raises(ImageRejected, match=r"^cirr/bomb.png: over the pixel cap; not decoded") as caught:
        image_gate.decode(bomb_png(), where="cirr/bomb.png")
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), again.reason, str(again)) == (ImageRejected, reasons.DECOMPRESSION_BOMB, str(caught.value))
    unsafe = pickle.loads(pickle.dumps(UnsafeImagePath("leads out")))
    assert isinstance(unsafe, UnsafeImagePath) and unsafe.reason == reasons.UNSAFE_IMAGE_PATH
    assert image_gate.reason_of(unsafe) == reasons.UNSAFE_IMAGE_PATH
    assert image_gate.reason_of(FileNotFoundError()) == reasons.MISSING_IMAGE
    assert image_gate.reason_of(OSError()) == reasons.UNREADABLE_IMAGE


def test_the_reason_descriptions_state_the_caps():
    assert image_gate.MAX_IMAGE_BYTES == 64 * 2**20 and "64 MiB" in reasons.DESCRIPTIONS[reasons.IMAGE_TOO_LARGE]
    assert f"{image_gate.MAX_IMAGE_PIXELS:,}" in reasons.DESCRIPTIONS[reasons.DECOMPRESSION_BOMB]
