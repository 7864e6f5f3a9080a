"""What evaluation needs from an embedder: the contract between trainer.modeling.model and trainer.evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

MODES = ("adaptive", "direct", "always")  # PAPER.md §4 throughput table: TRACE adaptive / direct / always reason


@dataclass
class QueryInput:
    text: str | None  # query text already carrying its M-BEIR instruction (format_string applied)
    image: Any | None  # PIL.Image.Image or None
    dataset: str  # M-BEIR file stem, e.g. "cirr"; picks the task-specific student prompt
    task_id: int


@dataclass
class CandidateInput:
    text: str | None
    image: Any | None
    modality: str  # "text" | "image" | "image,text"


@dataclass
class EncodeResult:
    embeddings: Any  # torch.Tensor (n, d), float32, L2-normalised
    reasoned: list[bool] = field(default_factory=list)  # True when the first generated token was not <|emb|>
    generated_tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # generated text before <|emb|>


class Embedder(Protocol):
    def encode_queries(self, queries: list[QueryInput], mode: str = "adaptive", max_new_tokens: int = 128,
                       batch_size: int = 8) -> EncodeResult: ...

    def encode_candidates(self, candidates: list[CandidateInput], batch_size: int = 32) -> Any: ...
