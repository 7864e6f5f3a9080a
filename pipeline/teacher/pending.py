"""The pending file format of batch mode: what the teacher stage writes for each request the journal cannot
answer (one JSONL line per request, `pending_line`) and what BatchJobs.submit_pending reads back
(`parse_pending`) to upload as OpenAI batches (batch.py).

Pending line (what the stage writes; `meta` is ours and is not uploaded):
    {"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": ..., "messages": [...], **params},
     "meta": {"kind": "cot|judge|verifier", "prompt_id": ..., "prompt_sha": ..., "est_prompt_tokens": N}}
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.teacher.prompting import TeacherRequest

ENDPOINT = "/v1/chat/completions"
KINDS = frozenset({"cot", "judge", "verifier"})


def pending_line(req: TeacherRequest) -> str:
    """The pending JSONL line (no newline) for one request that the journal does not answer."""
    return json.dumps({
        "custom_id": req.key, "method": "POST", "url": ENDPOINT,
        "body": {"model": req.model, "messages": req.messages, **req.params},
        "meta": {"kind": req.kind, "prompt_id": req.prompt_id, "prompt_sha": req.prompt_sha,
                 "est_prompt_tokens": req.est_prompt_tokens},
    }, ensure_ascii=False, separators=(",", ":"))


def parse_pending(raw: bytes) -> dict[str, Any] | None:
    """One pending line as written by pending_line; None for a line that is not one."""
    try:
        x = json.loads(raw)
        ok = (isinstance(x["custom_id"], str) and x["custom_id"] and x.get("url", ENDPOINT) == ENDPOINT
              and isinstance(x["body"]["messages"], list) and isinstance(x["body"]["model"], str)
              and x["meta"]["kind"] in KINDS)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return x if ok else None
