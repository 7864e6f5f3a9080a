"""What the reference teacher answers: a well-formed answer to any prompt built from our templates, assembled
from its labelled lines (pipeline/teacher/prompting.py documents them), a broken variant of one on demand,
and the chat completion that carries either. Used alike by /v1/chat/completions and the Batch API."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from pipeline.teacher.prompting import CIR_DATASETS, IMAGE_TOKENS, KNOWLEDGE_DATASETS, TASK_TYPES
from pipeline.teacher.reference.state import NOT_A_MODEL

_FAMILY = {v: k for k, v in TASK_TYPES.items()}
_LABEL = re.compile(r"^(Task type|Dataset|Instruction|Query text|Query modality|Candidate modality|Target|Answer):"
                    r"[ \t]*(.*)$", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
STOP_WORDS = frozenset(
    "a an the and or of to in on at for with by from as is are was were be been this that these those it its "
    "into than then there their them they he she his her which who whom what when where why how not no but so "
    "if about over under more most less very can could should would will just also same image images picture "
    "photo find show shows showing retrieve query target none one two".split())


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + ("..." if len(words) > n else "")


def keywords(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in STOP_WORDS}


def _known(value: str) -> str:
    return "" if value in ("", "(none)") else value


def _cot(family: str, f: dict[str, str]) -> tuple[str, str]:
    query, target = _words(_known(f.get("Query text", "")), 30), _words(_known(f.get("Target", "")), 30)
    instruction = _words(_known(f.get("Instruction", "")), 20)
    if family == "cot_cir":
        edit = query or "an unspecified change"
        answer = target or f"The reference item changed so that it {edit}"
        reasoning = (f"The source is the reference image shown with the query. The requested edit is: {edit}. "
                     "Everything the edit does not mention stays unchanged: the main subject, its category, "
                     f"setting and overall composition. Applying the edit to the source gives the target: {answer}")
    elif family == "cot_knowledge":
        title, _, summary = (target or query or "the pictured entity").partition(". ")
        answer = f"{title}: {summary}" if summary else title
        reasoning = (f"The question asks: {query or instruction}. The query image shows the subject it refers to. "
                     "Step one, identify the visible subject; step two, relate it to the question; step three, "
                     f"pick the encyclopedic entity that matches every clue. The clues point to {title}"
                     + (f", described as {_words(summary, 20)}." if summary else "."))
    elif family == "cot_visual":
        answer = target or query or "A photograph of the described scene"
        reasoning = (f"Fine-grained details first: {query or instruction or 'the visible scene'}. "
                     f"Objects, attributes, colours and layout all follow from this. "
                     f"In summary the target shows {answer}")
    else:
        answer = target or query or "A passage answering the question"
        reasoning = (f"The information need is: {query or instruction}. The key terms are "
                     f"{', '.join(sorted(keywords(query))[:6]) or 'those of the query'}. "
                     f"A relevant passage must state {answer}")
    return reasoning, _words(answer, 40)


def _judge(f: dict[str, str]) -> dict[str, Any]:
    complex_ = f.get("Dataset", "") in CIR_DATASETS | KNOWLEDGE_DATASETS
    return {"label": "complex" if complex_ else "simple", "confidence": 0.9 if complex_ else 0.85,
            "rationale": "reference stand-in: complex for CIR and knowledge datasets"}


def _verify(f: dict[str, str]) -> dict[str, Any]:
    reference = _known(f.get("Target", "")) or _known(f.get("Query text", ""))
    shared = keywords(f.get("Answer", "")) & keywords(reference)
    if shared:
        return {"decision": "consistent", "confidence": 0.9, "rationale": f"shares {sorted(shared)[:3]}"}
    return {"decision": "inconsistent", "confidence": 0.8, "rationale": "no keyword in common with the target"}


def _prompt_parts(messages: list[dict]) -> tuple[str, int]:
    texts, images = [], 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or ():
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images += 1
    return "\n".join(texts), images


def answer_for(messages: list[dict]) -> tuple[str, str, int]:
    """(content, kind, prompt_tokens) of a well-formed answer to a prompt built from our templates."""
    text, images = _prompt_parts(messages)
    fields = dict(_LABEL.findall(text))
    family = _FAMILY.get(fields.get("Task type", ""), "cot_visual")
    prompt_tokens = len(text) // 4 + images * IMAGE_TOKENS
    if family == "judge":
        return json.dumps(_judge(fields)), "judge", prompt_tokens
    if family.startswith("verifier"):
        return json.dumps(_verify(fields)), "verifier", prompt_tokens
    reasoning, answer = _cot(family, fields)
    return f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>", "cot", prompt_tokens


def malformed(kind: str, content: str, rng: random.Random) -> tuple[str, str]:
    """(content, finish_reason) of one broken variant."""
    variant = rng.choice(("tags", "empty", "length"))
    if variant == "empty":
        return "", "stop"
    if variant == "length":
        return content[: max(1, len(content) // 2)], "length"
    if kind == "cot":
        return content.replace("</reasoning>", "").replace("<answer>", "<answer><answer>"), "stop"
    return "Sure! Here is my verdict: " + content[: len(content) // 2], "stop"


def chat_completion(completion_id: str, model: str, content: str, finish: str, prompt_tokens: int
                    ) -> dict[str, Any]:
    """The chat.completion object carrying one answer (its completion tokens estimated from its length)."""
    completion_tokens = len(content) // 4 + 1
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "reference-stand-in",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens, "note": NOT_A_MODEL},
    }
