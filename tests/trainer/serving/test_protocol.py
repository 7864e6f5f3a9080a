"""The request parser and the image check, without a server: every malformed field is an ApiError naming it."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.trainer.serving.conftest import data_url
from trainer.serving.images import ImageRefused, decode_image
from trainer.serving.protocol import ApiError, EmbeddingRequest, Limits, Result, parse_request, response

LIMITS = Limits(max_inputs=4, max_image_bytes=4096, max_image_pixels=10_000, max_text_chars=50)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a few bytes of data: a decompression bomb's first bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(**body):
    return parse_request({"model": "m", **body}, LIMITS, "m")


def test_strings_take_the_request_dataset_and_documents_never_reason():
    req = parse(input=["a dog", {"text": "a cat", "dataset": "cirr", "task_id": 7}], dataset="mscoco", task_id=0)
    assert [(q.text, q.dataset, q.task_id) for q in req.inputs] == [("a dog", "mscoco", 0), ("a cat", "cirr", 7)]
    assert req.mode == "adaptive" and req.encoding_format == "float" and not req.return_reasoning
    img = Image.new("RGB", (20, 10), (1, 2, 3))
    docs = parse(input=[{"image": data_url(img)}, {"text": "x", "image": b64(_png(img))}], input_type="document",
                 mode="always")
    assert docs.mode == "direct" and [d.modality for d in docs.inputs] == ["image", "image,text"]
    assert np.array_equal(np.asarray(docs.inputs[0].image), np.asarray(img))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({"input": "x", "dataset": "mscoco", "task_id": 0, "modes": "direct"}, 400, "modes", "unknown field"),
    ({"model": None, "input": "x"}, 400, "model", "model is required"),
    ({"model": "other", "input": "x"}, 404, "model", "does not exist"),
    ({"input": []}, 400, "input", "non-empty list"),
    ({"input": ["x"] * 5, "dataset": "mscoco", "task_id": 0}, 400, "input", "at most 4 per request"),
    ({"input": [[1, 2, 3]]}, 400, "input[0]", "token arrays are not accepted"),
    ({"input": "a dog"}, 400, "input[0]", r"missing key\(s\) \['dataset', 'task_id'\]"),
    ({"input": "a dog", "dataset": "cirr", "task_id": 5}, 400, "input[0]", "not an M-BEIR task"),
    ({"input": "x" * 51, "dataset": "cirr", "task_id": 7}, 400, "input[0].text", "over the limit of 50"),
    ({"input": "x", "dataset": "cirr", "task_id": 7, "mode": "fast"}, 400, "mode", "mode must be one of"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "must be one of"),
    ({"input": "x", "dimensions": 64}, 400, "dimensions", "not supported"),
    ({"input": "x", "return_reasoning": "yes"}, 400, "return_reasoning", "true or false"),
    ({"input": {"text": "x"}, "input_type": "document"}, 400, "input", "non-empty list"),
    ({"input": [{"text": "x", "dataset": "cirr"}], "input_type": "document"}, 400, "input[0]", "unknown key"),
])
def test_malformed_requests_name_the_field(body, status, param, message):
    with pytest.raises(ApiError, match=message) as err:
        parse_request({"model": "m", **body}, LIMITS, "m")
    assert (err.value.status, err.value.param) == (status, param)
    assert err.value.body()["error"]["param"] == param


@pytest.mark.parametrize(("image", "message"), [
    ("data:image/png;base64,@@@@", r"not base64 .*\(unreadable_image\)"),
    ("aGVsbG8=\n", "not base64"),
    ("https://example.com/cat.jpg", "the server fetches nothing"),
    ("data:text/plain,hello", "not data:image/<type>;base64"),
    (b64(b"x" * 5000), r"over the 4096-byte cap .*\(image_too_large\)"),
    (b64(b"GIF89a but not really"), "cannot be decoded"),
    (b64(png_header(101, 100)), r"101 x 100 pixels, over the 10000-pixel cap.*\(decompression_bomb\)"),
    (b64(png_header(30_000, 30_000)), r"\(decompression_bomb\)"),
    (17, "must be a data URL or a base64 string"),
])
def test_bad_images_are_refused_before_decoding(image, message):
    with pytest.raises(ApiError, match=message) as err:
        parse(input=[{"text": "x", "image": image, "dataset": "cirr", "task_id": 7}])
    assert err.value.param == "input[0].image"


def test_pillow_warning_range_is_a_refusal_too():
    """Between MAX_IMAGE_PIXELS and twice that Pillow only warns: refused even with no pixel limit of ours."""
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    with pytest.raises(ImageRefused, match="decompression_bomb"):
        decode_image(b64(png_header(side, side)), 4096, 10**12)


def test_response_in_the_openai_shape():
    vec = np.array([0.6, 0.8], dtype=np.float32)
    req = EmbeddingRequest([], "adaptive", "base64", True)
    body = response(req, [Result(vec, 3, 10, "because"), Result(vec, 0, 7)], "m")
    assert body["usage"] == {"prompt_tokens": 17, "total_tokens": 20} and body["model"] == "m"
    first = body["data"][0]
    assert np.array_equal(np.frombuffer(base64.b64decode(first["embedding"]), dtype="<f4"), vec)
    assert (first["reasoned"], first["generated_tokens"], first["reasoning"]) == (True, 3, "because")
    assert body["data"][1]["reasoning"] == "" and body["data"][1]["index"] == 1
