"""Student-side prompts (PAPER.md §2 "Student-side prompts"): the query and candidate system prompts."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

import prompts

EMB_TOKEN = "<|emb|>"  # PAPER.md §1: the embedding token


@dataclass(frozen=True)
class SystemPrompt:
    """A rendered student prompt that keeps the template's text apart from the values filled into it: the
    template's control tokens (its <|emb|>) are real tokens, a value (a dataset name, a modality: the caller's
    text) is tokenized as text, so it can never write one (trainer/modeling/processor.py)."""

    parts: tuple[str, ...]  # template text at even indices, filled-in values at odd ones

    def __str__(self) -> str:
        return "".join(self.parts)


def _render(prompt_id: str, **values: str) -> SystemPrompt:
    """prompts.load(prompt_id).render(**values).strip(), as parts."""
    parts: list[str] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(prompts.load(prompt_id).text):
        parts += [literal] if field is None else [literal, values[field]]
    parts[0], parts[-1] = parts[0].lstrip(), parts[-1].rstrip()
    return SystemPrompt(tuple(parts))


@cache
def _strategies() -> dict:
    return json.loads(resources.files(prompts).joinpath("student_strategies.json").read_text(encoding="utf-8"))


def query_system_prompt(dataset: str, task_id: int) -> SystemPrompt:
    """Role "retrieval encoder for <task>", the task strategy, and the simple/complex routing rule."""
    table = _strategies()
    info = table["datasets"].get(dataset, {"name": dataset, "strategy": "match the target the query describes."})
    task = f"{info['name']} {table['tasks'].get(str(task_id), 'multimodal retrieval')}"
    return _render("student_query", task=task, strategy=info["strategy"])


def candidate_system_prompt(modality: str) -> SystemPrompt:
    """Role "encoder for candidates" naming the modality, and "output exactly <|emb|>"."""
    name = {"image,text": "image-and-text"}.get(modality, modality)
    return _render("student_candidate", modality=name)


def format_query_text(instruction: str, query_txt: str | None) -> str:
    """M-BEIR format_string(f"{instruction} {query_txt}"): strip, capitalise, final period (MBEIR.md)."""
    text = f"{instruction} {query_txt}" if query_txt else instruction
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."
