"""Evaluate an embedder on M-BEIR exactly as UniIR scores it (MBEIR.md "Scoring"), local and/or global pool.

    python -m trainer.evaluate --mbeir_root ROOT --checkpoint CKPT --pool both --output_dir DIR
    torchrun --nproc_per_node N -m trainer.evaluate ...             # N ranks encode, rank 0 searches and scores
    python -m trainer.evaluate ... --num_shards N --shard_index I   # one of N independent jobs: encode, exit
    python -m trainer.evaluate score --run RUNFILE --qrels QRELS_FILE_OR_DIR... [--k 1,5,10]

Writes runs/mbeir_{pair}_{split}_{local|union}_run.txt (UniIR run format), results.tsv (UniIR columns, values
in percent), results.json (fractions, routing, read counts, chunk counts, timings) and prints the 16-pair table
beside the paper's rows. Pool and query embeddings are cached in chunks (trainer/benchmark/chunks.py) keyed by
the model and the input files: a killed run, rerun with the same command, encodes only the missing chunks; shard
jobs (trainer/benchmark/sharding.py) fill the same cache and a final run without shard flags scores.
--output_dir follows the output-folder contract (common/outdir.py): new, empty or this command's (--overwrite).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from common.cli import CliParser, boolean, non_negative_int, positive_int, run_cli, writable_folder
from common.errors import ConfigError
from common.outdir import check_output_dir, claim_output_dir
from trainer.benchmark import paper_results, retrieval, scoring
from trainer.benchmark.chunks import Chunk, write_text_atomic
from trainer.benchmark.config import POOLS, EvalConfig
from trainer.benchmark.encode import JobRun, encode_all, encode_job, merge_ranks, summary, workers
from trainer.benchmark.evalset import (
    EvalPair,
    check_root,
    eval_pairs,
    read_instructions,
    read_pair_qrels,
)
from trainer.benchmark.jobs import PairQueries, PoolJob, PoolReader, QueryJob, plan
from trainer.benchmark.prefetch import CandidateBatches, QueryBatches
from trainer.benchmark.report import format_table, results_tsv
from trainer.benchmark.sharding import Sharding, check_flags, from_environment, rank_device
from trainer.modeling.interface import MODES, Embedder

__all__ = ["POOLS", "EvalConfig", "evaluate", "format_table", "main", "results_tsv"]
_POOL_FLAG = {"local": ("local",), "global": ("global",), "both": POOLS}
COMMAND = "trainer.evaluate"  # the output-folder marker's name (common/outdir.py)
# What an evaluation writes under --output_dir (with the temporaries of chunks.write_text_atomic); the cache is
# there unless --cache_dir puts it elsewhere.
OUTPUTS = ("runs/mbeir_*_run.txt", "results.json", "results.tsv", "shards/shard-*-of-*.json", "shards/.shard-*.tmp",
           "embedding_cache/*")
LEGACY = ("results.json", "shards/shard-*-of-*.json")  # its output from before output folders were marked


def chunk_counts(job: PoolJob | QueryJob, run: JobRun) -> dict:
    return {"chunks_total": job.store.total, **run.as_dict()}


def pool_meta(reader: PoolReader, run: JobRun) -> dict:
    return {**reader.meta(), **chunk_counts(reader.job, run), "from_cache": run.chunks_encoded == 0}


def encode_pair_queries(embedder: Embedder, pair: EvalPair, cfg: EvalConfig, instructions=None) -> PairQueries:
    """Embed a pair's test queries now, uncached (trainer.bench times them: online encoding, so the processor is
    in the timed part, as a server pays it); missing images are counted."""
    batches = QueryBatches(embedder, cfg.mode, cfg.max_new_tokens, cfg.query_batch, ahead=False)
    job = QueryJob(pair, cfg, "uncached", batches, instructions or read_instructions(cfg.mbeir_root))
    chunks: dict[int, Chunk] = {}
    encode_job(job, range(job.store.total), cfg, show=False, sink=chunks.__setitem__)
    return PairQueries.from_chunks(job, (chunks[i] for i in range(job.store.total)))


def embed_pool(embedder: Embedder, model_fp: str, pool_file: str, cfg: EvalConfig) -> retrieval.StoredPool:
    """A whole pool in memory from the chunk cache, its missing chunks encoded first (trainer.bench's pools)."""
    job = PoolJob(pool_file, pool_file, cfg, model_fp, CandidateBatches(embedder, cfg.cand_batch))
    run = encode_all([job], Sharding(), cfg)[0]
    reader = PoolReader(job)
    blocks = [b for b in reader.blocks() if len(b)]
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float16)
    return retrieval.StoredPool(matrix, reader.ids, pool_meta(reader, run))


def ranked_lists(pq: PairQueries, pool, indices: torch.Tensor) -> dict[str, list[str]]:
    return {qid: [pool.ids[i] for i in row] for qid, row in zip(pq.qids, indices.tolist(), strict=True)}


def write_run(path: Path, pq: PairQueries, pool, scores: torch.Tensor, indices: torch.Tensor, run_id: str) -> None:
    """UniIR run file: `{qid} Q0 {did} {rank} {score} {run_id} {task_id}`, rank 1 = best."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for qid, srow, irow in zip(pq.qids, scores.tolist(), indices.tolist(), strict=True):
            f.writelines(f"{qid} Q0 {pool.ids[i]} {r} {s:.6f} {run_id} {pq.pair.task_id}\n"
                         for r, (s, i) in enumerate(zip(srow, irow, strict=True), 1))


def score_pair(pq: PairQueries, ranked: dict[str, list[str]], qrels: scoring.Qrels, ks: Sequence[int],
               restrict: bool = False) -> dict[str, float]:
    """Hit rates over the pair's queries plus all qrels queries (restrict=True: only the queries embedded)."""
    positives = qrels.positives(pq.pair.name)
    if restrict:
        positives = {q: positives[q] for q in pq.qids if q in positives}
    rates = scoring.hit_rates(ranked, positives, sorted(set(ks) | {pq.pair.headline_k}), pq.qids)
    return {k: round(v, 4) for k, v in rates.items()}


def evaluate(embedder: Embedder, model_fp: str, cfg: EvalConfig, sharding: Sharding | None = None) -> dict:
    """Encode this process's share of the missing chunks; the scoring process then writes run files,
    results.tsv and results.json under cfg.output_dir and returns the results (a shard job: its counts)."""
    sharding = sharding or Sharding()
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    jobs = plan(embedder, model_fp, cfg)
    runs = merge_ranks(sharding.gather(encode_all(jobs, sharding, cfg)))
    if sharding.kind == "shard jobs":
        return _finish_shard(jobs, runs, cfg, sharding)
    if not sharding.scores:
        return {}
    filled = encode_all(jobs, Sharding(), cfg)  # anything a rank left missing (normally nothing)
    runs = [run.merge(more) for run, more in zip(runs, filled, strict=True)]
    for job, run in zip(jobs, runs, strict=True):
        run.chunks_reused = job.store.total - run.chunks_encoded
        print(summary(job, run), flush=True)
    return _score(jobs, runs, model_fp, cfg, sharding)


def _finish_shard(jobs: Sequence[PoolJob | QueryJob], runs: Sequence[JobRun], cfg: EvalConfig,
                  sharding: Sharding) -> dict:
    for job, run in zip(jobs, runs, strict=True):
        print(summary(job, run), flush=True)
    report = {"shard_index": sharding.rank, "num_shards": sharding.world,
              "jobs": {job.label: chunk_counts(job, run) for job, run in zip(jobs, runs, strict=True)}}
    path = Path(cfg.output_dir) / "shards" / f"shard-{sharding.rank:04d}-of-{sharding.world:04d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1))
    return report


def _score(jobs: Sequence[PoolJob | QueryJob], runs: Sequence[JobRun], model_fp: str, cfg: EvalConfig,
           sharding: Sharding) -> dict:
    out = Path(cfg.output_dir)
    results: dict = {"model_fingerprint": model_fp, "split": cfg.split, "mode": cfg.mode, "seed": cfg.seed,
                     "ks": list(cfg.ks), "device": cfg.device, "pairs": {}, "pools": {},
                     "encoding": {**sharding.describe(), "num_workers": workers(cfg),
                                  "encode_chunk": cfg.encode_chunk}}
    queries, qrels = {}, {}
    for job, run in zip(jobs, runs, strict=True):
        if isinstance(job, QueryJob):
            pq = queries[job.name] = PairQueries.from_chunks(job, job.store.chunks())
            qrels[job.name] = read_pair_qrels(cfg.mbeir_root, job.pair)
            results["pairs"][job.name] = _pair_entry(pq, chunk_counts(job, run))
    for job, run in zip(jobs, runs, strict=True):
        if isinstance(job, PoolJob):
            kind = "global" if job.name == "global" else "local"
            names = list(queries) if kind == "global" else [job.name]
            t0 = time.perf_counter()
            reader = PoolReader(job)
            found = retrieval.search_blocks([queries[n].embeddings for n in names], reader.blocks(), cfg.top_k,
                                            device=cfg.device)
            results["pools"][job.name] = {**pool_meta(reader, run), "search_seconds": round(time.perf_counter() - t0, 3)}
            for name, (scores, indices) in zip(names, found, strict=True):
                tag = "union" if kind == "global" else "local"
                run_path = out / "runs" / f"mbeir_{name}_{cfg.split}_{tag}_run.txt"
                write_run(run_path, queries[name], reader, scores, indices, f"{cfg.run_id}_{tag}")
                entry = results["pairs"][name]
                entry[kind] = score_pair(queries[name], ranked_lists(queries[name], reader, indices), qrels[name],
                                         cfg.ks)
                entry[f"{kind}_run_file"] = str(run_path.relative_to(out))
    return _write_results(results, cfg)


def _pair_entry(pq: PairQueries, counts: dict) -> dict:
    return {"task_id": pq.pair.task_id, "dataset": pq.pair.dataset, "queries": len(pq.qids),
            "headline": f"Recall@{pq.pair.headline_k}", "routing": pq.routing(),
            "query_encode_seconds": round(pq.encode_seconds, 3),
            "queries_per_second": round(len(pq.qids) / pq.encode_seconds, 3) if pq.encode_seconds else None,
            "query_read": pq.stats.as_dict(), "query_chunks": counts}


def _write_results(results: dict, cfg: EvalConfig) -> dict:
    for pool_kind in cfg.pools:
        vals = [e[pool_kind][e["headline"]] for e in results["pairs"].values()]
        results.setdefault("average", {})[pool_kind] = round(sum(vals) / len(vals), 4) if vals else None
    results["average_over_pairs"] = len(results["pairs"])
    results["paper"] = {"local": paper_results.LOCAL, "local_average": paper_results.LOCAL_AVERAGE}
    results["config"] = {k: str(v) for k, v in asdict(cfg).items()}
    out = Path(cfg.output_dir)
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out / "results.tsv").write_text(results_tsv(results, cfg.ks))
    return results


def load_embedder(checkpoint: str, device: str | None = None) -> Embedder:
    from trainer import TraceEmbedder  # the model is only needed when evaluating a checkpoint

    return TraceEmbedder.load(checkpoint, device=device)


def check_checkpoint(checkpoint: str) -> None:
    """ConfigError unless the folder is a loadable TRACE checkpoint (cheap: files only, no weights read)."""
    from trainer.modeling.checkpoint import read_checkpoint

    read_checkpoint(checkpoint)


def check_device(device: str) -> str:
    """The --device value when this machine has it; ConfigError otherwise (e.g. cuda without a GPU)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: no CUDA GPU is visible here (torch.cuda.is_available() is "
                              "False); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: only cpu and cuda[:N] are supported")
    return device


def check_config(cfg: EvalConfig) -> None:
    """Every check of an evaluation or benchmark run that needs no model: device, shard flags, pairs, M-BEIR
    root, output."""
    check_device(cfg.device)
    check_flags(cfg.num_shards, cfg.shard_index)
    check_root(cfg.mbeir_root, eval_pairs(cfg.pairs, cfg.split), cfg.pools)
    writable_folder(cfg.output_dir)


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 1,5,10") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every k must be at least 1, e.g. 1,5,10")
    return ks


def score_main(argv: Sequence[str]) -> dict:
    p = CliParser(prog="python -m trainer.evaluate score",
                  description="Score a UniIR-format run file with the UniIR hit-rate Recall@k.")
    p.add_argument("--run", required=True)
    p.add_argument("--qrels", nargs="+", required=True, help="qrels files or folders")
    p.add_argument("--k", type=_ks, default=scoring.DEFAULT_KS, help="comma-separated cut-offs")
    p.add_argument("--skip_bad_lines", action="store_true",
                   help="score the rest of a run file with malformed lines and report how many were skipped and "
                        "why (default: stop at the first, with file:line)")
    a = p.parse_args(argv)
    qrels = scoring.read_qrels(a.qrels)
    run = scoring.read_run(a.run, qrels, skip_bad_lines=a.skip_bad_lines)
    result = scoring.score_run(run.pairs, qrels, a.k)
    if run.skipped:
        result["skipped_lines"] = dict(run.skipped)
        print(f"skipped {sum(run.skipped.values())} bad line(s) of {a.run}: {run.skipped_summary()}",
              file=sys.stderr)
    print(json.dumps(result, indent=1))
    return result


def build_parser() -> argparse.ArgumentParser:
    """Flags named as EvalConfig's fields (but --pool, --k); every default is EvalConfig's."""
    d = EvalConfig
    p = CliParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--mbeir_root", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output_dir", required=True,
                   help="new, empty, or an earlier trainer.evaluate output (marked by .mbeir-cot.json); locked while "
                        "written (shard jobs share it)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --output_dir that holds other files: they stay untouched, and one named like "
                        "this command's outputs (results.*, runs/, shards/, embedding_cache/) stops it")
    p.add_argument("--split", default=d.split, choices=("val", "test"))
    p.add_argument("--pool", default=next(k for k, v in _POOL_FLAG.items() if v == d.pools), choices=_POOL_FLAG)
    p.add_argument("--pairs", nargs="+", default=d.pairs, help="e.g. cirr_task7 mscoco_task0 (default: all 16)")
    p.add_argument("--mode", default=d.mode, choices=MODES)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--k", type=_ks, default=d.ks)
    p.add_argument("--top_k", type=positive_int, default=d.top_k)
    p.add_argument("--limit", type=positive_int, default=d.limit)
    p.add_argument("--cache_dir", default=d.cache_dir, help="embedding cache (default: OUTPUT_DIR/embedding_cache; "
                   "shard jobs on several machines share one on a shared filesystem)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--query_batch", type=positive_int, default=d.query_batch)
    p.add_argument("--cand_batch", type=positive_int, default=d.cand_batch)
    p.add_argument("--max_new_tokens", type=non_negative_int, default=d.max_new_tokens)
    p.add_argument("--image_max_side", type=positive_int, default=d.image_max_side)
    p.add_argument("--encode_chunk", type=positive_int, default=d.encode_chunk,
                   help="candidates (queries) per cached chunk, by line order; the unit of resume and sharding")
    p.add_argument("--num_workers", type=non_negative_int, default=d.num_workers,
                   help="data-preparation processes (reading, decoding, the processor); 0: in the model's "
                        "thread (default: from the cores)")
    p.add_argument("--num_shards", type=positive_int, default=d.num_shards,
                   help="with --shard_index: this job encodes its share of N and exits (no scoring)")
    p.add_argument("--shard_index", type=non_negative_int, default=d.shard_index)
    p.add_argument("--progress", type=boolean, default=d.progress, help="progress bars (true/false)")
    return p


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        mbeir_root=Path(a.mbeir_root), output_dir=Path(a.output_dir), split=a.split, pools=_POOL_FLAG[a.pool],
        pairs=a.pairs, mode=a.mode, seed=a.seed, ks=a.k, top_k=max(a.top_k, *a.k), limit=a.limit,
        cache_dir=Path(a.cache_dir) if a.cache_dir else None, device=a.device, query_batch=a.query_batch,
        cand_batch=a.cand_batch, max_new_tokens=a.max_new_tokens, image_max_side=a.image_max_side,
        encode_chunk=a.encode_chunk, num_workers=a.num_workers, num_shards=a.num_shards,
        shard_index=a.shard_index, progress=a.progress)


def claim(cfg: EvalConfig, sharding: Sharding, overwrite: bool) -> contextlib.AbstractContextManager:
    """The hold on --output_dir (common/outdir.py): one process or torchrun's rank 0 holds it alone (the other
    ranks write only their cache chunks, inside rank 0's hold); shard jobs hold it together."""
    if sharding.distributed and sharding.rank != 0:
        return contextlib.nullcontext()
    return claim_output_dir(cfg.output_dir, command=COMMAND, patterns=OUTPUTS, legacy=LEGACY, overwrite=overwrite,
                            shared=sharding.kind == "shard jobs")


def main(argv: Sequence[str] | None = None, embedder: Embedder | None = None) -> dict:
    """CLI entry; `embedder` lets callers (tests, notebooks) pass a model object instead of loading one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["score"]:
        return score_main(argv[1:])
    a = build_parser().parse_args(argv)
    cfg = config_from_args(a)
    check_config(cfg)
    if embedder is None:
        check_checkpoint(a.checkpoint)
    check_output_dir(cfg.output_dir, command=COMMAND, patterns=OUTPUTS, legacy=LEGACY,
                     overwrite=a.overwrite)  # on every process
    sharding = from_environment(cfg.num_shards, cfg.shard_index, cfg.device)
    cfg.device = rank_device(cfg.device, sharding)
    model_fp = getattr(embedder, "fingerprint", None) or retrieval.dir_fingerprint(a.checkpoint)
    with claim(cfg, sharding, a.overwrite):
        results = evaluate(embedder or load_embedder(a.checkpoint, cfg.device), model_fp, cfg, sharding)
    sharding.close()  # only after success: a rank that failed must not wait for the others at a barrier
    if sharding.scores:
        print(format_table(results))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m trainer.evaluate"))
