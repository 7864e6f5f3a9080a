"""Evaluate an embedder on M-BEIR exactly as UniIR scores it (MBEIR.md "Scoring"), local and/or global pool.

    python -m trainer.evaluate --mbeir_root ROOT --checkpoint CKPT --pool both --output_dir DIR
    python -m trainer.evaluate score --run RUNFILE --qrels QRELS_FILE_OR_DIR... [--k 1,5,10]

Writes runs/mbeir_{pair}_{split}_{local|union}_run.txt (UniIR run format), results.tsv (UniIR columns, values
in percent), results.json (fractions, routing, missing-image counts, timings) and prints the 16-pair table beside
the paper's rows. Candidate embeddings are cached per (checkpoint, pool file) as memory-mapped float16 .npy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from common.cli import CliParser, non_negative_int, positive_int, run_cli, writable_folder
from common.errors import ConfigError
from pipeline.mbeir import layout
from trainer.benchmark import paper_results, retrieval, scoring
from trainer.benchmark.evalset import (
    DEFAULT_IMAGE_MAX_SIDE,
    EvalPair,
    ReadStats,
    candidate_input,
    check_root,
    count_lines,
    eval_pairs,
    iter_candidates,
    query_inputs,
    read_instructions,
    read_pair_qrels,
    read_queries,
)
from trainer.modeling.interface import MODES, Embedder

POOLS = ("local", "global")
_TASK_NAMES = {0: "t→i", 1: "t→t", 2: "t→(i,t)", 3: "i→t", 4: "i→i", 6: "(i,t)→t", 7: "(i,t)→i", 8: "(i,t)→(i,t)"}


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
    chunk_size: int = retrieval.DEFAULT_CHUNK
    query_batch: int = 8
    cand_batch: int = 32
    read_batch: int = 512  # inputs (with decoded images) held in memory at once
    max_new_tokens: int = 128
    image_max_side: int = DEFAULT_IMAGE_MAX_SIDE
    run_id: str = "trace"

    @property
    def cache(self) -> retrieval.EmbeddingCache:
        return retrieval.EmbeddingCache(self.cache_dir or Path(self.output_dir) / "embedding_cache")


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

    def routing(self) -> dict:
        n = len(self.qids)
        return {"share_reasoned": round(sum(self.reasoned) / n, 4) if n and self.reasoned else 0.0,
                "mean_generated_tokens": round(sum(self.generated_tokens) / n, 2)
                if n and self.generated_tokens else 0.0}


def _batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def encode_pair_queries(embedder: Embedder, pair: EvalPair, cfg: EvalConfig, instructions=None) -> PairQueries:
    """Embed a pair's test queries (fixed-seed instruction, UniIR query text); missing images are counted."""
    stats = ReadStats()
    records = read_queries(cfg.mbeir_root, pair, stats)[: cfg.limit]
    instructions = instructions or read_instructions(cfg.mbeir_root)
    embs, reasoned, tokens, seconds = [], [], [], 0.0
    for group in _batched(records, cfg.read_batch):
        inputs = query_inputs(cfg.mbeir_root, group, instructions, cfg.seed, stats, cfg.image_max_side)
        t0 = time.perf_counter()
        res = embedder.encode_queries(inputs, mode=cfg.mode, max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.query_batch)
        seconds += time.perf_counter() - t0
        embs.append(torch.as_tensor(res.embeddings).float().cpu())
        reasoned += list(res.reasoned)
        tokens += list(res.generated_tokens)
    emb = torch.cat(embs) if embs else torch.zeros(0, 0)
    return PairQueries(pair, [r.qid for r in records], emb, reasoned, tokens, seconds, stats)


def embed_pool(embedder: Embedder, model_fp: str, pool_file: str, cfg: EvalConfig) -> retrieval.StoredPool:
    """The pool's embeddings from the cache, or embedded now (streamed, written to disk as float16)."""
    path = Path(cfg.mbeir_root) / pool_file
    pool_fp = f"{retrieval.file_fingerprint(path)}-s{cfg.image_max_side}"
    cache = cfg.cache
    if (stored := cache.load(model_fp, pool_fp)) is not None:
        stored.meta["from_cache"] = True
        return stored
    stats = ReadStats()
    t0 = time.perf_counter()

    def batches():
        batch: list = []
        for rec in iter_candidates(cfg.mbeir_root, pool_file, stats):
            if (inp := candidate_input(cfg.mbeir_root, rec, stats, cfg.image_max_side)) is not None:
                batch.append((rec.did, inp))
            if len(batch) == cfg.read_batch:
                yield _encode_candidates(embedder, batch, cfg)
                batch = []
        if batch:
            yield _encode_candidates(embedder, batch, cfg)

    stored = cache.store(model_fp, pool_fp, count_lines(path), batches(), {"pool_file": pool_file})
    stored.meta.update(stats.as_dict(), embed_seconds=round(time.perf_counter() - t0, 3), from_cache=False)
    (cache.folder(model_fp, pool_fp) / "meta.json").write_text(json.dumps(stored.meta, indent=1))
    return stored


def _encode_candidates(embedder: Embedder, batch: list, cfg: EvalConfig) -> tuple[list[str], torch.Tensor]:
    emb = embedder.encode_candidates([inp for _, inp in batch], batch_size=cfg.cand_batch)
    return [did for did, _ in batch], torch.as_tensor(emb).float()


def rank(pq: PairQueries, pool: retrieval.StoredPool, cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return retrieval.search(pq.embeddings, pool.embeddings, cfg.top_k, chunk_size=cfg.chunk_size,
                            device=cfg.device)


def ranked_lists(pq: PairQueries, pool: retrieval.StoredPool, indices: torch.Tensor) -> dict[str, list[str]]:
    return {qid: [pool.ids[i] for i in row] for qid, row in zip(pq.qids, indices.tolist(), strict=True)}


def write_run(path: Path, pq: PairQueries, pool: retrieval.StoredPool, scores: torch.Tensor,
              indices: torch.Tensor, run_id: str) -> None:
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


def evaluate(embedder: Embedder, model_fp: str, cfg: EvalConfig) -> dict:
    """Run the evaluation; writes run files, results.tsv and results.json under cfg.output_dir."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = eval_pairs(cfg.pairs, cfg.split)
    instructions = read_instructions(cfg.mbeir_root)
    global_pool = (embed_pool(embedder, model_fp, layout.union_pool_file(cfg.split), cfg)
                   if "global" in cfg.pools else None)
    results: dict = {"model_fingerprint": model_fp, "split": cfg.split, "mode": cfg.mode, "seed": cfg.seed,
                     "ks": list(cfg.ks), "device": cfg.device, "pairs": {}, "pools": {}}
    if global_pool is not None:
        results["pools"]["global"] = global_pool.meta
    for pair in pairs:
        pq = encode_pair_queries(embedder, pair, cfg, instructions)
        qrels = read_pair_qrels(cfg.mbeir_root, pair)
        entry = {"task_id": pair.task_id, "dataset": pair.dataset, "queries": len(pq.qids),
                 "headline": f"Recall@{pair.headline_k}", "routing": pq.routing(),
                 "query_encode_seconds": round(pq.encode_seconds, 3),
                 "queries_per_second": round(len(pq.qids) / pq.encode_seconds, 3) if pq.encode_seconds else None,
                 "query_read": pq.stats.as_dict()}
        for pool_kind in cfg.pools:
            if pool_kind == "local":
                pool = embed_pool(embedder, model_fp, pair.pool_file, cfg)
                results["pools"][pair.name] = pool.meta
            else:
                pool = global_pool
            t0 = time.perf_counter()
            scores, indices = rank(pq, pool, cfg)
            tag = "union" if pool_kind == "global" else "local"
            run_path = out / "runs" / f"mbeir_{pair.name}_{cfg.split}_{tag}_run.txt"
            write_run(run_path, pq, pool, scores, indices, f"{cfg.run_id}_{tag}")
            entry[pool_kind] = score_pair(pq, ranked_lists(pq, pool, indices), qrels, cfg.ks)
            entry[f"{pool_kind}_search_seconds"] = round(time.perf_counter() - t0, 3)
            entry[f"{pool_kind}_run_file"] = str(run_path.relative_to(out))
        results["pairs"][pair.name] = entry
    for pool_kind in cfg.pools:
        vals = [e[pool_kind][e["headline"]] for e in results["pairs"].values()]
        results.setdefault("average", {})[pool_kind] = round(sum(vals) / len(vals), 4) if vals else None
    results["average_over_pairs"] = len(results["pairs"])
    results["paper"] = {"local": paper_results.LOCAL, "local_average": paper_results.LOCAL_AVERAGE}
    results["config"] = {k: str(v) for k, v in asdict(cfg).items()}
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out / "results.tsv").write_text(results_tsv(results, cfg.ks))
    return results


def results_tsv(results: dict, ks: Sequence[int]) -> str:
    """UniIR's results table; one row per (pair, Recall@k); Value/UnionValue in percent, 2 decimals."""
    rows = ["TaskID\tTask\tDataset\tSplit\tMetric\tCandPool\tValue\tUnionPool\tUnionValue"]
    for name, e in results["pairs"].items():
        for k in sorted(set(ks) | {int(e["headline"].split("@")[1])}):
            metric = f"Recall@{k}"
            local = f"{100 * e['local'][metric]:.2f}" if "local" in e else ""
            union = f"{100 * e['global'][metric]:.2f}" if "global" in e else ""
            rows.append("\t".join([str(e["task_id"]), _TASK_NAMES[e["task_id"]],
                                   layout.DISPLAY_NAMES[e["dataset"]], results["split"], metric, name, local,
                                   "union" if "global" in e else "", union]))
    return "\n".join(rows) + "\n"


def format_table(results: dict) -> str:
    """The 16-pair table (percent) with the paper's rows; '-' = pair not evaluated."""
    pairs = paper_results.PAIRS
    head = ["method"] + [f"{i}" for i in range(1, len(pairs) + 1)] + ["avg"]
    lines = [" | ".join(head), "columns: " + ", ".join(f"{i}={p}" for i, p in enumerate(pairs, 1))]
    for method, row in paper_results.LOCAL.items():
        lines.append(" | ".join([f"{method} (paper)"] + [f"{row[p]:.1f}" for p in pairs]
                                + [f"{paper_results.LOCAL_AVERAGE[method]:.1f}"]))
    for pool_kind in POOLS:
        if pool_kind not in results.get("average", {}):
            continue
        cells = [f"{100 * results['pairs'][p][pool_kind][results['pairs'][p]['headline']]:.1f}"
                 if p in results["pairs"] else "-" for p in pairs]
        n = results["average_over_pairs"]
        avg = f"{100 * results['average'][pool_kind]:.1f}" + ("" if n == len(pairs) else f" ({n}/16 pairs)")
        lines.append(" | ".join([f"this run ({pool_kind})"] + cells + [avg]))
    return "\n".join(lines)


def load_embedder(checkpoint: str, device: str | None = None) -> Embedder:
    from trainer.modeling.model import TraceEmbedder  # the model is only needed when evaluating a checkpoint

    return TraceEmbedder.load(checkpoint, device=device)


def check_checkpoint(checkpoint: str) -> None:
    """ConfigError unless the folder is a loadable TRACE checkpoint (cheap: files only, no weights read)."""
    from trainer.modeling.model import read_checkpoint

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
    """Every check of an evaluation or benchmark run that needs no model: device, pairs, M-BEIR root, output."""
    check_device(cfg.device)
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
    p = CliParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--mbeir_root", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--pool", default="local", choices=("local", "global", "both"))
    p.add_argument("--pairs", nargs="+", default=None, help="e.g. cirr_task7 mscoco_task0 (default: all 16)")
    p.add_argument("--mode", default="adaptive", choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=_ks, default=scoring.DEFAULT_KS)
    p.add_argument("--top_k", type=positive_int, default=10)
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--device", default=EvalConfig.device)
    p.add_argument("--query_batch", type=positive_int, default=8)
    p.add_argument("--cand_batch", type=positive_int, default=32)
    p.add_argument("--max_new_tokens", type=non_negative_int, default=128)
    p.add_argument("--image_max_side", type=positive_int, default=DEFAULT_IMAGE_MAX_SIDE)
    return p


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        mbeir_root=Path(a.mbeir_root), output_dir=Path(a.output_dir), split=a.split,
        pools=POOLS if a.pool == "both" else (a.pool,), pairs=a.pairs, mode=a.mode, seed=a.seed, ks=a.k,
        top_k=max(a.top_k, *a.k), limit=a.limit, cache_dir=Path(a.cache_dir) if a.cache_dir else None,
        device=a.device, query_batch=a.query_batch, cand_batch=a.cand_batch, max_new_tokens=a.max_new_tokens,
        image_max_side=a.image_max_side)


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
    model_fp = getattr(embedder, "fingerprint", None) or retrieval.dir_fingerprint(a.checkpoint)
    results = evaluate(embedder or load_embedder(a.checkpoint, cfg.device), model_fp, cfg)
    print(format_table(results))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m trainer.evaluate"))
