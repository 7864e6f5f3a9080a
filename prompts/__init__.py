"""Prompt templates shipped as package data. A prompt's identity is the sha256 of its text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def render(self, **fields: str) -> str:
        """Fill `{name}` fields; literal braces in templates are written `{{` `}}`."""
        return self.text.format(**fields)


@cache
def load(prompt_id: str) -> Prompt:
    """Return `prompts/<prompt_id>.txt`."""
    text = resources.files(__name__).joinpath(f"{prompt_id}.txt").read_text(encoding="utf-8")
    return Prompt(prompt_id, text)


def available() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))
