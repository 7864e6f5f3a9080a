"""Teacher requests: one Example -> one OpenAI chat request with a stable key (DESIGN.md "exactly-once spend").

Templates are `prompts/<id>.txt`. Every template ends with labelled lines, one field per line, which the
offline reference server parses; keep them stable:

    Task type: <TASK_TYPES[prompt id]>   (first line)
    Dataset: ...   Instruction: ...   Query text: ...   Query modality: ...   Candidate modality: ...
    Target: ...    Answer: ...        (verifier only)

Field values are flattened to one line. Images follow the text as `image_url` parts, each preceded by a text
part naming it ("Query image:", "Target image:"; see IMAGE_LABELS).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import prompts
from pipeline.mbeir.records import Example, ImageFacts

# PAPER.md §2 Phase 2: one CoT template per task family.
CIR_DATASETS = frozenset({"cirr", "fashioniq"})
KNOWLEDGE_DATASETS = frozenset({"infoseek", "oven"})
TEXT_TASKS = frozenset({1})  # t -> t

# First line of each template: how the reference server (and a human) tells the families apart.
TASK_TYPES: dict[str, str] = {
    "cot_cir": "composed image retrieval",
    "cot_knowledge": "knowledge-intensive retrieval",
    "cot_visual": "visual description",
    "cot_text": "text retrieval",
    "judge": "difficulty judge",
    "verifier_cir": "composed image retrieval verifier",
    "verifier_knowledge": "knowledge verifier",
}
IMAGE_LABELS = {"query": "Query image:", "target": "Target image:"}

DEFAULT_MAX_SIDE = 512  # px; long side of images sent as data URLs
# "mbeir-image:<max_side>:<sha256 or ->:<1 when sendable as it is, else 0>:<path under the M-BEIR root>",
# see materialize_images; the digest and the flag come from the read-time check (records.ImageFacts).
DEFERRED_IMAGE = "mbeir-image:"
IMAGE_TOKENS = 256  # fixed per-image estimate (a 448-512 px image is ~256 tokens for Qwen-VL and GPT-4o)
CHARS_PER_TOKEN = 4  # English text averages ~4 characters per BPE token
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message
JSON_RESPONSE = {"type": "json_object"}
# Requests estimated above this are never sent (prompt_too_long). The longest real M-BEIR prompts are a few
# thousand tokens (a long OVEN/InfoSeek entity summary plus two images); README "Prompt budget" has the measure.
DEFAULT_MAX_PROMPT_TOKENS = 8192


class PromptTooLong(ValueError):
    """A request whose estimated prompt exceeds the budget (reason code prompt_too_long)."""

    def __init__(self, estimate: int, limit: int):
        super().__init__(f"about {estimate} prompt tokens (estimate), over --max_prompt_tokens {limit}; not sent")
        self.estimate, self.limit = estimate, limit

ImageLoader = Callable[[str], bytes]


@dataclass
class TeacherRequest:
    """One chat call. `key` identifies it across runs; `messages` are what is sent."""

    key: str
    kind: str  # "cot" | "judge" | "verifier"
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    prompt_id: str
    prompt_sha: str
    est_prompt_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # caller's bookkeeping; not part of the key


def family_for(dataset: str, task_id: int) -> str:
    """The CoT template id for a (dataset, task) pair."""
    if dataset in CIR_DATASETS:
        return "cot_cir"
    if dataset in KNOWLEDGE_DATASETS:
        return "cot_knowledge"
    if task_id in TEXT_TASKS:
        return "cot_text"
    return "cot_visual"


def verifier_for(dataset: str) -> str:
    """The verifier template id: CIR has its own; every other family is checked against the target text."""
    return "verifier_cir" if dataset in CIR_DATASETS else "verifier_knowledge"


def request_key(model: str, prompt_sha: str, key_messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 of canonical JSON of everything that determines the answer (never the API key)."""
    blob = json.dumps(
        {"model": model, "prompt_sha": prompt_sha, "messages": key_messages, "params": params},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def estimate_tokens(request: TeacherRequest) -> int:
    """Rough prompt size: text chars / CHARS_PER_TOKEN + IMAGE_TOKENS per image + per-message overhead."""
    total = 0
    for message in request.messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                total += -(-len(part["text"]) // CHARS_PER_TOKEN)
            else:
                total += IMAGE_TOKENS
    return total


def _reencoded_jpeg(data: bytes, max_side: int) -> bytes:
    """The image decoded, shrunk so its long side is at most max_side, and encoded as a JPEG (quality 90)."""
    from pipeline.mbeir import image_gate

    with image_gate.open_image(data) as img:
        scale = min(1.0, max_side / max(img.size))
        # JPEG: libjpeg decodes straight at the largest 1/2^k scale still at least the target size.
        img.draft("RGB", (int(img.width * scale), int(img.height * scale)))
        if img.mode != "RGB":
            img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
        return out.getvalue()


def _data_url(encoded: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode("ascii")


def jpeg_data_url(data: bytes, max_side: int = DEFAULT_MAX_SIDE) -> str:
    """JPEG data URL of an image whose long side is at most `max_side`. An RGB or greyscale JPEG already that
    small (most of M-BEIR: short side 256) is sent as it is; anything else is decoded, shrunk and re-encoded.
    Bad bytes -> ValueError."""
    from pipeline.mbeir import image_gate

    try:
        with image_gate.open_image(data, where="") as img:
            if img.format == "JPEG" and img.mode in ("RGB", "L") and max(img.size) <= max_side:
                img.load()  # a truncated file fails here, as it would when re-encoded
                return _data_url(data)
        return _data_url(_reencoded_jpeg(data, max_side))
    except (OSError, ValueError) as e:
        raise image_gate.ImageRejected(image_gate.reason_of(e), f"cannot decode image: {e}") from e


class _EncodedImages:
    """Bounded per-process cache of re-encoded (shrunk) images by (digest, max_side): the CoT and verifier
    requests of an example, and the queries sharing an image, decode and encode it once while it is held.
    Images sent as they are need no entry: their encoding is the file itself."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.held = max_bytes, 0
        self.entries: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def get(self, digest: str, max_side: int, data: bytes) -> bytes:
        key = (digest, max_side)
        encoded = self.entries.get(key)
        if encoded is not None:
            self.entries.move_to_end(key)
            return encoded
        encoded = _reencoded_jpeg(data, max_side)
        self.entries[key] = encoded
        self.held += len(encoded)
        while self.held > self.max_bytes and len(self.entries) > 1:
            self.held -= len(self.entries.popitem(last=False)[1])
        return encoded


ENCODED_CACHE_BYTES = 32 * 2**20  # ~600 shrunk 512 px JPEGs per worker process
_ENCODED = _EncodedImages(ENCODED_CACHE_BYTES)


def _deferred_url(rel_path: str, max_side: int, digest: str = "-", as_is: bool = False) -> str:
    return f"{DEFERRED_IMAGE}{max_side}:{digest}:{int(as_is)}:{rel_path}"


def has_deferred_images(request: TeacherRequest) -> bool:
    return any(url.startswith(DEFERRED_IMAGE) for url in _image_urls(request))


def _image_urls(request: TeacherRequest):
    for message in request.messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    yield part["image_url"]["url"]


def _materialized_url(reference: str, loader: ImageLoader) -> str:
    """The data URL of a deferred reference. The bytes are read once, through the loader's real-path check; when
    the read-time check handed on a digest they must still match it (else ValueError: the file changed), and
    an image it found sendable as it is is sent without another decode."""
    max_side, digest, as_is, rel_path = reference[len(DEFERRED_IMAGE):].split(":", 3)
    data = loader(rel_path)
    if digest != "-":
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"image {rel_path} changed since it was checked")
        if as_is == "1":
            return _data_url(data)
        try:
            return _data_url(_ENCODED.get(digest, int(max_side), data))
        except OSError as e:
            raise ValueError(f"cannot decode image: {e}") from e
    return jpeg_data_url(data, int(max_side))


def materialize_images(request: TeacherRequest, loader: ImageLoader) -> TeacherRequest:
    """The request as sent: every deferred image reference replaced by its JPEG data URL (the key does not
    change). Bad or changed bytes -> ValueError."""
    if not has_deferred_images(request):
        return request

    def part(p: dict) -> dict:
        url = p["image_url"]["url"] if p.get("type") == "image_url" else ""
        if not url.startswith(DEFERRED_IMAGE):
            return p
        return {**p, "image_url": {**p["image_url"], "url": _materialized_url(url, loader)}}

    messages = [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m["content"], list) else m
                for m in request.messages]
    return dataclasses.replace(request, messages=messages)


class _Images:
    """Turns relative image paths into (sent part, key part) pairs. With `defer`, the sent part is a reference
    that materialize_images() turns into the data URL just before the call, so requests stay small while they
    wait in shuffles and journal hits never encode an image; the key is the same either way."""

    def __init__(self, loader: ImageLoader | None, mode: str, max_side: int, url_base: str, defer: bool = False):
        if mode not in ("data_url", "url"):
            raise ValueError(f"image_mode must be 'data_url' or 'url', got {mode!r}")
        if mode == "data_url" and loader is None:
            raise ValueError("image_mode='data_url' needs an image_loader")
        self.loader, self.mode, self.max_side, self.url_base = loader, mode, max_side, url_base.rstrip("/")
        self.defer = defer

    def parts(self, label: str, rel_path: str, facts: ImageFacts | None = None) -> tuple[list[dict], list[dict]]:
        """`facts` (from the read-time check) spare the read: the key needs only the digest."""
        if self.mode == "url":
            url = f"{self.url_base}/{rel_path.lstrip('/')}"
            digest = "url-sha256:" + hashlib.sha256(url.encode("utf-8")).hexdigest()
        elif self.defer and facts is not None:
            url = _deferred_url(rel_path, self.max_side, facts.sha256, facts.sendable_as_is(self.max_side))
            digest = f"sha256:{facts.sha256}@{self.max_side}"
        else:
            data = self.loader(rel_path)
            url = _deferred_url(rel_path, self.max_side) if self.defer else jpeg_data_url(data, self.max_side)
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}@{self.max_side}"
        head = {"type": "text", "text": label}
        return ([head, {"type": "image_url", "image_url": {"url": url}}],
                [head, {"type": "image_url", "image_url": {"url": digest}}])


def _line(value: str | None) -> str:
    return " ".join((value or "").split()) or "(none)"


def target_text(example: Example) -> str:
    """The ground-truth target text: the positive candidates' texts, one line."""
    return _line(" | ".join(c.txt for c in example.positives if c.txt))


def _fields(example: Example) -> dict[str, str]:
    q = example.query
    return {
        "dataset": q.dataset,
        "instruction": _line(example.instruction),
        "query_text": _line(q.query_txt),
        "query_modality": q.query_modality,
        "cand_modality": example.cand_modality,
        "target_text": target_text(example),
    }


def _build(kind: str, prompt_id: str, example: Example, fields: dict[str, str], *, model: str,
           params: dict[str, Any], images: _Images | None, with_target_image: bool,
           max_prompt_tokens: int | None) -> TeacherRequest:
    prompt = prompts.load(prompt_id)
    text = {"type": "text", "text": prompt.render(**fields)}
    sent, keyed = [text], [text]
    if images is not None:
        paths = [("query", example.query.query_img_path, example.query.query_img)]
        if with_target_image:
            paths += [("target", c.img_path, c.img) for c in example.positives[:1]]
        for label, rel, facts in paths:
            if rel:
                s, k = images.parts(IMAGE_LABELS[label], rel, facts)
                sent += s
                keyed += k
    # A text-only request goes out as a plain string: some OpenAI-compatible servers (llama.cpp's chat templates)
    # cannot concatenate content parts. The key is computed on the parts either way.
    messages = [{"role": "user", "content": sent if len(sent) > 1 else text["text"]}]
    params = {k: v for k, v in params.items() if v is not None}  # None drops a default (e.g. response_format)
    key = request_key(model, prompt.sha, [{"role": "user", "content": keyed}], params)
    req = TeacherRequest(key, kind, model, messages, dict(params), prompt_id, prompt.sha)
    req.est_prompt_tokens = estimate_tokens(req)
    if max_prompt_tokens is not None and req.est_prompt_tokens > max_prompt_tokens:
        raise PromptTooLong(req.est_prompt_tokens, max_prompt_tokens)
    return req


def _images(image_loader, image_mode, max_side, image_url_base, defer_images=False) -> _Images | None:
    if image_loader is None and image_mode == "data_url":
        return None  # text-only request (e.g. a text-only teacher)
    return _Images(image_loader, image_mode, max_side, image_url_base, defer_images)


def build_cot_request(example: Example, *, model: str, params: dict[str, Any],
                      image_loader: ImageLoader | None = None, image_mode: str = "data_url",
                      max_side: int = DEFAULT_MAX_SIDE, image_url_base: str = "",
                      defer_images: bool = False, max_prompt_tokens: int | None = None) -> TeacherRequest:
    """CoT request from the family template; query and target images attached when a loader/base is given.
    PromptTooLong when the estimate exceeds `max_prompt_tokens` (the same for the judge and the verifier)."""
    prompt_id = family_for(example.query.dataset, example.query.task_id)
    return _build("cot", prompt_id, example, _fields(example), model=model, params=params,
                  images=_images(image_loader, image_mode, max_side, image_url_base, defer_images),
                  with_target_image=True, max_prompt_tokens=max_prompt_tokens)


def build_judge_request(example: Example, *, model: str, params: dict[str, Any],
                        image_loader: ImageLoader | None = None, image_mode: str = "data_url",
                        max_side: int = DEFAULT_MAX_SIDE, image_url_base: str = "",
                        defer_images: bool = False, max_prompt_tokens: int | None = None) -> TeacherRequest:
    """Difficulty-judge request (JSON reply, schemas/judge_output); sees the query only, not the target.

    Sends response_format json_object unless params say `response_format=None` (servers without JSON mode).
    """
    fields = _fields(example)
    params = {"response_format": JSON_RESPONSE, **params}
    return _build("judge", "judge", example, fields, model=model, params=params,
                  images=_images(image_loader, image_mode, max_side, image_url_base, defer_images),
                  with_target_image=False, max_prompt_tokens=max_prompt_tokens)


def build_verifier_request(example: Example, reasoning: str, answer: str, *, model: str,
                           params: dict[str, Any], image_loader: ImageLoader | None = None,
                           image_mode: str = "data_url", max_side: int = DEFAULT_MAX_SIDE,
                           image_url_base: str = "", defer_images: bool = False,
                           max_prompt_tokens: int | None = None) -> TeacherRequest:
    """Verifier request (JSON reply, schemas/verifier_output). CIR sees reference and target images.

    `reasoning` is accepted for future templates; the PAPER.md §2 verifier judges the answer only.
    """
    prompt_id = verifier_for(example.query.dataset)
    fields = {**_fields(example), "answer": _line(answer)}
    params = {"response_format": JSON_RESPONSE, **params}
    images = (_images(image_loader, image_mode, max_side, image_url_base, defer_images)
              if prompt_id == "verifier_cir" else None)
    return _build("verifier", prompt_id, example, fields, model=model, params=params,
                  images=images, with_target_image=True, max_prompt_tokens=max_prompt_tokens)
