"""What the teacher answers, as the pipeline sees it: `TeacherResult` (one request's outcome, never an exception),
`parse_output` (the schema and format checks that decide whether an output is usable or must be asked again)
and `result_from_record` (a journaled answer as a result). No HTTP here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import schemas
from validators.cot_format import format_problems, split_cot

_OUTPUT_SCHEMAS = {"judge": "judge_output", "verifier": "verifier_output"}
_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


@dataclass
class TeacherResult:
    key: str
    ok: bool
    content: str = ""
    parsed: Any = None  # (reasoning, answer) for "cot", a dict for "judge"/"verifier"
    prompt_tokens: int = 0  # summed over every call made for this request (what it cost)
    completion_tokens: int = 0
    model: str = ""
    attempts: int = 0  # HTTP calls made, retries and re-asks included
    error: str = ""  # rate_limited | server_error | timeout | connection | malformed_output | bad_request | internal
    detail: str = ""
    from_journal: bool = False
    latency_s: float = 0.0
    kind: str = ""


@cache
def _validator(schema: str):
    return schemas.validator(schema)


def parse_output(kind: str, content: str) -> tuple[Any, str]:
    """(parsed, "") for a usable output, (None, why) otherwise."""
    if kind == "cot":
        parsed = split_cot(content)
        return (parsed, "") if parsed else (None, ",".join(format_problems(content)))
    m = _FENCE.match(content)
    body = m.group("body") if m else content
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object"
    try:
        obj = json.loads(body[start:end + 1])
    except ValueError as e:
        return None, f"bad JSON: {e}"
    errors = sorted(_validator(_OUTPUT_SCHEMAS[kind]).iter_errors(obj), key=str)
    if errors:
        return None, f"schema: {errors[0].message}"
    return obj, ""


def result_from_record(record: dict[str, Any]) -> TeacherResult:
    """A journaled answer as a TeacherResult (from_journal=True, costs nothing now)."""
    kind = record.get("kind", "cot")
    parsed, _ = parse_output(kind, record["content"])
    return TeacherResult(key=record["key"], ok=True, content=record["content"], parsed=parsed,
                         prompt_tokens=record.get("prompt_tokens", 0),
                         completion_tokens=record.get("completion_tokens", 0), model=record["model"],
                         attempts=record.get("attempts", 0), from_journal=True, kind=kind)


def first_choice(completion: dict[str, Any]) -> tuple[str, str] | None:
    """(content, finish_reason) of a chat completion's first choice; None for a reply without a usable one."""
    try:
        choice = completion["choices"][0]
        return choice["message"]["content"] or "", choice.get("finish_reason") or ""
    except (KeyError, IndexError, TypeError):
        return None


def check_output(kind: str, content: str, finish: str) -> tuple[Any, str]:
    """parse_output for an answer that ended with `finish`: an output cut off at the token limit is never usable."""
    if finish == "length":
        return None, "finish_reason=length (output cut off)"
    return parse_output(kind, content)


def parse_completion(body: bytes) -> dict[str, Any]:
    """A chat completion reply's body as a dict (empty when it is not a JSON object)."""
    try:
        completion = json.loads(body)
    except ValueError:
        return {}
    return completion if isinstance(completion, dict) else {}
