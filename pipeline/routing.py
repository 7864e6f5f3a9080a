"""Route each example to "direct" (target `<|emb|>` only) or "reasoning" (CoT, then `<|emb|>`). Beam-free.

dataset: the paper's published M-BEIR-CoT composition (PAPER.md §2 Phase 1) — CIRR, FashionIQ, InfoSeek and
OVEN carry reasoning, the six other datasets do not.
heuristic: cheap rules over modality, instruction and text; no calls.
judge: the teacher labels each query (pipeline.stages.route wires the call; `route_from_judge` reads its verdict).
"""

from __future__ import annotations

import re

from pipeline.mbeir.records import Example

DIRECT, REASONING = "direct", "reasoning"

# PAPER.md §2 Phase 1: the reasoning half of M-BEIR-CoT (575,442 samples after filtering).
PAPER_REASONING_DATASETS = frozenset({"cirr", "fashioniq", "infoseek", "oven"})

# Heuristic: a composed (image + text) query asks for a change or a fact about what is shown; a question or an
# edit verb in a text query asks for more than a caption match.
_QUESTION = re.compile(r"\?\s*$|^\s*(who|what|which|where|when|why|how)\b", re.IGNORECASE)
_EDIT = re.compile(r"\b(change|replace|make it|instead|without|remove|add|swap|more|less|but)\b", re.IGNORECASE)


def route_by_dataset(example: Example) -> tuple[str, float | None]:
    return (REASONING if example.query.dataset in PAPER_REASONING_DATASETS else DIRECT), None


def route_by_heuristic(example: Example) -> tuple[str, float | None]:
    q = example.query
    text = q.query_txt or ""
    if q.query_modality == "image,text":
        return REASONING, None
    if _QUESTION.search(text) or _EDIT.search(text):
        return REASONING, None
    return DIRECT, None


# Choice (PAPER.md names a judge without a threshold): a 'complex' label below this confidence routes direct.
JUDGE_MIN_CONFIDENCE = 0.5


def route_from_judge(verdict: dict, min_confidence: float) -> tuple[str, float | None]:
    """A judge verdict (schemas/judge_output) -> route; an unsure 'complex' goes direct (it costs a CoT call)."""
    confidence = float(verdict["confidence"])
    if verdict["label"] == "complex" and confidence >= min_confidence:
        return REASONING, confidence
    return DIRECT, confidence


RULE_ROUTERS = {"dataset": route_by_dataset, "heuristic": route_by_heuristic}
