"""An M-BEIR evaluation's settings, each default written once: the command line (trainer/benchmark/evaluate.py)
reads its defaults from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.benchmark import scoring
from trainer.benchmark.evalset import DEFAULT_IMAGE_MAX_SIDE

POOLS = ("local", "global")
DEFAULT_ENCODE_CHUNK = 8_192  # candidates (or queries) per cached chunk: ~25 MB at d=1536, a minute or two of GPU


@dataclass
class EvalConfig:
    mbeir_root: Path
    output_dir: Path
    split: str = "test"
    pools: tuple[str, ...] = ("local",)
    pairs: Sequence[str] | None = None
    mode: str = "adaptive"
    seed: int = 0  # fixes the per-query instruction choice (MBEIR.md "Instructions")
    ks: tuple[int, ...] = scoring.DEFAULT_KS
    top_k: int = 10  # results written per query to the run files
    limit: int | None = None  # first N queries per pair (benchmarks)
    cache_dir: Path | None = None  # default: output_dir/embedding_cache
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    query_batch: int = 8
    cand_batch: int = 32
    read_batch: int = 512  # inputs (with decoded images) read at once; candidates are length-sorted within it
    max_new_tokens: int = 128
    image_max_side: int = DEFAULT_IMAGE_MAX_SIDE
    run_id: str = "trace"
    encode_chunk: int = DEFAULT_ENCODE_CHUNK
    num_workers: int | None = None  # data-preparation processes; None: from the cores (prefetch.default_workers)
    num_shards: int | None = None  # with shard_index: this run is one of N independent shard jobs
    shard_index: int | None = None
    progress: bool = True

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "embedding_cache"
