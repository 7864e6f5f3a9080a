"""Student-side prompts (PAPER.md §2 "Student-side prompts"): the query and candidate system prompts."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import prompts

EMB_TOKEN = "<|emb|>"  # PAPER.md §1: the embedding token


@cache
def _strategies() -> dict:
    return json.loads(resources.files(prompts).joinpath("student_strategies.json").read_text(encoding="utf-8"))


def query_system_prompt(dataset: str, task_id: int) -> str:
    """Role "retrieval encoder for <task>", the task strategy, and the simple/complex routing rule."""
    table = _strategies()
    info = table["datasets"].get(dataset, {"name": dataset, "strategy": "match the target the query describes."})
    task = f"{info['name']} {table['tasks'].get(str(task_id), 'multimodal retrieval')}"
    return prompts.load("student_query").render(task=task, strategy=info["strategy"]).strip()


def candidate_system_prompt(modality: str) -> str:
    """Role "encoder for candidates" naming the modality, and "output exactly <|emb|>"."""
    name = {"image,text": "image-and-text"}.get(modality, modality)
    return prompts.load("student_candidate").render(modality=name).strip()


def format_query_text(instruction: str, query_txt: str | None) -> str:
    """M-BEIR format_string(f"{instruction} {query_txt}"): strip, capitalise, final period (MBEIR.md)."""
    text = f"{instruction} {query_txt}" if query_txt else instruction
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."
