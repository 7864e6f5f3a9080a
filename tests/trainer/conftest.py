"""Fixtures for trainer tests: a tiny random Qwen2-VL checkpoint folder, M-BEIR-CoT from the real pipeline
(`pipeline_cot`) and crafted rows in the same contract (`sample_cot`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random-weight Qwen2-VL checkpoint folder (model, tokenizer, image processor)."""
    from trainer.modeling.tiny import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_base, tmp_path_factory):
    """A TRACE checkpoint folder (seeded, full fine-tune layout) built from tiny_base; tests read it, never change
    it (copy it first to do that)."""
    import torch

    from trainer import TraceEmbedder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_checkpoint") / "ckpt"
    TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).save(folder)
    return folder


# ---- crafted M-BEIR-CoT rows from the sample, for tests that need rows of a known shape ----
DIRECT_DATASETS = ("visualnews", "mscoco", "fashion200k", "webqa", "edis", "nights")  # PAPER.md §2
REASONING_DATASETS = ("cirr", "fashioniq", "infoseek", "oven")
SAMPLE_DATASETS = DIRECT_DATASETS + REASONING_DATASETS


def _describe_candidate(cand: dict) -> str:
    """Short text for a positive: its own text, else what the sample's image file name encodes."""
    if cand.get("txt"):
        return cand["txt"]
    stem = cand["img_path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    shape, colour, background = (stem.split("_") + ["", "", ""])[:3]
    return f"a {colour} {shape} on a {background} background"


def sample_cot_rows(root: str, split_pool: str = "cand_pool/global/mbeir_union_train_cand_pool.jsonl",
                    seed: int = 0) -> list[dict]:
    """Rows in the exact M-BEIR-CoT row contract from the sample's train queries: direct route for the six
    simple datasets, a short synthetic reasoning + answer from the positive's text for the four others."""
    import csv
    import json
    import random
    from pathlib import Path

    rng = random.Random(seed)
    pool = {c["did"]: c for c in map(json.loads, (Path(root) / split_pool).read_text().splitlines())}
    with open(Path(root) / "instructions/query_instructions.tsv", newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))[1:]
    instructions = {(int(r[3]), r[0], r[1]): [p for p in r[4:] if p] for r in table}
    rows = []
    for dataset in SAMPLE_DATASETS:
        path = Path(root) / f"query/train/mbeir_{dataset}_train.jsonl"
        for q in map(json.loads, path.read_text().splitlines()):
            pos = pool[q["pos_cand_list"][0]]
            dataset_id = int(q["qid"].split(":")[0])
            instruction = rng.choice(instructions[(dataset_id, q["query_modality"], pos["modality"])])
            reasoning_route = dataset in REASONING_DATASETS
            answer = _describe_candidate(pos) if reasoning_route else ""
            reasoning = (f"The query asks: {q['query_txt'] or 'the shown image'}. The target must match it."
                         if reasoning_route else "")
            rows.append({
                "id": f"{dataset}/{q['task_id']}/{q['qid']}", "qid": q["qid"], "dataset": dataset,
                "dataset_id": dataset_id, "task_id": q["task_id"], "query_modality": q["query_modality"],
                "cand_modality": pos["modality"], "instruction": instruction, "query_txt": q["query_txt"],
                "query_img_path": q["query_img_path"], "pos_did": pos["did"], "pos_txt": pos["txt"],
                "pos_img_path": pos["img_path"], "pos_cand_list": q["pos_cand_list"],
                "neg_cand_list": q["neg_cand_list"], "route": "reasoning" if reasoning_route else "direct",
                "route_source": "dataset", "reasoning": reasoning, "answer": answer,
                "target": f"{reasoning} {answer}<|emb|>" if reasoning_route else "<|emb|>",
                "teacher_model": "synthetic-fixture" if reasoning_route else "", "prompt_id": "",
                "prompt_sha": "", "request_key": "", "prompt_tokens": 0, "completion_tokens": 0,
                "verifier_confidence": None})
    return rows


def write_cot_shards(rows: list[dict], out_dir, n_shards: int = 2, row_group_size: int = 64) -> str:
    """Write rows as data/train-0000X-of-0000N.parquet; returns the dataset folder."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = Path(out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(n_shards):
        part = rows[i::n_shards]
        pq.write_table(pa.Table.from_pylist(part), data / f"train-{i:05d}-of-{n_shards:05d}.parquet",
                       row_group_size=row_group_size)
    return str(out_dir)


@pytest.fixture(scope="session")
def sample_cot(sample_root, tmp_path_factory) -> str:
    """An M-BEIR-CoT folder (data/*.parquet) built from the sample; images stay under sample_root."""
    from schemas import validator

    rows = sample_cot_rows(sample_root)
    check = validator("mbeir_cot_row")
    for row in rows:
        check.validate(row)
    return write_cot_shards(rows, tmp_path_factory.mktemp("sample_cot"))


@pytest.fixture(scope="session")
def pipeline_cot(sample_root, tmp_path_factory) -> str:
    """M-BEIR-CoT built from the sample by the real pipeline with the bundled reference teacher (as
    `make dataset` does); images stay under sample_root."""
    from pipeline.run import run
    from pipeline.teacher.reference.server import ReferenceServer

    out = str(tmp_path_factory.mktemp("pipeline_cot"))
    with ReferenceServer() as teacher:
        run(["--mbeir_root", sample_root, "--output_dir", out, "--teacher_base_url", teacher.base_url,
             "--teacher_model", "reference-teacher"])
    return out


def run_two_gloo_ranks(script, args: list[str], timeout: float) -> None:
    """Run `python script *args RANK` for ranks 0 and 1 at once and assert both exit 0; a timeout or a failed start
    never leaves a rank waiting at the rendezvous."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    procs = []
    try:
        for r in range(2):
            procs.append(subprocess.Popen([sys.executable, str(script), *args, str(r)], env=env))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0]
