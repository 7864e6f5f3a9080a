"""POST /v1/embeddings in the OpenAI shape, without HTTP or a model: a parsed JSON body in, an EmbeddingRequest
or an ApiError (status, a message naming the field, the field as `param`) out; results in, a response body out.

Request fields: model, input (a string or a list of strings and objects {"text", "image", "dataset", "task_id"};
a document object holds text and/or image, optionally its modality), encoding_format (float | base64),
input_type (query | document), mode (adaptive | direct | always; queries only: documents never reason),
dataset and task_id (for every query input that does not name its own), return_reasoning, user (ignored).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.mbeir import image_gate
from trainer.modeling.interface import MODES, CandidateInput, QueryInput, candidate_input, query_input
from trainer.serving.images import ImageRefused, decode_image

REQUEST_KEYS = ("model", "input", "encoding_format", "input_type", "mode", "dataset", "task_id",
                "return_reasoning", "user", "dimensions")
ENCODINGS = ("float", "base64")
INPUT_TYPES = ("query", "document")
_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error"}


def _limit(default: int, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Limits:
    max_inputs: int = _limit(256, "inputs per request (more: 400)")
    max_request_bytes: int = _limit(32 * 2**20, "request body bytes (more: 413)")
    max_image_bytes: int = _limit(image_gate.MAX_IMAGE_BYTES, "bytes of one image (more: 400); default: the image "
                                  "gate's, every room's")
    max_image_pixels: int = _limit(image_gate.MAX_IMAGE_PIXELS, "pixels of one image, read from its header before "
                                   "decoding (more: 400); default: the image gate's")
    max_text_chars: int = _limit(20_000, "characters of one text (more: 400; the model reads its first max_text_tokens)")


class ApiError(Exception):
    """An answer other than 200, with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = _ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class EmbeddingRequest:
    inputs: list[QueryInput | CandidateInput]
    mode: str  # the queries' mode; documents are prefill only whatever it says
    encoding_format: str
    return_reasoning: bool


@dataclass
class Result:
    """One input's answer: its L2-normalised embedding and what the model did."""

    embedding: np.ndarray  # float32
    generated_tokens: int
    prompt_tokens: int
    reasoning: str | None = None  # the generated text, when asked for


def parse_request(body: Any, limits: Limits, model_name: str) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; this endpoint takes {list(REQUEST_KEYS)}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"model is required: the name of the served model ({model_name!r})", "model")
    if model != model_name:
        raise ApiError(404, f"The model {model!r} does not exist: this server serves {model_name!r}", "model",
                       "model_not_found")
    if body.get("dimensions") is not None:
        raise ApiError(400, "dimensions is not supported: a TRACE embedding has the model's hidden size",
                       "dimensions")
    encoding = _choice(body, "encoding_format", ENCODINGS)
    input_type = _choice(body, "input_type", INPUT_TYPES)
    mode = _choice(body, "mode", MODES)
    reasoning = body.get("return_reasoning", False)
    if not isinstance(reasoning, bool):
        raise ApiError(400, f"return_reasoning must be true or false, got {reasoning!r}", "return_reasoning")
    defaults = {k: body[k] for k in ("dataset", "task_id") if k in body} if input_type == "query" else {}
    inputs = [_input(item, f"input[{i}]", input_type, defaults, limits)
              for i, item in enumerate(_items(body.get("input"), limits))]
    return EmbeddingRequest(inputs, mode if input_type == "query" else "direct", encoding, reasoning)


def _choice(body: dict, key: str, choices: tuple[str, ...]) -> str:
    value = body.get(key)
    if value is None:
        return choices[0]
    if value not in choices:
        raise ApiError(400, f"{key} must be one of {list(choices)}, got {value!r}", key)
    return value


def _items(value: Any, limits: Limits) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input is required: a string or a non-empty list of strings and objects", "input")
    if len(value) > limits.max_inputs:
        raise ApiError(400, f"input has {len(value)} items; at most {limits.max_inputs} per request "
                       "(--max_inputs): split it", "input")
    return value


def _input(item: Any, where: str, input_type: str, defaults: dict, limits: Limits) -> QueryInput | CandidateInput:
    if isinstance(item, str):
        fields = {"text": item}
    elif isinstance(item, dict):
        fields = dict(item)
    else:
        raise ApiError(400, f"{where} must be a string or an object with text and/or image, got "
                       f"{type(item).__name__} (token arrays are not accepted: send text)", where)
    text = fields.get("text")
    if isinstance(text, str) and len(text) > limits.max_text_chars:
        raise ApiError(400, f"{where}.text has {len(text)} characters, over the limit of {limits.max_text_chars} "
                       "(--max_text_chars)", f"{where}.text")
    if fields.get("image") is not None:
        try:
            fields["image"] = decode_image(fields["image"], limits.max_image_bytes, limits.max_image_pixels)
        except ImageRefused as err:
            raise ApiError(400, f"{where}.image: {err}", f"{where}.image") from None
    try:
        if input_type == "document":
            return candidate_input(fields, where)
        return query_input({**defaults, **fields}, where)
    except ValueError as err:
        raise ApiError(400, str(err), where) from None


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """float: a list of numbers; base64: the little-endian float32 bytes, as the OpenAI API sends them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def response(request: EmbeddingRequest, results: list[Result], model_name: str) -> dict:
    data = []
    for i, r in enumerate(results):
        row = {"object": "embedding", "index": i, "embedding": encode(r.embedding, request.encoding_format),
               "reasoned": r.generated_tokens > 0, "generated_tokens": r.generated_tokens}
        if request.return_reasoning:
            row["reasoning"] = r.reasoning or ""
        data.append(row)
    prompt = sum(r.prompt_tokens for r in results)
    total = prompt + sum(r.generated_tokens for r in results)
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": prompt, "total_tokens": total}}
