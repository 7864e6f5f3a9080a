"""An image that arrives in a request: a data URL (data:image/png;base64,...) or plain base64. It passes the one
image gate every room uses (pipeline/mbeir/image_gate.py: byte cap before base64 decoding, format and pixel cap
from the header before the pixels are decoded, so a decompression bomb costs a header read); the server adds
only what is about requests: a URL is never fetched."""

from __future__ import annotations

from PIL import Image

from pipeline.mbeir import image_gate


class ImageRefused(ValueError):
    """An image the server will not use; the message says why (it completes 'input[i].image ...')."""


def decode_image(value: object, max_bytes: int, max_pixels: int) -> Image.Image:
    """The RGB image a data URL or base64 string holds; ImageRefused (with the gate's reason code) otherwise."""
    if not isinstance(value, str):
        raise ImageRefused(f"must be a data URL or a base64 string, got {type(value).__name__}")
    if value.startswith(("http://", "https://")):
        raise ImageRefused("is a URL: the server fetches nothing; send a data URL (data:image/png;base64,...) "
                           "or base64")
    if value.startswith("data:") and not value.startswith("data:image/"):
        raise ImageRefused("is a data URL that is not data:image/<type>;base64,<data>")
    limits = image_gate.ImageLimits(max_bytes, max_pixels)
    try:
        return image_gate.load_rgb(image_gate.bytes_from_base64(value, limits), limits)
    except image_gate.ImageRejected as err:
        raise ImageRefused(f"{err.detail} ({err.reason})") from None
