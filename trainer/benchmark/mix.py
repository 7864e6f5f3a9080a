"""A mixed workload: N test queries drawn from named pairs in given shares, encoded in every mode.

The question it answers is the one routing is sold on (PAPER.md §4): when most queries bypass reasoning, does
adaptive run near direct speed? The ideal adaptive throughput is what per-query costs allow:
`1 / (t_direct + r * (t_always - t_direct))`, r = the share adaptive reasoned, t = seconds per query.

That formula prices every query's reasoning alike. When forced reasoning costs less on the queries adaptive
lets bypass than on those it reasons on (a model forced to reason on a simple query may stop after one token),
it is out of reach for any engine. The parts ideal measures the price instead: the direct cost of every query
plus what reasoning adds on exactly the queries adaptive reasoned (R), `(T_direct + T_always(R) - T_direct(R)) / N`,
from direct and always runs over R alone. It equals the formula when reasoning costs the same on every query.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.benchmark.evalset import ReadStats, eval_pairs, query_inputs, read_instructions, read_queries
from trainer.modeling.interface import Embedder, QueryInput

# PAPER.md §4: MSCOCO bypasses reasoning 96 % of the time, CIRR reasons 62 % of the time. With a model that
# routes these pairs as the paper's does, these mixes reproduce the two bypass rates of its throughput table.
PAPER_MIXES = {"bypass96": "mscoco_task0:0.96,cirr_task7:0.04", "bypass38": "mscoco_task0:0.38,cirr_task7:0.62"}


@dataclass(frozen=True)
class MixPart:
    pair: str
    share: float


def parse_mix(text: str) -> list[MixPart]:
    """"mscoco_task0:0.96,cirr_task7:0.04" (or a PAPER_MIXES name) -> parts; ValueError naming what is wrong."""
    text = PAPER_MIXES.get(text, text)
    parts = []
    for item in (s.strip() for s in text.split(",")):
        name, sep, share = item.partition(":")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not sep or not name or not value > 0:
            raise ValueError(f"--mix item {item!r} must be PAIR:SHARE with a share > 0, e.g. mscoco_task0:0.96")
        parts.append(MixPart(name.strip(), value))
    eval_pairs([p.pair for p in parts])  # unknown pair names raise here
    if len({p.pair for p in parts}) != len(parts):
        raise ValueError(f"--mix {text!r} names a pair twice")
    total = sum(p.share for p in parts)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--mix shares sum to {total:g}; make them sum to 1")
    return parts


def counts(parts: Sequence[MixPart], n: int) -> dict[str, int]:
    """Queries per pair: shares times n, rounded by largest remainder so they sum to n."""
    raw = {p.pair: p.share * n for p in parts}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: out[k] - raw[k])[: n - sum(out.values())]:
        out[k] += 1
    return out


def workload(mbeir_root, parts: Sequence[MixPart], n: int, split: str = "test", seed: int = 0,
             image_max_side: int | None = None) -> tuple[list[QueryInput], list[str]]:
    """(queries, their pair names) in a seeded random order; a pair's queries repeat when it has fewer."""
    instructions = read_instructions(mbeir_root)
    pairs = {p.name: p for p in eval_pairs([m.pair for m in parts], split)}
    tagged: list[tuple[str, QueryInput]] = []
    for name, k in counts(parts, n).items():
        if k == 0:
            continue
        stats = ReadStats()
        records = read_queries(mbeir_root, pairs[name], stats)
        if not records:
            raise ValueError(f"pair {name} has no readable {split} queries under {mbeir_root}")
        kwargs = {"max_side": image_max_side} if image_max_side else {}
        inputs = query_inputs(mbeir_root, records, instructions, seed, stats, **kwargs)
        tagged += [(name, inputs[i % len(inputs)]) for i in range(k)]
    random.Random(seed).shuffle(tagged)
    return [q for _, q in tagged], [name for name, _ in tagged]


def run_mode(embedder: Embedder, queries: list[QueryInput], mode: str, batch_size: int,
             max_new_tokens: int) -> tuple[dict, list[bool]]:
    """(timing and routing of one run, which queries reasoned)."""
    gc.collect()  # garbage left by the previous run is not this run's cost
    t0, c0 = time.perf_counter(), time.process_time()
    res = embedder.encode_queries(queries, mode=mode, max_new_tokens=max_new_tokens, batch_size=batch_size)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(queries)
    return {"seconds": round(seconds, 6), "qps": round(n / seconds, 3), "cpu_seconds": round(cpu, 6),
            "share_reasoned": round(sum(res.reasoned) / n, 4),
            "mean_generated_tokens": round(sum(res.generated_tokens) / n, 3)}, list(res.reasoned)


def ideal(modes: dict[str, dict], n: int, clock: str = "seconds", parts: dict | None = None) -> dict:
    """Adaptive against the ideal of its parts (module docstring) and against direct, on wall time ("seconds")
    or on this process's CPU time ("cpu_seconds": steadier on a shared machine, keys prefixed "cpu_").
    `parts`: the direct and always runs over the queries adaptive reasoned, for the parts ideal."""
    t_direct, t_always, t_ada = (modes[m][clock] / n for m in ("direct", "always", "adaptive"))
    r = modes["adaptive"]["share_reasoned"]
    ideal_t = t_direct + r * (t_always - t_direct)
    out = {"ideal_qps": 1.0 / ideal_t, "ratio_to_ideal": ideal_t / t_ada, "ratio_to_direct": t_direct / t_ada}
    if parts is not None:
        reasoning = parts["always"][clock] - parts["direct"][clock] if parts["queries"] else 0.0
        parts_t = t_direct + reasoning / n
        out.update(parts_ideal_qps=1.0 / parts_t, ratio_to_parts_ideal=parts_t / t_ada)
    prefix = "" if clock == "seconds" else "cpu_"
    return {prefix + k: round(v, 3) for k, v in out.items()}


def _keep_faster(best: dict[str, dict], key: str, run: dict) -> None:
    if key not in best or run["seconds"] < best[key]["seconds"]:
        best[key] = run


def bench_mix(embedder: Embedder, queries: list[QueryInput], modes: Sequence[str], batch_size: int,
              max_new_tokens: int, repeats: int = 1) -> dict:
    """Per mode: the best of `repeats` timed runs (rounds interleave the modes, each round in a rotated order,
    so machine drift and what a run leaves behind hit all alike), after one untimed warm-up batch per mode.
    With all three modes, each round also times direct and always over the queries adaptive reasoned (the parts
    ideal), reported under adaptive's "parts"."""
    for mode in modes:
        embedder.encode_queries(queries[:batch_size], mode=mode, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    all_modes = {"direct", "always", "adaptive"} <= set(modes)
    best: dict[str, dict] = {}
    parts: dict[str, dict] = {}
    reasoned: list[QueryInput] = []  # routing is deterministic: the same queries every round
    for round_ in range(repeats):
        shift = round_ % len(modes)
        for mode in [*modes[shift:], *modes[:shift]]:
            run, flags = run_mode(embedder, queries, mode, batch_size, max_new_tokens)
            _keep_faster(best, mode, run)
            if mode == "adaptive":
                reasoned = [q for q, f in zip(queries, flags, strict=True) if f]
        if all_modes and reasoned:
            for mode in ("direct", "always"):
                _keep_faster(parts, mode, run_mode(embedder, reasoned, mode, batch_size, max_new_tokens)[0])
    if all_modes:
        summary = {"queries": len(reasoned), **{m: {k: parts[m][k] for k in ("seconds", "cpu_seconds")}
                                             for m in parts}}
        best["adaptive"].update(ideal(best, len(queries), parts=summary))
        best["adaptive"].update(ideal(best, len(queries), "cpu_seconds", parts=summary))
        best["adaptive"]["parts"] = summary
    return best


def format_mix_table(result: dict) -> str:
    lines = [f"device: {result['device_name']}, workload {result['mix']} x {result['queries']} queries, "
             f"batch {result['batch_size']}",
             "mode | queries/s | reasoned % | mean gen tokens | ideal qps | x ideal | x direct | x parts ideal"
             " | CPU: x ideal | x direct | x parts ideal"]
    for mode, r in result["modes"].items():
        cells = [mode, f"{r['qps']:.2f}", f"{100 * r['share_reasoned']:.1f}", f"{r['mean_generated_tokens']:.2f}"]
        cells += [str(r[k]) if k in r else "-" for k in ("ideal_qps", "ratio_to_ideal", "ratio_to_direct",
                                                           "ratio_to_parts_ideal", "cpu_ratio_to_ideal",
                                                           "cpu_ratio_to_direct", "cpu_ratio_to_parts_ideal")]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
