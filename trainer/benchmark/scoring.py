"""M-BEIR scoring exactly as UniIR does it (MBEIR.md "Scoring"): hit-rate Recall@k over UniIR run files.

Recall@k is a hit rate: a query scores 1 when ANY of its qrels positives is among its first k results, else 0
(also 0 when it has no positives). A pair's value is the mean over all of its test queries: every query in its
qrels file, so a query missing from the run scores 0, as UniIR counts it. A run line whose qid the qrels do not
know is a bad line (read_run). Positives outside the pool simply never hit.

Ties at the cut-off: results are taken in the order of the run file's rank column (file order breaks equal
ranks); scores are never re-sorted, so the retriever's own tie order is what gets scored.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError
from pipeline.mbeir.layout import DATASET_NAMES, RECALL_AT_10_DATASETS, dataset_of_id, is_mbeir_id, pair_name

DEFAULT_KS = (1, 5, 10)
# MBEIR.md "Scoring" / PAPER.md §4: headline Recall@5, Recall@10 for the Fashion200K and FashionIQ pairs.
HEADLINE_K = 5
FASHION_HEADLINE_K = 10

RUN_COLUMNS = ("{qid}", "Q0", "{did}", "{rank}", "{score}", "{run_id}", "{task_id}")
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


def _raw_lines(path: Path, flag: str) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a file; ConfigError naming the flag for a missing or unreadable one."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConfigError(f"{flag} {path}: {e.strerror or e}") from e
    with f:
        yield from enumerate(f, 1)


class _BadLine(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _columns(raw: bytes) -> list[str]:
    try:
        return raw.decode("utf-8").split()
    except UnicodeDecodeError as e:
        raise _BadLine("not_utf8", f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); run and "
                                   "qrels files are UTF-8 text") from None


def parse_qrels_file(path: Path, pair: str | None = None) -> dict[str, dict[str, set[str]]]:
    """`{qid} 0 {did} {rel} {task_id}` lines -> {pair: {qid: positives}}; rel <= 0 lines are not positives.

    The pair comes from the file name when it is a standard M-BEIR qrels name, else from qid and task column.
    Qrels are always strict: a bad line is a ConfigError with file:line (skipping one would change the scores).
    """
    out: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for n, raw in _raw_lines(path, "--qrels"):
        try:
            cols = _columns(raw)
        except _BadLine as bad:
            raise ConfigError(f"{path}:{n}: {bad}") from None
        if not cols:
            continue
        if len(cols) not in (4, 5):
            raise ConfigError(f"{path}:{n}: a qrels line has 4 or 5 columns ({{qid}} 0 {{did}} {{rel}} [{{task_id}}]), "
                              f"got {len(cols)}")
        qid, _, did, rel = cols[:4]
        if not (is_mbeir_id(qid) and is_mbeir_id(did)):
            raise ConfigError(f"{path}:{n}: qid {qid!r} or did {did!r} is not an M-BEIR id ('{{dataset id}}:{{n}}')")
        try:
            relevant = int(rel) > 0
        except ValueError as e:
            raise ConfigError(f"{path}:{n}: relevance {rel!r} is not an integer") from e
        line_pair = pair or _pair_or_none(qid, cols[4] if len(cols) == 5 else "")
        if line_pair is None:
            raise ConfigError(f"{path}:{n}: cannot tell the pair of qid {qid!r} with task {cols[4:5] or '(none)'}: "
                              "name the file mbeir_{dataset}_task{N}_{split}_qrels.txt or add the task column")
        positives = out[line_pair].setdefault(qid, set())
        if relevant:
            positives.add(did)
    return dict(out)


def _pair_or_none(qid: str, task_id: str) -> str | None:
    try:
        return pair_of(qid, task_id)
    except (ValueError, KeyError):
        return None


def read_qrels(paths: Iterable[str | Path]) -> Qrels:
    """Read qrels files, or every `*qrels*.txt` in a folder; ConfigError names a missing path or a bad line."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*qrels*.txt"))
            if not found:
                raise ConfigError(f"--qrels {p}: the folder holds no *qrels*.txt files")
            files.extend(found)
        elif not p.exists():
            raise ConfigError(f"--qrels {p}: no such file or folder")
        else:
            files.append(p)
    if not files:
        raise ConfigError("--qrels: give at least one qrels file or folder")
    qrels = Qrels()
    for f in files:
        m = _QRELS_NAME.match(f.stem)
        for pair, qmap in parse_qrels_file(f, pair=m and m["pair"]).items():
            for qid, dids in qmap.items():
                qrels.pairs.setdefault(pair, {}).setdefault(qid, set()).update(dids)
    return qrels


@dataclass
class RunFile:
    """A parsed run file: ranked dids per pair and query, and the lines skipped (by reason) when not strict."""

    pairs: dict[str, dict[str, list[str]]]
    skipped: Counter = field(default_factory=Counter)
    first_skipped: dict[str, str] = field(default_factory=dict)  # reason -> "file:line: what is wrong"

    def skipped_summary(self) -> str:
        return ", ".join(f"{n} {reason} (first: {self.first_skipped[reason]})"
                         for reason, n in sorted(self.skipped.items()))


def _run_line(cols: list[str], qrels: Qrels | None) -> tuple[str, str, str, int]:
    """(pair, qid, did, rank) of one run line, or _BadLine with a reason code and a message."""
    if len(cols) != len(RUN_COLUMNS):
        raise _BadLine("wrong_columns", f"a run line has {len(RUN_COLUMNS)} columns ({' '.join(RUN_COLUMNS)}), "
                                        f"got {len(cols)}")
    qid, _, did, rank, score, _run_id, task_id = cols
    if not (is_mbeir_id(qid) and is_mbeir_id(did)):
        raise _BadLine("bad_id", f"qid {qid!r} or did {did!r} is not an M-BEIR id ('{{dataset id}}:{{n}}')")
    try:
        rank_n = int(rank)
    except ValueError:
        raise _BadLine("bad_rank", f"rank {rank!r} is not an integer") from None
    try:
        float(score)
    except ValueError:
        raise _BadLine("bad_score", f"score {score!r} is not a number") from None
    pair = _pair_or_none(qid, task_id)
    if pair is None:
        raise _BadLine("unknown_pair", f"qid {qid!r} with task {task_id!r} is no M-BEIR pair")
    if qrels is not None:
        if pair not in qrels.pairs:
            raise _BadLine("pair_without_qrels", f"pair {pair} (qid {qid}) has no qrels: add its qrels file to --qrels")
        if qid not in qrels.pairs[pair]:
            raise _BadLine("unknown_qid", f"qid {qid} is not in the qrels of {pair}")
    return pair, qid, did, rank_n


def read_run(path: str | Path, qrels: Qrels | None = None, *, skip_bad_lines: bool = False) -> RunFile:
    """A UniIR run file `{qid} Q0 {did} {rank} {score} {run_id} {task_id}` -> RunFile ({pair: {qid: [did by rank]}}).

    Strict by default: the first bad line (column count, rank or score not a number, a qid of no M-BEIR pair or,
    with `qrels`, one the qrels do not know, a repeated (qid, did)) is a ConfigError with file:line. With
    skip_bad_lines those lines are left out and counted by reason (a repeated (qid, did) keeps its first line).
    """
    path = Path(path)
    rows: dict[str, dict[str, list[tuple[int, int, str]]]] = defaultdict(lambda: defaultdict(list))
    seen: dict[tuple[str, str], int] = {}
    run = RunFile({})
    for n, raw in _raw_lines(path, "--run"):
        try:
            if not (cols := _columns(raw)):
                continue
            pair, qid, did, rank = _run_line(cols, qrels)
            if (first := seen.setdefault((qid, did), n)) != n:
                raise _BadLine("duplicate", f"({qid}, {did}) repeats line {first}")
        except _BadLine as bad:
            where = f"{path}:{n}: {bad}"
            if not skip_bad_lines:
                raise ConfigError(f"{where}; fix the file or add --skip_bad_lines to score the rest") from None
            run.skipped[bad.reason] += 1
            run.first_skipped.setdefault(bad.reason, where)
            continue
        rows[pair][qid].append((rank, n, did))
    run.pairs = {pair: {qid: [did for _, _, did in sorted(hits)] for qid, hits in qmap.items()}
                 for pair, qmap in rows.items()}
    return run


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

