"""Global-pool search at scale on synthetic data: write a float16 embedding pool, memory-map it, search it.

    python -m scripts.bench_global_pool [--candidates 1000000] [--dim 1536] [--queries 1000] [--k 10]
                                       [--device cpu|cuda] [--checkpoint CKPT --embed 2048]

Reports time and peak RSS for writing the pool (in batches, as the evaluator does), memory-mapping it and an
exact chunked top-k search (trainer.benchmark.retrieval.search), plus candidates/s searched. With --checkpoint, also
times embedding --embed synthetic text candidates with the model (candidates/s embedded).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.cli import CliParser, positive_int, run_cli
from trainer.benchmark.evaluate import check_device
from trainer.benchmark.retrieval import DEFAULT_CHUNK, EmbeddingWriter, open_embeddings, search
from trainer.modeling.interface import CandidateInput


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_pool(path: Path, n: int, dim: int, batch: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = EmbeddingWriter(path, n, dim)
    for start in range(0, n, batch):
        w.write(torch.nn.functional.normalize(torch.randn(min(batch, n - start), dim, generator=gen), dim=1))
    w.close()


def embed_rate(checkpoint: str, n: int, device: str) -> float:
    from trainer.benchmark.evaluate import load_embedder

    model = load_embedder(checkpoint)
    cands = [CandidateInput(text=f"synthetic candidate number {i}", image=None, modality="text") for i in range(n)]
    t0 = time.perf_counter()
    model.encode_candidates(cands, batch_size=64)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _main(argv: list[str]) -> dict:
    p = CliParser(prog="python -m scripts.bench_global_pool", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=positive_int, default=1_000_000)
    p.add_argument("--dim", type=positive_int, default=1536)
    p.add_argument("--queries", type=positive_int, default=1000)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--chunk", type=positive_int, default=DEFAULT_CHUNK)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="where the .npy goes (default: a temp dir, removed)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--embed", type=positive_int, default=2048, help="candidates to embed with --checkpoint")
    a = p.parse_args(argv)
    check_device(a.device)
    if a.checkpoint:
        from trainer.benchmark.evaluate import check_checkpoint

        check_checkpoint(a.checkpoint)
    report: dict = {"candidates": a.candidates, "dim": a.dim, "queries": a.queries, "k": a.k, "chunk": a.chunk,
                    "device": a.device, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        path = Path(tmp) / "pool.npy"
        t0 = time.perf_counter()
        write_pool(path, a.candidates, a.dim, batch=8192, seed=0)
        report["write_seconds"] = round(time.perf_counter() - t0, 2)
        report["file_gib"] = round(path.stat().st_size / 2**30, 3)
        report["peak_rss_mib_after_write"] = round(peak_rss_mib(), 1)
        t0 = time.perf_counter()
        pool = open_embeddings(path)
        report["mmap_seconds"] = round(time.perf_counter() - t0, 4)
        q = torch.nn.functional.normalize(torch.randn(a.queries, a.dim, generator=torch.Generator().manual_seed(1)),
                                          dim=1)
        t0 = time.perf_counter()
        scores, idx = search(q, pool, a.k, chunk_size=a.chunk, device=a.device)
        secs = time.perf_counter() - t0
        report["search_seconds"] = round(secs, 2)
        report["candidates_per_second"] = round(a.candidates / secs)
        report["query_candidate_pairs_per_second"] = round(a.candidates * a.queries / secs)
        report["peak_rss_mib_after_search"] = round(peak_rss_mib(), 1)
        report["pool_in_ram_would_be_mib"] = round(a.candidates * a.dim * 4 / 2**20, 1)  # float32 for contrast
        # sanity: an exact check on the first chunk's best match for the first query
        first = torch.from_numpy(np.array(pool[: min(a.chunk, a.candidates)])).float() @ q[0]
        report["exact_check"] = bool(scores[0, 0] >= first.max() - 1e-4)
    if a.checkpoint:
        report["candidates_per_second_embedded"] = round(embed_rate(a.checkpoint, a.embed, a.device), 2)
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python -m scripts.bench_global_pool")


if __name__ == "__main__":
    sys.exit(main())
