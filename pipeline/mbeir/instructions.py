"""query_instructions.tsv: lookup, deterministic per-query choice, and UniIR's query text formatting."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pipeline.mbeir.layout import DATASET_NAMES, MODALITIES


def format_string(s: str | None) -> str:
    """UniIR's format_string: drop CRs, strip spaces and quotes, capitalise the first letter,
    end with "." unless the text already ends with ".", "?" or "!"."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if s:
        s = s[0].upper() + s[1:]
        if s[-1] not in ".?!":
            s += "."
    return s


def query_text(prompt: str, query_txt: str | None) -> str:
    """The query text the model sees, as UniIR builds it: format_string(f"{prompt} {query_txt}").
    An image-only query (no text) gets just the formatted prompt."""
    return format_string(f"{prompt} {query_txt or ''}")


def instruction_key(dataset_id: int | str, query_modality: str, cand_modality: str) -> str:
    return f"{dataset_id}, {query_modality}, {cand_modality}"


@dataclass(frozen=True)
class Instructions:
    """Prompts by key "{dataset_id}, {query_modality}, {cand_modality}" (MBEIR.md, Instructions)."""

    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Instructions:
        """Parse the TSV: header row first (kept as data if its dataset id cell is a number); columns query
        modality, cand modality, dataset name, dataset id, then any number of prompts (blank cells, trailing
        tabs and CRLF are tolerated). A malformed row, an unknown modality or dataset id, or a file without a
        single prompt is a ValueError naming the line."""
        prompts: dict[str, tuple[str, ...]] = {}
        lines = text.lstrip("\ufeff").splitlines()
        first = lines[0].split("\t") if lines else []
        skip = 0 if len(first) > 3 and first[3].strip().isdigit() else 1  # a header-less file keeps its first row
        for number, line in enumerate(lines[skip:], start=skip + 1):
            cells = [c.strip() for c in line.split("\t")]
            if not any(cells):
                continue
            if len(cells) < 5 or not cells[3].isdigit():
                raise ValueError(f"query_instructions.tsv line {number}: expected query modality, cand modality, "
                                 f"dataset name, dataset id, prompts...; got {line[:200]!r}")
            for name, value in (("query modality", cells[0]), ("cand modality", cells[1])):
                if value not in MODALITIES:
                    raise ValueError(f"query_instructions.tsv line {number}: {name} {value!r} is not one of "
                                     f"{', '.join(MODALITIES)}")
            if int(cells[3]) not in DATASET_NAMES:
                raise ValueError(f"query_instructions.tsv line {number}: dataset id {cells[3]} is not an M-BEIR "
                                 f"dataset id (0-9)")
            found = tuple(c for c in cells[4:] if c)
            if found:
                key = instruction_key(int(cells[3]), cells[0], cells[1])
                prompts[key] = prompts.get(key, ()) + found
        if not prompts:
            raise ValueError("query_instructions.tsv holds no prompt: every query would be rejected as "
                             "unknown_instruction")
        return cls(prompts)

    def get(self, dataset_id: int, query_modality: str, cand_modality: str) -> tuple[str, ...]:
        return self.prompts.get(instruction_key(dataset_id, query_modality, cand_modality), ())

    def choose(self, dataset_id: int, query_modality: str, cand_modality: str, qid: str, seed: int) -> str | None:
        """One prompt, fixed by (qid, seed) through a hash, so every worker picks the same one; None if no prompt."""
        options = self.get(dataset_id, query_modality, cand_modality)
        if not options:
            return None
        digest = hashlib.sha256(f"{seed}\x1f{dataset_id}\x1f{qid}".encode()).digest()
        return options[int.from_bytes(digest[:8], "big") % len(options)]
