"""Routing and throughput benchmark in the shape of PAPER.md §4's table: per pair and mode (direct / always /
adaptive), share of queries that reasoned, mean generated tokens, queries/s of online query encoding, recall.

    python -m trainer.bench --mbeir_root ROOT --checkpoint CKPT [--pairs mscoco_task0 cirr_task7] [--limit N]
    python -m trainer.bench --mbeir_root ROOT --checkpoint CKPT --mix mscoco_task0:0.96,cirr_task7:0.04 --queries N

Per pair: writes bench.json and bench.png (headline recall vs queries/s) under --output_dir and prints the
table. Recall here is over the benchmarked queries only (with --limit, a subset: not the M-BEIR number).
--output_dir follows the output-folder contract (common/outdir.py): new, empty or this command's (--overwrite).
With --mix: one workload of N queries drawn from the pairs in those shares (trainer/benchmark/mix.py); bench.json
holds per mode qps, share_reasoned, mean_generated_tokens and, for adaptive, the ideal throughput and ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from common.cli import CliParser, non_negative_int, positive_int, run_cli
from common.errors import ConfigError
from common.outdir import claim_output_dir
from trainer.benchmark import evaluate, mix, paper_results, retrieval
from trainer.benchmark.evalset import eval_pairs, read_instructions, read_pair_qrels
from trainer.modeling.interface import MODES, Embedder

COMMAND = "trainer.bench"  # the output-folder marker's name (common/outdir.py)
OUTPUTS = ("bench.json", "bench.png", "embedding_cache/*")  # the cache: trainer/benchmark/chunks.py, by default here
DEFAULT_PAIRS = ("mscoco_task0", "cirr_task7")  # the two pairs of PAPER.md §4's throughput table
BENCH_MODES = ("direct", "always", "adaptive")  # PAPER.md §4 row order


def bench(embedder: Embedder, model_fp: str, cfg: evaluate.EvalConfig, modes: Sequence[str] = BENCH_MODES) -> dict:
    """{"device", "rows": [{pair, mode, queries, share_reasoned, mean_generated_tokens, qps, metric, recall}]}."""
    instructions = read_instructions(cfg.mbeir_root)
    rows = []
    for pair in eval_pairs(cfg.pairs, cfg.split):
        pool = evaluate.embed_pool(embedder, model_fp, pair.pool_file, cfg)
        qrels = read_pair_qrels(cfg.mbeir_root, pair)
        for mode in modes:
            cfg.mode = mode
            pq = evaluate.encode_pair_queries(embedder, pair, cfg, instructions)
            _, idx = retrieval.search(pq.embeddings, pool.embeddings, cfg.top_k, device=cfg.device)
            rates = evaluate.score_pair(pq, evaluate.ranked_lists(pq, pool, idx), qrels, cfg.ks, restrict=True)
            metric = f"Recall@{pair.headline_k}"
            rows.append({"pair": pair.name, "mode": mode, "queries": len(pq.qids), **pq.routing(),
                         "qps": round(len(pq.qids) / pq.encode_seconds, 3) if pq.encode_seconds else None,
                         "metric": metric, "recall": rates[metric]})
    return {"device": cfg.device, "device_name": _device_name(cfg.device), "limit": cfg.limit, "rows": rows,
            "paper": {"throughput": paper_results.THROUGHPUT, "share_reasoned": paper_results.SHARE_REASONED}}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"


def format_table(result: dict) -> str:
    lines = [f"device: {result['device_name']}" + (f", first {result['limit']} queries per pair"
                                                    if result["limit"] else ""),
             "pair | mode | queries | reasoned % | mean gen tokens | queries/s | recall % | paper qps / R@5"]
    for r in result["rows"]:
        paper = paper_results.THROUGHPUT.get(r["mode"], {}).get(r["pair"].split("_task")[0])
        lines.append(" | ".join([r["pair"], r["mode"], str(r["queries"]), f"{100 * r['share_reasoned']:.1f}",
                                 f"{r['mean_generated_tokens']:.1f}", f"{r['qps'] or 0:.2f}",
                                 f"{100 * r['recall']:.2f} ({r['metric']})",
                                 f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "-"]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Headline recall against queries/s, one marker per (pair, mode), one colour per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"direct": "o", "always": "s", "adaptive": "*"}
    for i, pair in enumerate(dict.fromkeys(r["pair"] for r in result["rows"])):
        rows = [r for r in result["rows"] if r["pair"] == pair]
        for r in rows:
            ax.scatter(r["qps"] or 0, 100 * r["recall"], color=f"C{i}", marker=markers.get(r["mode"], "x"),
                       s=80, label=f"{pair} {r['mode']}")
    ax.set_xlabel(f"queries/s ({result['device_name']})")
    ax.set_ylabel("headline recall (%)")
    ax.set_title("Routing: recall vs query throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> CliParser:
    p = CliParser(prog="python -m trainer.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--mbeir_root", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output_dir", default="out/bench",
                   help="new, empty, or an earlier trainer.bench output (marked by .mbeir-cot.json); locked while "
                        "written")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --output_dir that holds other files: they stay untouched, and one named like "
                        "this command's outputs (bench.json, bench.png, embedding_cache/) stops it")
    p.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS))
    p.add_argument("--modes", nargs="+", default=list(BENCH_MODES), choices=MODES)
    p.add_argument("--limit", type=positive_int, default=None, help="first N queries per pair")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--device", default=evaluate.EvalConfig.device)
    p.add_argument("--query_batch", type=positive_int, default=8)
    p.add_argument("--max_new_tokens", type=non_negative_int, default=128)
    p.add_argument("--mix", default=None, help="PAIR:SHARE,... e.g. " + mix.PAPER_MIXES["bypass96"] + ", or the name "
                   "of one of PAPER.md §4's two workloads: " + ", ".join(f"{k} = {v}" for k, v in mix.PAPER_MIXES.items()))
    p.add_argument("--queries", type=positive_int, default=1000, help="workload size with --mix")
    p.add_argument("--repeats", type=positive_int, default=1, help="with --mix: timed runs per mode, the best is kept")
    p.add_argument("--seed", type=int, default=0, help="with --mix: instruction choice and workload order")
    return p


def main(argv: Sequence[str] | None = None, embedder: Embedder | None = None) -> dict:
    """CLI entry; `embedder` lets tests pass a loaded model instead of loading --checkpoint. Every check comes
    before the output folder is claimed (common/outdir.py), the work after."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(a.output_dir)
    work = _mix_work(a, out, embedder) if a.mix is not None else _pairs_work(a, out, embedder)
    with claim_output_dir(out, command=COMMAND, patterns=OUTPUTS, legacy=("bench.json",), overwrite=a.overwrite):
        return work()


def _pairs_work(a: argparse.Namespace, out: Path, embedder: Embedder | None) -> Callable[[], dict]:
    cfg = evaluate.EvalConfig(mbeir_root=Path(a.mbeir_root), output_dir=out, split=a.split, pairs=a.pairs,
                              limit=a.limit, cache_dir=Path(a.cache_dir) if a.cache_dir else None,
                              device=a.device, query_batch=a.query_batch, max_new_tokens=a.max_new_tokens)
    evaluate.check_config(cfg)
    if embedder is None:
        evaluate.check_checkpoint(a.checkpoint)

    def work() -> dict:
        model_fp = getattr(embedder, "fingerprint", None) or retrieval.dir_fingerprint(a.checkpoint)
        result = bench(embedder or evaluate.load_embedder(a.checkpoint), model_fp, cfg, a.modes)
        (out / "bench.json").write_text(json.dumps(result, indent=1))
        plot(result, out / "bench.png")
        print(format_table(result))
        return result

    return work


def _mix_work(a: argparse.Namespace, out: Path, embedder: Embedder | None) -> Callable[[], dict]:
    try:
        parts = mix.parse_mix(a.mix)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cfg = evaluate.EvalConfig(mbeir_root=Path(a.mbeir_root), output_dir=out, split=a.split,
                              pairs=[part.pair for part in parts], device=a.device, query_batch=a.query_batch,
                              max_new_tokens=a.max_new_tokens)
    evaluate.check_config(cfg)
    if embedder is None:
        evaluate.check_checkpoint(a.checkpoint)
    try:
        queries, names = mix.workload(Path(a.mbeir_root), parts, a.queries, a.split, a.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    def work() -> dict:
        modes = list(dict.fromkeys(a.modes))
        result = {"device": a.device, "device_name": _device_name(a.device), "mix": a.mix, "queries": len(queries),
                  "pair_queries": {n: names.count(n) for n in dict.fromkeys(names)}, "batch_size": a.query_batch,
                  "max_new_tokens": a.max_new_tokens, "repeats": a.repeats,
                  "modes": mix.bench_mix(embedder or evaluate.load_embedder(a.checkpoint), queries, modes,
                                         a.query_batch, a.max_new_tokens, a.repeats),
                  "paper": {"throughput": paper_results.THROUGHPUT, "share_reasoned": paper_results.SHARE_REASONED}}
        (out / "bench.json").write_text(json.dumps(result, indent=1))
        print(mix.format_mix_table(result))
        return result

    return work


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m trainer.bench"))
