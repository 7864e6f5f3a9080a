"""M-BEIR scoring exactly as UniIR does it (MBEIR.md "Scoring"): hit-rate Recall@k over UniIR run files.

Recall@k is a hit rate: a query scores 1 when ANY of its qrels positives is among its first k results, else 0
(also 0 when it has no positives). A pair's value is the mean over all of its test queries: every query in its
qrels file plus any query that appears only in the run. Positives outside the pool simply never hit.

Ties at the cut-off: results are taken in the order of the run file's rank column (file order breaks equal
ranks); scores are never re-sorted, so the retriever's own tie order is what gets scored.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.mbeir.layout import DATASET_NAMES, RECALL_AT_10_DATASETS, dataset_of_id, pair_name

DEFAULT_KS = (1, 5, 10)
# MBEIR.md "Scoring" / PAPER.md §4: headline Recall@5, Recall@10 for the Fashion200K and FashionIQ pairs.
HEADLINE_K = 5
FASHION_HEADLINE_K = 10

_QRELS_NAME = re.compile(r"^mbeir_(?P<pair>[a-z0-9]+_task\d+)_(?:train|val|test)_qrels$")


def headline_k(pair: str) -> int:
    """The paper's headline cut-off for a pair name such as "fashioniq_task7"."""
    return FASHION_HEADLINE_K if pair.split("_task")[0] in RECALL_AT_10_DATASETS else HEADLINE_K


def pair_of(qid: str, task_id: int | str) -> str:
    """Pair name from a qid's dataset prefix and a task id column."""
    return pair_name(DATASET_NAMES[dataset_of_id(qid)], int(task_id))


@dataclass
class Qrels:
    """Positives per pair: {pair: {qid: {did, ...}}}."""

    pairs: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def positives(self, pair: str) -> dict[str, set[str]]:
        return self.pairs.get(pair, {})


def parse_qrels_lines(text: str, *, source: str = "", pair: str | None = None) -> dict[str, dict[str, set[str]]]:
    """`{qid} 0 {did} {rel} {task_id}` lines -> {pair: {qid: positives}}; rel <= 0 lines are not positives.

    The pair comes from the file name when it is a standard M-BEIR qrels name, else from qid and task column.
    """
    out: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for n, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) not in (4, 5):
            raise ValueError(f"{source}:{n}: qrels line needs 4 or 5 columns, got {len(cols)}: {line!r}")
        qid, _, did, rel = cols[:4]
        try:
            line_pair = pair or pair_of(qid, cols[4] if len(cols) == 5 else -1)
            relevant = int(rel) > 0
        except (ValueError, KeyError) as e:
            raise ValueError(f"{source}:{n}: bad qrels line {line!r}: {e}") from e
        positives = out[line_pair].setdefault(qid, set())
        if relevant:
            positives.add(did)
    return dict(out)


def read_qrels(paths: Iterable[str | Path]) -> Qrels:
    """Read qrels files, or every `*_qrels.txt` in a folder."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*qrels*.txt")) if p.is_dir() else [p])
    if not files:
        raise FileNotFoundError(f"no qrels files in {list(paths)}")
    qrels = Qrels()
    for f in files:
        m = _QRELS_NAME.match(f.stem)
        for pair, qmap in parse_qrels_lines(f.read_text(), source=str(f), pair=m and m["pair"]).items():
            for qid, dids in qmap.items():
                qrels.pairs.setdefault(pair, {}).setdefault(qid, set()).update(dids)
    return qrels


def read_run(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """A UniIR run file `{qid} Q0 {did} {rank} {score} {run_id} {task_id}` -> {pair: {qid: [did by rank]}}."""
    rows: dict[str, dict[str, list[tuple[int, int, str]]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 7:
                raise ValueError(f"{path}:{n}: run line needs 7 columns, got {len(cols)}: {line!r}")
            qid, _, did, rank, _score, _run_id, task_id = cols
            try:
                rows[pair_of(qid, task_id)][qid].append((int(rank), n, did))
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{n}: bad run line {line!r}: {e}") from e
    return {pair: {qid: [did for _, _, did in sorted(hits)] for qid, hits in qmap.items()}
            for pair, qmap in rows.items()}


def hit_rates(ranked: Mapping[str, Sequence[str]], positives: Mapping[str, set[str]],
              ks: Iterable[int] = DEFAULT_KS, queries: Iterable[str] = ()) -> dict[str, float]:
    """{"Recall@k": fraction} over the union of `queries`, `positives` keys and `ranked` keys (unrounded)."""
    all_q = set(queries) | set(positives) | set(ranked)
    out = {}
    for k in ks:
        hits = sum(1 for q in all_q if positives.get(q) and not positives[q].isdisjoint(ranked.get(q, ())[:k]))
        out[f"Recall@{k}"] = hits / len(all_q) if all_q else 0.0
    return out


def score_run(run: Mapping[str, Mapping[str, Sequence[str]]], qrels: Qrels,
              ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Score every pair that appears in the run. Returns the JSON object the `score` command prints."""
    pairs, counts, headline, missing = {}, {}, {}, []
    for pair in sorted(run):
        if pair not in qrels.pairs:
            missing.append(pair)
            continue
        hk = headline_k(pair)
        rates = hit_rates(run[pair], qrels.positives(pair), sorted(set(ks) | {hk}))
        pairs[pair] = {f"Recall@{k}": round(rates[f"Recall@{k}"], 4) for k in ks}
        headline[pair] = {"metric": f"Recall@{hk}", "value": round(rates[f"Recall@{hk}"], 4)}
        counts[pair] = len(set(run[pair]) | set(qrels.positives(pair)))
    values = [h["value"] for h in headline.values()]
    result = {"pairs": pairs, "average": round(sum(values) / len(values), 4) if values else None,
              "headline": headline, "queries": counts}
    if missing:
        result["pairs_without_qrels"] = missing
    return result

