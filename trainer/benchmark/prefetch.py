"""Data preparation off the model's thread: reading, image decoding and the processor run in DataLoader workers.

A job's chunks are split among `num_workers` worker processes (round-robin); each worker turns its chunks into
Pieces (a batch ready for the model, with the ids and row positions it covers) and, after a chunk's last batch,
an end piece carrying the chunk's read counts (bad lines, missing or refused images), which exist only in the
worker that read it. The model's thread only embeds (CandidateBatches, QueryBatches: for a TraceEmbedder the
payload is already the processor's batches). Prefetch is bounded: each worker keeps at most PREFETCH_BATCHES pieces
ready. num_workers 0 runs the same code in the model's thread.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.modeling.interface import CandidateInput, Embedder, EncodeResult, QueryInput

PREFETCH_BATCHES = 4  # per worker: enough to hide a slow image, small enough that memory stays a few batches
MAX_DEFAULT_WORKERS = 8


@dataclass
class Piece:
    """Rows of one chunk: `payload` is what the job embeds; rows[i] is the position (in the chunk's line order)
    of ids[i]. The chunk's last piece has `end`: {"stats": ReadStats.as_dict(), "lines": lines it covers}."""

    unit: int
    rows: list[int]
    ids: list[str]
    payload: Any = None
    end: dict | None = None


class ChunkSource(IterableDataset):
    """The pieces of `units` (chunk indices) made by `pieces(unit)`; each worker process takes every
    num_workers-th unit, so a chunk's pieces all come from one worker, in order."""

    def __init__(self, units: Sequence[int], pieces: Callable[[int], Iterator[Piece]]):
        self.units, self.pieces = list(units), pieces

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        mine = self.units if info is None else self.units[info.id::info.num_workers]
        for unit in mine:
            yield from self.pieces(unit)


def _as_is(piece: Piece) -> Piece:
    return piece


def pieces_of(source: ChunkSource, num_workers: int) -> Iterator[Piece]:
    """Iterate the source through a DataLoader (workers forked, so the model is never copied or pickled)."""
    if num_workers == 0:
        return iter(DataLoader(source, batch_size=None, collate_fn=_as_is))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers warns about every fork otherwise
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return iter(DataLoader(source, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                           prefetch_factor=PREFETCH_BATCHES, multiprocessing_context=context))


def default_workers() -> int:
    """Workers per process from the cores this process may use, shared by the ranks on this node, one core
    left to the model's thread: 1 on a 2-core machine, 0 for each of 2 ranks there, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_DEFAULT_WORKERS, per_process - 1))


class CandidateBatches:
    """Candidate windows as batches: `prepare` runs where the data is read, `embed` on the model's thread.

    Any Embedder: a window is one piece, embedded by its encode_candidates. A TraceEmbedder: the window is
    length-sorted and collated by its processor in the worker (trainer/inference/collate.py's candidate_batches),
    so only the forward pass (the engine's embed_candidate_batch) is left to the model's thread."""

    def __init__(self, embedder: Embedder, batch_size: int):
        self.embedder, self.batch_size = embedder, batch_size
        self.collates = all(hasattr(embedder, a) for a in ("processor", "candidate_items", "hidden"))

    def prepare(self, inputs: list[CandidateInput]) -> Iterator[tuple[list[int], Any]]:
        """(positions in `inputs`, payload) per batch."""
        if not self.collates:
            yield list(range(len(inputs))), inputs
            return
        from trainer.inference.collate import candidate_batches

        yield from candidate_batches(self.embedder, inputs, self.batch_size)

    @torch.inference_mode()
    def embed(self, payload: Any) -> torch.Tensor:
        """(n, d) float32 L2-normalised embeddings of a prepared payload, on the CPU."""
        if not self.collates:
            return torch.as_tensor(self.embedder.encode_candidates(payload, batch_size=self.batch_size)).float()
        from trainer.inference.engine import embed_candidate_batch

        return embed_candidate_batch(self.embedder, payload)


@dataclass
class PreparedQueries:
    """A piece's queries ready for the engine: `batches` are the processor's batches of its prefill chunks
    (collate.query_batches); the queries come without their images (None), which the batches hold."""

    queries: list[QueryInput]
    batches: list[dict[str, torch.Tensor]]


class QueryBatches:
    """A piece's queries: `prepare` runs where the data is read, `embed` on the model's thread, in `mode`.

    Any Embedder: the payload is the queries, embedded by its encode_queries. A TraceEmbedder: each prefill chunk
    (query_batch queries) is tokenized and its images processed in the worker (collate.query_batches), so the
    model's thread runs only the engine's loop (QueryEngine.run with the prepared batches: the same bits).
    `ahead=False` leaves the processor to encode_queries on the model's thread, where online encoding pays it
    (trainer.bench times that)."""

    def __init__(self, embedder: Embedder, mode: str, max_new_tokens: int, batch_size: int, ahead: bool = True):
        self.embedder, self.mode, self.max_new_tokens, self.batch_size = embedder, mode, max_new_tokens, batch_size
        self.collates = ahead and all(hasattr(embedder, a) for a in ("processor", "query_items", "emb_id"))

    def prepare(self, inputs: list[QueryInput]) -> list[QueryInput] | PreparedQueries:
        if not self.collates:
            return inputs
        from trainer.inference.collate import query_batches

        return PreparedQueries([replace(q, image=None) for q in inputs],
                               list(query_batches(self.embedder, inputs, self.batch_size)))

    def embed(self, payload: list[QueryInput] | PreparedQueries) -> EncodeResult:
        if not self.collates:
            return self.embedder.encode_queries(payload, mode=self.mode, max_new_tokens=self.max_new_tokens,
                                                batch_size=self.batch_size)
        from trainer.inference.engine import QueryEngine

        engine = QueryEngine(self.embedder, self.mode, self.max_new_tokens, self.batch_size)
        return engine.run(payload.queries, payload.batches)
