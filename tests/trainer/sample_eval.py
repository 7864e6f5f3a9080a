"""Small retrieval checks on the sample's test pairs for trainer tests (plain matmul; no evaluation package)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from PIL import Image

from trainer.modeling.interface import CandidateInput, QueryInput
from trainer.modeling.student import format_query_text


def _image(root: str, rel: str | None):
    return Image.open(Path(root) / rel).convert("RGB") if rel else None


def load_pair(root: str, dataset: str, task_id: int, seed: int = 0):
    """(queries, candidates, positives per query as sets of candidate rows) for one sample test pair."""
    rng = random.Random(seed)
    with open(Path(root) / "instructions/query_instructions.tsv", newline="") as fh:
        table = {(int(r[3]), r[0], r[1]): [p for p in r[4:] if p] for r in list(csv.reader(fh, delimiter="\t"))[1:]}
    pool_name = (f"mbeir_mscoco_task{task_id}_test_cand_pool.jsonl" if dataset == "mscoco"
                 else f"mbeir_{dataset}_task{task_id}_cand_pool.jsonl")
    pool = [json.loads(x) for x in (Path(root) / "cand_pool/local" / pool_name).read_text().splitlines()]
    row_of = {c["did"]: i for i, c in enumerate(pool)}
    lines = (Path(root) / f"query/test/mbeir_{dataset}_task{task_id}_test.jsonl").read_text().splitlines()
    queries, positives = [], []
    for q in map(json.loads, lines):
        cand_mod = pool[row_of[q["pos_cand_list"][0]]]["modality"] if q["pos_cand_list"][0] in row_of else "text"
        instr = rng.choice(table[(int(q["qid"].split(":")[0]), q["query_modality"], cand_mod)])
        queries.append(QueryInput(format_query_text(instr, q["query_txt"]), _image(root, q["query_img_path"]),
                                  dataset, task_id))
        positives.append({row_of[d] for d in q["pos_cand_list"] if d in row_of})
    cands = [CandidateInput(c["txt"], _image(root, c["img_path"]), c["modality"]) for c in pool]
    return queries, cands, positives


def recall_at(q: torch.Tensor, c: torch.Tensor, positives: list[set[int]], k: int = 5) -> float:
    top = (q @ c.T).topk(k, dim=-1).indices.tolist()
    return sum(bool(set(t) & p) for t, p in zip(top, positives, strict=True)) / len(positives)


def evaluate(embedder, root: str, pairs, max_new_tokens: int = 32) -> dict[str, dict[str, float]]:
    """Per pair: recall@5 (adaptive mode) and the share of queries that reasoned."""
    out = {}
    for dataset, task_id in pairs:
        queries, cands, positives = load_pair(root, dataset, task_id)
        res = embedder.encode_queries(queries, mode="adaptive", max_new_tokens=max_new_tokens, batch_size=10)
        c = embedder.encode_candidates(cands, batch_size=36)
        out[f"{dataset}_task{task_id}"] = {"recall@5": recall_at(res.embeddings, c, positives),
                                            "reasoned": sum(res.reasoned) / len(res.reasoned)}
    return out
