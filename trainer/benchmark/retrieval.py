"""Exact inner-product top-k over large candidate pools with bounded memory (MBEIR.md "Scoring" step 1).

Candidate embeddings live on disk as a float16 `.npy` and are memory-mapped; search walks the pool in chunks,
keeps a running top-k per query and merges each chunk's top-k into it, so memory is
O(chunk_size * dim + queries * k) whatever the pool size (5.6M for the M-BEIR global pool).
An `EmbeddingCache` keys stored pools by (checkpoint fingerprint, pool file fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray) else queries)
    q = q.to(device=device, dtype=torch.float32)
    n = len(candidates)
    k = min(k, n)
    best_s = torch.full((len(q), k), float("-inf"), device=device)
    best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=device)
    if k == 0 or len(q) == 0:
        return best_s.cpu(), best_i.cpu()
    for start in range(0, n, chunk_size):
        chunk = candidates[start:start + chunk_size]
        if backend == "faiss":
            s, i = _faiss_chunk(q, chunk, k)
        else:
            c = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))  # copy off the memmap
            c = c.to(device=device, dtype=torch.float32)
            s, i = _torch_chunk(q, c, k, query_block)
        merged_s = torch.cat([best_s, s.to(device)], dim=1)
        merged_i = torch.cat([best_i, i.to(device) + start], dim=1)
        best_s, pos = merged_s.topk(k, dim=1)
        best_i = merged_i.gather(1, pos)
    return best_s.cpu(), best_i.cpu()


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
    """A pool's embeddings (memmap, row i = ids[i]) plus what happened while embedding it."""

    embeddings: np.ndarray
    ids: list[str]
    meta: dict


class EmbeddingCache:
    """`{root}/{model_fp}/{pool_fp}/` holding embeddings.npy, ids.txt and meta.json (written last = complete)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, model_fp: str, pool_fp: str) -> Path:
        return self.root / model_fp / pool_fp

    def load(self, model_fp: str, pool_fp: str) -> StoredPool | None:
        d = self.folder(model_fp, pool_fp)
        if not (d / "meta.json").exists():
            return None
        meta = json.loads((d / "meta.json").read_text())
        ids = (d / "ids.txt").read_text().split("\n")[: meta["count"]]
        return StoredPool(open_embeddings(d / "embeddings.npy")[: meta["count"]], ids, meta)

    def store(self, model_fp: str, pool_fp: str, n_max: int,
              batches: Iterable[tuple[Sequence[str], torch.Tensor]], meta: dict) -> StoredPool:
        """Write (ids, embeddings) batches, at most n_max rows in all; meta.json is written only on success."""
        d = self.folder(model_fp, pool_fp)
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        writer = None
        with open(tmp / "ids.txt", "w") as ids_file:
            for ids, emb in batches:
                writer = writer or EmbeddingWriter(tmp / "embeddings.npy", n_max, emb.shape[1])
                writer.write(emb)
                ids_file.write("".join(f"{i}\n" for i in ids))
        if writer is None:
            writer = EmbeddingWriter(tmp / "embeddings.npy", 0, 0)
        count, dim = writer.filled, writer.dim
        writer.close()
        (tmp / "meta.json").write_text(json.dumps({**meta, "count": count, "dim": dim}, indent=1))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        return self.load(model_fp, pool_fp)
