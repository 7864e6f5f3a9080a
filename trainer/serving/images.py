"""An image that arrives in a request: a data URL (data:image/png;base64,...) or plain base64. Its size in bytes
is checked before it is decoded from base64, its pixel count from its header before its pixels are decoded, so a
decompression bomb costs a header read. `open_image` is the one place the server opens an image."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Image.open may try; nothing more exotic is parsed
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)


class ImageRefused(ValueError):
    """An image the server will not use; the message says why (it completes 'input[i].image ...')."""


def image_bytes(value: object, max_bytes: int) -> bytes:
    """The bytes a data URL or base64 string holds; ImageRefused when it is neither or holds more than max_bytes."""
    if not isinstance(value, str):
        raise ImageRefused(f"must be a data URL or a base64 string, got {type(value).__name__}")
    if value.startswith(("http://", "https://")):
        raise ImageRefused("is a URL: the server fetches nothing; send a data URL (data:image/png;base64,...) "
                           "or base64")
    match = _DATA_URL.match(value)
    if value.startswith("data:") and not match:
        raise ImageRefused("is a data URL that is not data:image/<type>;base64,<data>")
    text = value[match.end():] if match else value
    if len(text) > 4 * -(-max_bytes // 3):
        raise ImageRefused(f"is over the limit of {max_bytes} bytes (--max_image_bytes)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("is not valid base64") from None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image as RGB; ImageRefused when it cannot be decoded or its header declares more than max_pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageRefused(f"has {width}x{height} pixels, over the limit of {max_pixels} "
                                       "(--max_image_pixels)")
                return img.convert("RGB")
        except ImageRefused:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRefused(f"is a decompression bomb ({err})") from None
        except Exception as err:  # PIL raises many types for bad data (OSError, SyntaxError, struct.error ...)
            raise ImageRefused(f"cannot be decoded as {'/'.join(FORMATS)} ({type(err).__name__})") from None


def decode_image(value: object, max_bytes: int, max_pixels: int) -> Image.Image:
    return open_image(image_bytes(value, max_bytes), max_pixels)
