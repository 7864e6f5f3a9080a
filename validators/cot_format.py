"""The teacher's output format (PAPER.md §2 Phase 2): `<reasoning>…</reasoning> <answer>…</answer>`.

`split_cot` is the one parser of that format; the teacher stage uses it to decide re-asks and the rule
filter (validators.rules) builds the format rule's reason codes on `format_problems`.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"</?\s*(reasoning|answer)\s*>", re.IGNORECASE)
_SHAPE = re.compile(
    r"^\s*<reasoning>(?P<reasoning>.*?)</reasoning>\s*<answer>(?P<answer>.*?)</answer>\s*$",
    re.DOTALL,
)


def format_problems(text: str) -> list[str]:
    """Reason codes for a malformed output; [] when it has exactly one reasoning pair, then one answer pair."""
    if not text or not text.strip():
        return ["format_empty"]
    tags = [(m.group(0).startswith("</"), m.group(1).lower()) for m in _TAG.finditer(text)]
    opens = {name: sum(1 for closing, n in tags if n == name and not closing) for name in ("reasoning", "answer")}
    closes = {name: sum(1 for closing, n in tags if n == name and closing) for name in ("reasoning", "answer")}
    problems: list[str] = []
    for name in ("reasoning", "answer"):
        if opens[name] == 0 and closes[name] == 0:
            problems.append(f"format_missing_{name}")
        elif opens[name] != closes[name]:
            problems.append("format_unclosed_tag")
        elif opens[name] > 1:
            problems.append("format_repeated_tag")
    if problems:
        return sorted(set(problems))
    if _SHAPE.match(text) is None:
        order = [n for closing, n in tags if not closing]
        return ["format_wrong_order" if order and order[0] == "answer" else "format_nested_or_extra_text"]
    return []


def split_cot(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) stripped of tags and whitespace, or None when the format is broken."""
    if format_problems(text):
        return None
    m = _SHAPE.match(text)
    assert m is not None
    return m.group("reasoning").strip(), m.group("answer").strip()
