import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from pipeline.mbeir import reasons
from pipeline.mbeir.images import (
    UnsafeImagePath,
    check_image,
    image_digest,
    image_path,
    inspect_image,
    is_local_root,
    load_image,
    local_image_path,
    read_image_bytes,
    safe_image_path,
)


def _jpeg(size=(96, 48), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (a decompression bomb by its header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "mbeir_images" / "cirr_images"
    d.mkdir(parents=True)
    (d / "ok.jpg").write_bytes(_jpeg())
    (d / "cut.jpg").write_bytes(_jpeg((256, 256))[:400])
    (d / "text.jpg").write_bytes(b"not an image at all")
    (d / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (d / "gray.png").write_bytes(_gray_png())
    return str(tmp_path)


def _gray_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (10, 20), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_the_decode_check_hands_on_what_it_learnt(root):
    rel = "mbeir_images/cirr_images/ok.jpg"
    reason, facts = inspect_image(root, rel)
    assert reason is None and facts.sha256 == hashlib.sha256(_jpeg()).hexdigest()
    assert (facts.format, facts.mode, facts.size) == ("JPEG", "RGB", (96, 48))
    assert facts.sendable_as_is(512) and not facts.sendable_as_is(64)
    assert not inspect_image(root, "mbeir_images/cirr_images/gray.png")[1].sendable_as_is(512)  # PNG: re-encoded
    assert inspect_image(root, rel, mode="exists") == (None, None)  # nothing decoded, nothing learnt
    assert inspect_image(root, "mbeir_images/cirr_images/cut.jpg") == (reasons.UNREADABLE_IMAGE, None)


@pytest.mark.parametrize("rel, reason", [
    ("mbeir_images/cirr_images/ok.jpg", None),
    ("mbeir_images/cirr_images/gone.jpg", reasons.MISSING_IMAGE),
    ("mbeir_images/cirr_images/cut.jpg", reasons.UNREADABLE_IMAGE),
    ("mbeir_images/cirr_images/text.jpg", reasons.UNREADABLE_IMAGE),
    ("mbeir_images/cirr_images/bomb.png", reasons.DECOMPRESSION_BOMB),
    ("../cirr_images/ok.jpg", reasons.UNSAFE_IMAGE_PATH),
])
def test_check_image_decode(root, rel, reason):
    assert check_image(root, rel) == reason


def test_exists_mode_only_checks_presence(root):
    assert check_image(root, "mbeir_images/cirr_images/cut.jpg", mode="exists") is None
    assert check_image(root, "mbeir_images/cirr_images/gone.jpg", mode="exists") == reasons.MISSING_IMAGE
    with pytest.raises(ValueError):
        check_image(root, "mbeir_images/cirr_images/ok.jpg", mode="bogus")


@pytest.mark.parametrize("limit", [3000, 1000])  # 96x48 = 4608 px: over the limit (warning), over twice it (error)
def test_bomb_limit_warning_counts_as_bomb(root, monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert check_image(root, "mbeir_images/cirr_images/ok.jpg") == reasons.DECOMPRESSION_BOMB


def test_load_image_rgb_and_resized(root):
    img = load_image(root, "mbeir_images/cirr_images/ok.jpg", max_side=32)
    assert img.mode == "RGB" and img.size == (32, 16)
    assert load_image(root, "mbeir_images/cirr_images/ok.jpg").size == (96, 48)
    gray = load_image(root, "mbeir_images/cirr_images/gray.png", max_side=100)
    assert gray.mode == "RGB" and gray.size == (10, 20)


def test_read_bytes_and_digest(root, tmp_path):
    data = read_image_bytes(root, "mbeir_images/cirr_images/ok.jpg")
    assert data == (tmp_path / "mbeir_images/cirr_images/ok.jpg").read_bytes()
    assert image_digest(data) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="unsafe"):
        read_image_bytes(root, "/etc/passwd")


@pytest.mark.parametrize("rel, ok", [
    ("mbeir_images/a/b.jpg", True), ("a..b/c.jpg", True), ("", False), ("/a.jpg", False),
    ("\\\\server\\a.jpg", False), ("https://x/a.jpg", False), ("a/../../b.jpg", False), ("~/a.jpg", False),
])
def test_safe_image_path(rel, ok):
    assert safe_image_path(rel) is ok


@pytest.fixture
def linked_root(tmp_path):
    """A root whose images include links: one to a file outside the root, one to a folder outside it, one
    inside the root; the root itself is reached through a link too."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_jpeg())
    real = tmp_path / "real-root"
    d = real / "mbeir_images" / "cirr_images"
    d.mkdir(parents=True)
    (d / "ok.jpg").write_bytes(_jpeg())
    (d / "out.jpg").symlink_to(outside / "secret.jpg")
    (d / "outdir").symlink_to(outside, target_is_directory=True)
    (d / "in.jpg").symlink_to(d / "ok.jpg")
    (tmp_path / "root-link").symlink_to(real, target_is_directory=True)
    return str(tmp_path / "root-link")


@pytest.mark.parametrize("mode", ["none", "exists", "decode"])
def test_a_symlink_out_of_the_root_is_unsafe_in_every_mode(linked_root, mode):
    for rel in ("mbeir_images/cirr_images/out.jpg", "mbeir_images/cirr_images/outdir/secret.jpg"):
        assert check_image(linked_root, rel, mode=mode) == reasons.UNSAFE_IMAGE_PATH
        with pytest.raises(UnsafeImagePath):
            read_image_bytes(linked_root, rel)
        assert local_image_path(linked_root, rel) is None
    assert check_image(linked_root, "mbeir_images/cirr_images/in.jpg", mode=mode) is None
    assert check_image(linked_root, "mbeir_images/cirr_images/ok.jpg", mode=mode) is None
    assert read_image_bytes(linked_root, "mbeir_images/cirr_images/in.jpg") == _jpeg()


def test_object_store_paths_get_the_string_check_only():
    assert not is_local_root("gs://bucket/mbeir") and is_local_root("/data/mbeir") and is_local_root("rel/dir")
    with pytest.raises(UnsafeImagePath):
        image_path("gs://bucket/mbeir", "../other/x.jpg")
    assert image_path("gs://bucket/mbeir", "mbeir_images/x.jpg", join=lambda a, b: f"{a}/{b}") == \
        "gs://bucket/mbeir/mbeir_images/x.jpg"
