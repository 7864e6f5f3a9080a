"""The work of an evaluation: the pools to embed and each pair's queries, every one cut into cached chunks.

A PoolJob's chunk i is lines [i * encode_chunk, (i + 1) * encode_chunk) of the pool file; a QueryJob's chunk i is
the pair's parseable queries [i * encode_chunk, (i + 1) * encode_chunk) (after --limit). Each job reads its
chunks as Pieces (trainer/benchmark/prefetch.py, in worker processes) and embeds pieces on the model's thread;
its finished chunks are read back in order for search and scoring (PairQueries, PoolReader). Cache keys: the
model fingerprint, then the input file's fingerprint and everything that changes an embedding (queries: mode,
seed, max_new_tokens, instructions, limit; both: image size and chunk size).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.mbeir import layout
from trainer.benchmark.chunks import Chunk, ChunkFolder
from trainer.benchmark.config import EvalConfig
from trainer.benchmark.evalset import (
    EvalPair,
    ReadStats,
    candidate_input,
    eval_pairs,
    iter_candidates,
    line_offsets,
    query_inputs,
    read_instructions,
    read_queries,
)
from trainer.benchmark.prefetch import CandidateBatches, Piece, QueryBatches
from trainer.benchmark.retrieval import file_fingerprint
from trainer.modeling.interface import Embedder


def _folder(cfg: EvalConfig, model_fp: str, prefix: str, describe: dict) -> Path:
    digest = hashlib.sha256(json.dumps(describe, sort_keys=True).encode()).hexdigest()[:16]
    return cfg.cache_root / model_fp / f"{prefix}-{digest}"


@dataclass
class Assembly:
    """A chunk's pieces as they arrive (in any order of rows), and the model's seconds spent on them."""

    rows: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    embeddings: list[torch.Tensor] = field(default_factory=list)
    extra: dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, piece: Piece, embeddings: torch.Tensor, extra: dict[str, list], seconds: float) -> None:
        self.rows += piece.rows
        self.ids += piece.ids
        self.embeddings.append(embeddings)
        for key, values in extra.items():
            self.extra.setdefault(key, []).extend(values)
        self.seconds += seconds

    def chunk(self, end: dict, dtype: type) -> Chunk:
        order = sorted(range(len(self.rows)), key=self.rows.__getitem__)
        matrix = torch.cat(self.embeddings)[order].numpy() if self.embeddings else np.zeros((0, 0))
        info = {"stats": end["stats"], "lines": end["lines"], "seconds": round(self.seconds, 4),
                **{key: [values[i] for i in order] for key, values in self.extra.items()}}
        return Chunk([self.ids[i] for i in order], matrix.astype(dtype), info)


class PoolJob:
    """A candidate pool: its chunks are line ranges of the pool file; embeddings cached as float16."""

    unit, dtype = "candidates", np.float16

    def __init__(self, name: str, pool_file: str, cfg: EvalConfig, model_fp: str, batches: CandidateBatches):
        self.name, self.pool_file, self.cfg, self.batches = name, pool_file, cfg, batches
        path = Path(cfg.mbeir_root) / pool_file
        self.offsets, self.lines = line_offsets(path, cfg.encode_chunk)
        describe = {"pool_file": pool_file, "file_fingerprint": file_fingerprint(path),
                    "image_max_side": cfg.image_max_side, "encode_chunk": cfg.encode_chunk}
        self.store = ChunkFolder(_folder(cfg, model_fp, f"pool-{Path(pool_file).stem}", describe),
                                 len(self.offsets), describe)

    @property
    def label(self) -> str:
        return f"pool {self.name}"

    def unit_lines(self, unit: int) -> int:
        return min(self.cfg.encode_chunk, self.lines - unit * self.cfg.encode_chunk)

    def pieces(self, unit: int) -> Iterator[Piece]:
        """Read the chunk's lines, decode, and prepare batches of read_batch windows (a worker's side)."""
        cfg, stats = self.cfg, ReadStats()
        ids: list[str] = []
        window: list = []
        done = 0
        for rec in iter_candidates(cfg.mbeir_root, self.pool_file, stats, offset=self.offsets[unit],
                                   first_line=unit * cfg.encode_chunk + 1, max_lines=cfg.encode_chunk):
            if (inp := candidate_input(cfg.mbeir_root, rec, stats, cfg.image_max_side)) is not None:
                ids.append(rec.did)
                window.append(inp)
            if len(window) == cfg.read_batch:
                yield from self._batches(unit, done, ids, window)
                done, ids, window = done + len(window), [], []
        yield from self._batches(unit, done, ids, window)
        yield Piece(unit, [], [], end={"stats": stats.as_dict(), "lines": self.unit_lines(unit)})

    def _batches(self, unit: int, start: int, ids: list[str], window: list) -> Iterator[Piece]:
        if window:
            for idx, payload in self.batches.prepare(window):
                yield Piece(unit, [start + i for i in idx], [ids[i] for i in idx], payload)

    def embed(self, payload) -> tuple[torch.Tensor, dict]:
        return self.batches.embed(payload), {}


class QueryJob:
    """A pair's test queries (fixed-seed instructions): chunks of its parseable queries; float32 embeddings
    with each query's routing and generated-token count."""

    unit, dtype = "queries", np.float32

    def __init__(self, pair: EvalPair, cfg: EvalConfig, model_fp: str, batches: QueryBatches, instructions):
        self.pair, self.name, self.cfg, self.batches, self.instructions = pair, pair.name, cfg, batches, instructions
        root = Path(cfg.mbeir_root)
        self.read_stats = ReadStats()
        self.records = read_queries(root, pair, self.read_stats)[: cfg.limit]
        describe = {"pair": pair.name, "query_file": pair.query_file,
                    "file_fingerprint": file_fingerprint(root / pair.query_file),
                    "instructions_fingerprint": file_fingerprint(root / layout.INSTRUCTIONS), "mode": cfg.mode,
                    "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit,
                    "image_max_side": cfg.image_max_side, "encode_chunk": cfg.encode_chunk}
        total = -(-len(self.records) // cfg.encode_chunk)
        self.store = ChunkFolder(_folder(cfg, model_fp, f"queries-{pair.name}", describe), total, describe)

    @property
    def label(self) -> str:
        return f"queries {self.name}"

    def unit_lines(self, unit: int) -> int:
        return len(self.records[unit * self.cfg.encode_chunk:(unit + 1) * self.cfg.encode_chunk])

    def pieces(self, unit: int) -> Iterator[Piece]:
        cfg, stats = self.cfg, ReadStats()
        records = self.records[unit * cfg.encode_chunk:(unit + 1) * cfg.encode_chunk]
        for s in range(0, len(records), cfg.read_batch):
            group = records[s:s + cfg.read_batch]
            inputs = query_inputs(cfg.mbeir_root, group, self.instructions, cfg.seed, stats, cfg.image_max_side)
            yield Piece(unit, list(range(s, s + len(group))), [r.qid for r in group], self.batches.prepare(inputs))
        yield Piece(unit, [], [], end={"stats": stats.as_dict(), "lines": len(records)})

    def embed(self, payload) -> tuple[torch.Tensor, dict]:
        res = self.batches.embed(payload)
        return (torch.as_tensor(res.embeddings).float().cpu(),
                {"reasoned": [bool(r) for r in res.reasoned], "generated_tokens": [int(t) for t in res.generated_tokens]})


Job = PoolJob | QueryJob


def plan(embedder: Embedder, model_fp: str, cfg: EvalConfig) -> list[Job]:
    """Every job of the evaluation in its fixed order: the union pool, then per pair its queries and local pool."""
    batches = CandidateBatches(embedder, cfg.cand_batch)
    queries = QueryBatches(embedder, cfg.mode, cfg.max_new_tokens, cfg.query_batch)
    instructions = read_instructions(cfg.mbeir_root)
    jobs: list[Job] = []
    if "global" in cfg.pools:
        jobs.append(PoolJob("global", layout.union_pool_file(cfg.split), cfg, model_fp, batches))
    for pair in eval_pairs(cfg.pairs, cfg.split):
        jobs.append(QueryJob(pair, cfg, model_fp, queries, instructions))
        if "local" in cfg.pools:
            jobs.append(PoolJob(pair.name, pair.pool_file, cfg, model_fp, batches))
    return jobs


@dataclass
class PairQueries:
    """A pair's query embeddings and how they were produced."""

    pair: EvalPair
    qids: list[str]
    embeddings: torch.Tensor
    reasoned: list[bool]
    generated_tokens: list[int]
    encode_seconds: float
    stats: ReadStats = field(default_factory=ReadStats)

    @classmethod
    def from_chunks(cls, job: QueryJob, chunks: Iterable[Chunk]) -> PairQueries:
        pq = cls(job.pair, [], torch.zeros(0, 0), [], [], 0.0, ReadStats().add(job.read_stats.as_dict()))
        embeddings = []
        for chunk in chunks:
            pq.qids += chunk.ids
            embeddings += [torch.from_numpy(chunk.embeddings)] if chunk.ids else []
            pq.reasoned += chunk.info.get("reasoned", [])
            pq.generated_tokens += chunk.info.get("generated_tokens", [])
            pq.encode_seconds += chunk.info["seconds"]
            pq.stats.add(chunk.info["stats"])
        pq.embeddings = torch.cat(embeddings) if embeddings else pq.embeddings
        return pq

    def routing(self) -> dict:
        n = len(self.qids)
        return {"share_reasoned": round(sum(self.reasoned) / n, 4) if n and self.reasoned else 0.0,
                "mean_generated_tokens": round(sum(self.generated_tokens) / n, 2)
                if n and self.generated_tokens else 0.0}


class PoolReader:
    """A pool's cached chunks read once, in order, as search blocks; ids and read counts gathered on the way."""

    def __init__(self, job: PoolJob):
        self.job, self.ids, self.stats, self.dim, self.embed_seconds = job, [], ReadStats(), 0, 0.0

    def blocks(self) -> Iterator[np.ndarray]:
        for chunk in self.job.store.chunks():
            self.ids += chunk.ids
            self.stats.add(chunk.info["stats"])
            self.embed_seconds += chunk.info["seconds"]
            self.dim = chunk.embeddings.shape[1] if chunk.ids else self.dim
            yield chunk.embeddings

    def meta(self) -> dict:
        """What the chunks read so far say: the pool's read counts, rows, dimension, seconds of embedding."""
        return {"pool_file": self.job.pool_file, **self.stats.as_dict(), "count": len(self.ids), "dim": self.dim,
                "embed_seconds": round(self.embed_seconds, 3)}
