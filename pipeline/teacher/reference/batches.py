"""OpenAI Files and Batch API routes for the offline reference teacher (still NOT A MODEL).

    POST /v1/files (multipart, purpose "batch")   GET /v1/files/{id}   GET /v1/files/{id}/content
    DELETE /v1/files/{id}   POST /v1/batches   GET /v1/batches   GET /v1/batches/{id}
    POST /v1/batches/{id}/cancel

A batch is validated on its first poll (bad lines, mixed models or too many requests -> "failed"), then is
"in_progress" until `batch_speed` seconds after its creation (0: completes on the first poll) and is then
finished in one go: answers come from the same `answer_for` as /v1/chat/completions. Fault knobs, drawn
reproducibly from (seed, batch number, custom_id): `batch_pfail` of the items fail (HTTP 500 lines in the error
file), `pmalformed` of them get a broken answer, `batch_pexpire` of the batches expire with only their first
half answered (the rest are `batch_expired` lines in the error file). `batch_forced` ("ok" | "expire" |
"fail") fixes the outcome of the first batches, in creation order (tests).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.teacher.reference.answers import answer_for, chat_completion, malformed
from pipeline.teacher.reference.state import ServerState, error_response

# OpenAI batch guide (https://platform.openai.com/docs/guides/batch): at most 50,000 requests and 200 MB per
# batch input file, one model per file.
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
ENDPOINTS = frozenset({"/v1/chat/completions"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class _Batch:
    obj: dict[str, Any]
    outcome: str  # ok | expire | fail
    n: int  # creation order: fault draws depend on (seed, n, custom_id), never on the random id
    lines: list[dict] = field(default_factory=list)


class BatchStore:
    """In-memory files and batches of one server."""

    def __init__(self, state: ServerState):
        self.state = state
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"obj": FileObject dict, "data": bytes}
        self.batches: dict[str, _Batch] = {}
        self.created = 0

    # ---- files ---------------------------------------------------------------------------------------
    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        obj = {"id": _id("file"), "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": None}
        self.files[obj["id"]] = {"obj": obj, "data": data}
        return obj

    def _add_output(self, batch_id: str, kind: str, lines: list[dict]) -> str | None:
        if not lines:
            return None
        data = b"".join(json.dumps(x, ensure_ascii=False).encode("utf-8") + b"\n" for x in lines)
        return self.add_file(data, f"{batch_id}_{kind}.jsonl", f"batch_{kind}")["id"]

    # ---- batches -------------------------------------------------------------------------------------
    def create(self, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> dict[str, Any]:
        cfg = self.state.config
        n, self.created = self.created, self.created + 1
        bid = _id("batch")
        if n < len(cfg.batch_forced):
            outcome = cfg.batch_forced[n]
        else:
            outcome = "expire" if random.Random(f"{cfg.seed}:batch:{n}").random() < cfg.batch_pexpire else "ok"
        now = int(time.time())
        obj = {"id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": input_file_id,
               "completion_window": window, "status": "validating", "output_file_id": None,
               "error_file_id": None, "created_at": now, "in_progress_at": None, "expires_at": now + 86400,
               "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
               "cancelling_at": None, "cancelled_at": None, "request_counts": {"total": 0, "completed": 0,
                                                                                 "failed": 0},
               "metadata": metadata or None, "model": None, "usage": None}
        self.batches[bid] = _Batch(obj, outcome, n)
        return obj

    def poll(self, bid: str) -> dict[str, Any]:
        """The batch after advancing its clock."""
        b = self.batches[bid]
        if b.obj["status"] == "validating":
            self._validate(b)
        if b.obj["status"] == "in_progress" and time.time() - b.obj["created_at"] >= self.state.config.batch_speed:
            self._finish(b)
        return b.obj

    def cancel(self, bid: str) -> dict[str, Any]:
        b = self.batches[bid]
        if b.obj["status"] not in TERMINAL:
            now = int(time.time())
            b.obj.update(status="cancelled", cancelling_at=now, cancelled_at=now)
            errors = [self._err_line(x["custom_id"], None, "batch_cancelled", "the batch was cancelled")
                      for x in b.lines]
            b.obj["error_file_id"] = self._add_output(bid, "error", errors)
            b.obj["request_counts"]["failed"] = len(errors)
        return b.obj

    def _fail(self, b: _Batch, errors: list[dict]) -> None:
        b.obj.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors[:100]})

    def _validate(self, b: _Batch) -> None:
        f = self.files.get(b.obj["input_file_id"])
        if f is None or f["obj"]["purpose"] != "batch":
            return self._fail(b, [{"code": "invalid_file", "message": "input file not found or not purpose batch",
                                   "param": "input_file_id", "line": None}])
        if b.outcome == "fail":
            return self._fail(b, [{"code": "injected_failure", "message": "reference server: injected batch "
                                   "failure", "param": None, "line": None}])
        errors, lines, ids, models = [], [], set(), set()
        for i, raw in enumerate(f["data"].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                x = json.loads(raw)
                cid, body = x["custom_id"], x["body"]
                ok = (x.get("method") == "POST" and x.get("url") == b.obj["endpoint"] and isinstance(cid, str)
                      and cid not in ids and isinstance(body.get("messages"), list) and body.get("model"))
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = False
            if not ok:
                errors.append({"code": "invalid_request", "message": "bad batch line", "param": None, "line": i})
                continue
            ids.add(cid)
            models.add(body["model"])
            lines.append(x)
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "message": "one model per batch", "param": None,
                           "line": None})
        if len(lines) > MAX_BATCH_REQUESTS:
            errors.append({"code": "too_many_requests", "message": f"over {MAX_BATCH_REQUESTS} requests",
                           "param": None, "line": None})
        if errors or not lines:
            return self._fail(b, errors or [{"code": "empty_file", "message": "no requests", "param": None,
                                             "line": None}])
        b.lines = lines
        b.obj.update(status="in_progress", in_progress_at=int(time.time()), model=next(iter(models)))
        b.obj["request_counts"]["total"] = len(lines)

    def _finish(self, b: _Batch) -> None:
        cfg, bid = self.state.config, b.obj["id"]
        answered = len(b.lines) if b.outcome != "expire" else len(b.lines) // 2
        out, err, usage = [], [], [0, 0]
        for i, x in enumerate(b.lines):
            cid = x["custom_id"]
            if i >= answered:
                err.append(self._err_line(cid, None, "batch_expired", "not processed within the window"))
                continue
            rng = random.Random(f"{cfg.seed}:{b.n}:{cid}")
            r = rng.random()
            if r < cfg.batch_pfail:
                body = {"error": {"message": "reference server: injected item failure", "type": "server_error",
                                  "code": "server_error", "param": None}}
                err.append(self._err_line(cid, {"status_code": 500, "request_id": _id("req"), "body": body}))
                continue
            body = x["body"]
            content, kind, prompt_tokens = answer_for(body["messages"])
            finish = "stop"
            if r < cfg.batch_pfail + cfg.pmalformed:
                content, finish = malformed(kind, content, rng)
            completion = chat_completion(_id("chatcmpl-ref"), body["model"], content, finish, prompt_tokens)
            usage[0] += prompt_tokens
            usage[1] += completion["usage"]["completion_tokens"]
            out.append({"id": _id("batch_req"), "custom_id": cid,
                        "response": {"status_code": 200, "request_id": _id("req"), "body": completion},
                        "error": None})
        now = int(time.time())
        status = "expired" if b.outcome == "expire" else "completed"
        b.obj.update(status=status, finalizing_at=now, **{f"{status}_at": now},
                     output_file_id=self._add_output(bid, "output", out),
                     error_file_id=self._add_output(bid, "error", err),
                     usage={"input_tokens": usage[0], "output_tokens": usage[1], "total_tokens": sum(usage),
                            "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens_details": {"reasoning_tokens": 0}})
        b.obj["request_counts"].update(completed=len(out), failed=len(err))

    @staticmethod
    def _err_line(cid: str, response: dict | None, code: str = "", message: str = "") -> dict:
        error = {"code": code, "message": message} if code else None
        return {"id": _id("batch_req"), "custom_id": cid, "response": response, "error": error}


class _BatchRoutes:
    """The Files and Batch API routes over one BatchStore."""

    def __init__(self, store: BatchStore):
        self.store = store

    def _file(self, request: web.Request) -> dict[str, Any] | None:
        return self.store.files.get(request.match_info["id"])

    def _batch_id(self, request: web.Request) -> str | None:
        bid = request.match_info["id"]
        return bid if bid in self.store.batches else None

    async def upload(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            fields[part.name] = (part.filename, await part.read()) if part.filename else await part.text()
        if "file" not in fields or not isinstance(fields["file"], tuple):
            return error_response(400, "invalid_request_error", "missing multipart field 'file'")
        filename, data = fields["file"]
        purpose = fields.get("purpose", "")
        if purpose == "batch" and len(data) > MAX_BATCH_FILE_BYTES:
            return error_response(400, "invalid_request_error",
                                  f"batch files are limited to {MAX_BATCH_FILE_BYTES} bytes")
        return web.json_response(self.store.add_file(bytes(data), filename or "upload", purpose))

    async def get_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        return web.json_response(f["obj"]) if f else error_response(404, "invalid_request_error", "no such file")

    async def file_content(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return error_response(404, "invalid_request_error", "no such file")
        return web.Response(body=f["data"], content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if self.store.files.pop(fid, None) is None:
            return error_response(404, "invalid_request_error", "no such file")
        return web.json_response({"id": fid, "object": "file", "deleted": True})

    async def create_batch(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            input_file_id, endpoint, window = body["input_file_id"], body["endpoint"], body["completion_window"]
        except (ValueError, KeyError, TypeError) as e:
            return error_response(400, "invalid_request_error", f"bad request body: {e}")
        if endpoint not in ENDPOINTS or window != "24h":
            return error_response(400, "invalid_request_error",
                                  f"unsupported endpoint {endpoint!r} or window {window!r}")
        if input_file_id not in self.store.files:
            return error_response(400, "invalid_request_error", f"no such file {input_file_id!r}")
        return web.json_response(self.store.create(input_file_id, endpoint, window, body.get("metadata")))

    async def get_batch(self, request: web.Request) -> web.Response:
        bid = self._batch_id(request)
        if bid is None:
            return error_response(404, "invalid_request_error", "no such batch")
        return web.json_response(self.store.poll(bid))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        bid = self._batch_id(request)
        if bid is None:
            return error_response(404, "invalid_request_error", "no such batch")
        return web.json_response(self.store.cancel(bid))

    async def list_batches(self, request: web.Request) -> web.Response:
        batches = self.store.batches
        ids = list(reversed(batches))  # newest first, like OpenAI
        after = request.query.get("after")
        if after in batches:
            ids = ids[ids.index(after) + 1:]
        limit = max(1, min(100, int(request.query.get("limit", 20))))
        data = [batches[b].obj for b in ids[:limit]]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": len(ids) > limit})


def add_batch_routes(app: web.Application, state: ServerState) -> BatchStore:
    """Serve the Files and Batch API on `app`; the store is also kept as `state.batches`."""
    store = BatchStore(state)
    state.batches = store
    routes = _BatchRoutes(store)
    app.router.add_post("/v1/files", routes.upload)
    app.router.add_get("/v1/files/{id}", routes.get_file)
    app.router.add_delete("/v1/files/{id}", routes.delete_file)
    app.router.add_get("/v1/files/{id}/content", routes.file_content)
    app.router.add_post("/v1/batches", routes.create_batch)
    app.router.add_get("/v1/batches", routes.list_batches)
    app.router.add_get("/v1/batches/{id}", routes.get_batch)
    app.router.add_post("/v1/batches/{id}/cancel", routes.cancel_batch)
    return store
