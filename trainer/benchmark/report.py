"""The evaluation's tables: UniIR's results.tsv and the 16-pair table printed beside the paper's rows."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.mbeir import layout
from trainer.benchmark import paper_results
from trainer.benchmark.config import POOLS

TASK_NAMES = {0: "t→i", 1: "t→t", 2: "t→(i,t)", 3: "i→t", 4: "i→i", 6: "(i,t)→t", 7: "(i,t)→i", 8: "(i,t)→(i,t)"}


def results_tsv(results: dict, ks: Sequence[int]) -> str:
    """UniIR's results table; one row per (pair, Recall@k); Value/UnionValue in percent, 2 decimals."""
    rows = ["TaskID\tTask\tDataset\tSplit\tMetric\tCandPool\tValue\tUnionPool\tUnionValue"]
    for name, e in results["pairs"].items():
        for k in sorted(set(ks) | {int(e["headline"].split("@")[1])}):
            metric = f"Recall@{k}"
            local = f"{100 * e['local'][metric]:.2f}" if "local" in e else ""
            union = f"{100 * e['global'][metric]:.2f}" if "global" in e else ""
            rows.append("\t".join([str(e["task_id"]), TASK_NAMES[e["task_id"]],
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
