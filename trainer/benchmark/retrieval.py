"""Exact inner-product top-k over large candidate pools with bounded memory (MBEIR.md "Scoring" step 1).

Candidate embeddings live on disk as a float16 `.npy` and are memory-mapped; search walks the pool in chunks,
keeps a running top-k per query and merges each chunk's top-k into it, so memory is
O(chunk_size * dim + queries * k) whatever the pool size (5.6M for the M-BEIR global pool).
Search also takes a pool as consecutive blocks (the evaluation's cache chunks, trainer/benchmark/chunks.py),
so a pool is read once for every query set that searches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_CHUNK = 65_536  # candidates scored per matmul
DEFAULT_QUERY_BLOCK = 4_096  # queries per matmul; the score block is QUERY_BLOCK x CHUNK float32


def search(queries: torch.Tensor | np.ndarray, candidates: np.ndarray | torch.Tensor, k: int, *,
           chunk_size: int = DEFAULT_CHUNK, query_block: int = DEFAULT_QUERY_BLOCK,
           device: str | torch.device = "cpu", backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product: (scores float32 (nq, k'), indices int64 (nq, k')), best first, k' = min(k, N).

    `candidates` may be a read-only memmap (float16); each chunk is copied to `device` as float32.
    backend "faiss" uses faiss.IndexFlatIP per chunk (exact), when faiss is installed.
    """
    blocks = (candidates[s:s + chunk_size] for s in range(0, len(candidates), chunk_size))
    return search_blocks([queries], blocks, k, query_block=query_block, device=device, backend=backend)[0]


def search_blocks(query_sets: Sequence[torch.Tensor | np.ndarray], blocks: Iterable[np.ndarray | torch.Tensor],
                  k: int, *, query_block: int = DEFAULT_QUERY_BLOCK, device: str | torch.device = "cpu",
                  backend: str = "torch") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """search() for several query sets over one pass of a pool given as consecutive blocks (e.g. cache chunks,
    read once however many sets search them). Indices count rows over all blocks; each set's result is what
    search() gives it alone over the same blocks."""
    qs = [torch.as_tensor(np.asarray(q, dtype=np.float32) if isinstance(q, np.ndarray) else q)
          .to(device=device, dtype=torch.float32) for q in query_sets]
    best = [(torch.full((len(q), k), float("-inf"), device=device),
             torch.full((len(q), k), -1, dtype=torch.int64, device=device)) for q in qs]
    start = 0
    for block in blocks:
        if len(block) == 0 or k == 0:
            continue
        if backend != "faiss":
            block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))  # off the memmap
            block = block.to(device=device, dtype=torch.float32)
        for n, q in enumerate(qs):
            if len(q):
                s, i = _faiss_chunk(q, block, k) if backend == "faiss" else _torch_chunk(q, block, k, query_block)
                best[n] = _merge(best[n], s.to(device), i.to(device) + start, k)
        start += len(block)
    kept = min(k, start)
    return [(s[:, :kept].cpu(), i[:, :kept].cpu()) for s, i in best]


def _merge(best: tuple[torch.Tensor, torch.Tensor], s: torch.Tensor, i: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores, pos = torch.cat([best[0], s], dim=1).topk(k, dim=1)
    return scores, torch.cat([best[1], i], dim=1).gather(1, pos)


def _torch_chunk(q: torch.Tensor, c: torch.Tensor, k: int, query_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    kk = min(k, len(c))
    outs = [(q[b:b + query_block] @ c.T).topk(kk, dim=1) for b in range(0, len(q), query_block)]
    return torch.cat([o.values for o in outs]), torch.cat([o.indices for o in outs])


def _faiss_chunk(q: torch.Tensor, chunk, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss  # optional: `pip install .[faiss]`

    index = faiss.IndexFlatIP(q.shape[1])
    index.add(np.ascontiguousarray(np.asarray(chunk), dtype=np.float32))
    s, i = index.search(np.ascontiguousarray(q.cpu().numpy()), min(k, len(chunk)))
    return torch.from_numpy(s), torch.from_numpy(i.astype(np.int64))


class EmbeddingWriter:
    """Writes up to n x dim float16 rows into an .npy file in batches with plain appends (no dirty memmap pages,
    so resident memory stays at one batch). Rows never written read as zeros; `filled` says how many were."""

    def __init__(self, path: str | Path, n: int, dim: int):
        self.path, self.n, self.dim, self.filled = Path(path), n, dim, 0
        self.file = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                          "fortran_order": False, "shape": (n, dim)})
        self.data_start = self.file.tell()

    def write(self, rows: torch.Tensor | np.ndarray) -> None:
        rows = rows.detach().cpu().float().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        if self.filled + len(rows) > self.n or (len(rows) and rows.shape[1] != self.dim):
            raise ValueError(f"{self.path}: rows {rows.shape} do not fit ({self.n}, {self.dim}) after {self.filled}")
        self.file.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
        self.filled += len(rows)

    def close(self) -> None:
        self.file.truncate(self.data_start + self.n * self.dim * 2)
        self.file.close()


def open_embeddings(path: str | Path) -> np.ndarray:
    """Memory-map a stored float16 embedding matrix read-only."""
    return np.load(path, mmap_mode="r")


def file_fingerprint(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """Cheap content fingerprint for a (possibly multi-GB) file: size plus hashes of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample_bytes))
        if size > sample_bytes:
            f.seek(max(sample_bytes, size - sample_bytes))
            h.update(f.read())
    return h.hexdigest()[:16]


def dir_fingerprint(path: str | Path) -> str:
    """Fingerprint of a checkpoint folder (or file): every file's relative path and content fingerprint."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{file_fingerprint(p)}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class StoredPool:
    """A pool's embeddings (row i = ids[i]) plus what happened while embedding it."""

    embeddings: np.ndarray
    ids: list[str]
    meta: dict
