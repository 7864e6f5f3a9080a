"""What an embedder takes and gives: queries and candidates (as dataclasses, or plain dicts made into them here,
with a ValueError naming what is wrong), the encoding result, and the Embedder contract that evaluation uses.

    from trainer import TraceEmbedder
    model = TraceEmbedder.from_pretrained("user/trace-2b")
    q = model.encode_queries([{"text": "...", "image": "cat.jpg", "dataset": "cirr", "task_id": 7}])
    c = model.encode_candidates([{"text": "...", "image": None, "modality": "text"}])   # q.embeddings @ c.T
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

MODES = ("adaptive", "direct", "always")  # PAPER.md §4 throughput table: TRACE adaptive / direct / always reason
QUERY_KEYS = ("text", "image", "dataset", "task_id")
CANDIDATE_KEYS = ("text", "image", "modality")
MAX_NEW_TOKENS = 128  # a query's reasoning tokens before <|emb|> is forced
QUERY_BATCH, CANDIDATE_BATCH = 8, 32  # rows per forward


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
    def encode_queries(self, queries: list[QueryInput], mode: str = "adaptive",
                       max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = QUERY_BATCH) -> EncodeResult: ...

    def encode_candidates(self, candidates: list[CandidateInput], batch_size: int = CANDIDATE_BATCH) -> Any: ...


# ---- plain dicts into inputs ----------------------------------------------------------------------------------
def load_image(image: Any, where: str) -> Image.Image | None:
    """A PIL image (as given), a path (opened, RGB) or None."""
    if image is None or isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        from pipeline.mbeir import image_gate  # regular files within the byte and pixel caps (its docstring)

        try:
            return image_gate.load_rgb(image, where="")
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: image {str(image)!r} cannot be read ({err})") from None
    raise ValueError(f"{where}: image must be a PIL image, a path or None, got {type(image).__name__}")


def _check_keys(item: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(allowed)}")


def _text(item: Mapping, where: str) -> str | None:
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: text must be a string or None, got {type(text).__name__}")
    return text if text and text.strip() else None


def _task(item: Mapping, where: str) -> tuple[str, int]:
    """(dataset, task_id) of a query dict: they pick its student prompt."""
    from pipeline.mbeir.layout import TASKS  # only here: importing the model must not import pipeline

    missing = [k for k in ("dataset", "task_id") if k not in item]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; dataset and task_id pick the query's prompt "
                         "(e.g. 'cirr', 7)")
    task_id = item["task_id"]
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id not in TASKS:
        raise ValueError(f"{where}: task_id {task_id!r} is not an M-BEIR task; choose from {sorted(TASKS)}")
    dataset = item["dataset"]
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"{where}: dataset must be a non-empty string such as 'cirr', got {dataset!r}")
    return dataset, task_id


def query_input(item: QueryInput | Mapping, where: str = "query") -> QueryInput:
    if isinstance(item, QueryInput):
        return item
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: a query is a dict or QueryInput, got {type(item).__name__}")
    _check_keys(item, QUERY_KEYS, where)
    dataset, task_id = _task(item, where)
    text, image = _text(item, where), load_image(item.get("image"), where)
    if text is None and image is None:
        raise ValueError(f"{where}: needs a text or an image")
    return QueryInput(text=text, image=image, dataset=dataset, task_id=task_id)


def candidate_input(item: CandidateInput | Mapping, where: str = "candidate") -> CandidateInput:
    """A CandidateInput; a dict's modality, when absent, is what it holds (text, image or both)."""
    if isinstance(item, CandidateInput):
        return item
    from pipeline.mbeir.layout import MODALITIES

    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: a candidate is a dict or CandidateInput, got {type(item).__name__}")
    _check_keys(item, CANDIDATE_KEYS, where)
    text, image = _text(item, where), load_image(item.get("image"), where)
    held = ",".join(k for k, v in (("image", image), ("text", text)) if v is not None)
    modality = item.get("modality") or held
    if modality not in MODALITIES:
        raise ValueError(f"{where}: modality {modality!r} is not one of {list(MODALITIES)}"
                         if modality else f"{where}: needs a text or an image")
    if held != modality:
        raise ValueError(f"{where}: modality {modality!r} does not match what it holds "
                         f"({held or 'nothing'}); give {' and '.join(modality.split(','))}")
    return CandidateInput(text=text, image=image, modality=modality)


def query_inputs(items: Iterable[QueryInput | Mapping]) -> list[QueryInput]:
    return [query_input(q, f"query {i}") for i, q in enumerate(items)]


def candidate_inputs(items: Iterable[CandidateInput | Mapping]) -> list[CandidateInput]:
    return [candidate_input(c, f"candidate {i}") for i, c in enumerate(items)]
