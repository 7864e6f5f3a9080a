"""Write a deterministic mini-M-BEIR in the real release layout (pipeline/mbeir/layout.py).

Every dataset gets train queries in its real task mix; the 16 evaluation pairs get val and test queries,
local pools, qrels; union pools, query_instructions.tsv and 64x64 JPEGs complete the tree. Texts and images
come from pipeline.sample.world, so a model can learn to match them.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from common.outdir import claim_output_dir
from pipeline.mbeir import layout
from pipeline.sample.instructions import instructions_tsv
from pipeline.sample.world import OBJECTS, Entity, Obj, entities, neighbours, render

TRAIN_QUERIES_PER_DATASET = 40
VAL_QUERIES_PER_PAIR = 8
TEST_QUERIES_PER_PAIR = 20
# Query number ranges per split keep qids unique within a dataset (n < 500,000, layout.QID_STRIDE).
QID_START = {"train": 1, "val": 300_001, "test": 400_001}
MAX_SCALE = (QID_START["val"] - QID_START["train"]) // TRAIN_QUERIES_PER_DATASET
NEGATIVE_RATE = 0.25  # share of train queries that list hard negatives
CROSS_POSITIVE_RATE = 0.2  # share of OVEN/InfoSeek queries also listing the other dataset's page

TRAIN_TASKS = layout.DATASET_TASKS

COMMAND = "pipeline.sample"  # the output-folder marker's name (common/outdir.py)
COMPLETE = ".complete"  # written once a whole sample is there
# What a sample writes: only these are ever replaced; a real M-BEIR tree's files are in the way (refused).
OWN_FILES = ("query/*/mbeir_*.jsonl", "qrels/*/mbeir_*_qrels.txt", "cand_pool/*/mbeir_*.jsonl", layout.INSTRUCTIONS,
             f"{layout.IMAGE_DIR}/*_images/*.jpg", COMPLETE)
KNOWLEDGE = ("oven", "infoseek")

CAPTIONS: dict[str, tuple[str, ...]] = {
    "mscoco": ("a {c} {s} on a {b} background", "a picture of a {c} {s} against a {b} background",
               "there is a {c} {s} on a plain {b} background"),
    "visualnews": ("A {c} {s} is displayed against a {b} backdrop during the ceremony",
                   "Officials pose beside a {c} {s} on a {b} background",
                   "Visitors look at a {c} {s} set on a {b} background"),
    "fashion200k": ("{c} {s} print top on a {b} background", "{c} {s} pattern dress shown on {b}",
                    "{b} backdrop with a {c} {s} motif shirt"),
    "edis": ("{c} {s} banner unveiled against a {b} backdrop", "Crowds gather around a {c} {s} on {b}",
             "City shows off a {c} {s} on a {b} wall"),
}
EDIS_HEADLINE = "Report: a {c} {s} on a {b} background draws attention"
KNOWLEDGE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "oven": ("Which entity is this? It is named after {named_after}.", "What is the name of this {kind}?",
             "Which {kind} from {region} is this?"),
    "infoseek": ("In which year was this {kind} first used?", "What is this {kind} named after?",
                 "Which region does this {kind} come from?"),
}
WEBQA_QUESTIONS = {
    1: ("What is the {name} named after?", "In which year was the {name} first used?",
        "Where does the {name} come from?"),
    2: ("What does the {name} look like?", "What colour and shape is shown on the {name}?"),
}
EDITS: dict[str, dict[str, tuple[str, ...]]] = {
    "cirr": {"colour": ("make it {new}", "change the colour to {new}"), "shape": ("change the {old} to a {new}",),
             "background": ("put it on a {new} background",)},
    "fashioniq": {"colour": ("is {new} and has the same print",), "shape": ("has a {new} print instead of a {old}",),
                  "background": ("is shown on a {new} background",)},
}


def _fill(template: str, obj: Obj) -> str:
    return template.format(c=obj.colour, s=obj.shape, b=obj.background, C=obj.colour.capitalize())


def _image_dir(dataset: str) -> str:
    return f"{layout.IMAGE_DIR}/{'oven' if dataset in KNOWLEDGE else dataset}_images"


class _Builder:
    def __init__(self, seed: int):
        self.seed = seed
        self.entities = entities(seed)
        self.images: dict[str, tuple[Obj, int]] = {}
        self.universes: dict[tuple[str, int], dict[Any, dict]] = {}
        for dataset, tasks in TRAIN_TASKS.items():
            next_did = 1
            for task in tasks:
                keys = self.entities if dataset in KNOWLEDGE or dataset == "webqa" else OBJECTS
                universe = {}
                for key in keys:
                    universe[key] = self._candidate(dataset, task, key, f"{layout.DATASET_IDS[dataset]}:{next_did}")
                    next_did += 1
                self.universes[(dataset, task)] = universe
        self.keys = {k: tuple(u) for k, u in self.universes.items()}

    def _image(self, dataset: str, obj: Obj, variant: int) -> str:
        path = f"{_image_dir(dataset)}/{obj.slug}_v{variant}.jpg"
        self.images[path] = (obj, variant)
        return path

    def _candidate(self, dataset: str, task: int, key: Obj | Entity, did: str) -> dict:
        modality = layout.TASKS[task][1]
        txt = img = src = None
        if isinstance(key, Entity):
            src = json.dumps({"title": key.name, "wikidata_id": key.wikidata_id})
            if dataset == "webqa":
                txt = (f"{key.name} ({key.region}). The {key.kind} takes its name from {key.named_after}; "
                       f"it was first used in {key.year}." if task == 1 else f"The {key.name}, a {key.kind} of {key.region}.")
            else:
                txt = key.page()
            if "image" in modality:
                img = self._image(dataset, key.symbol, 0)
        else:
            if "image" in modality:
                img = self._image(dataset, key, 1 if dataset == "nights" else 0)
            if "text" in modality:
                txt = _fill(EDIS_HEADLINE if dataset == "edis" else CAPTIONS[dataset][0], key)
        return {"txt": txt, "img_path": img, "modality": modality, "did": did, "src_content": src}

    def query(self, dataset: str, task: int, qid: str, rng: random.Random, with_negatives: bool) -> dict:
        universe = self.universes[(dataset, task)]
        keys = self.keys[(dataset, task)]
        txt = img = src = None
        key = rng.choice(keys)
        negatives: Sequence[Any] = ()
        if dataset in KNOWLEDGE:
            img = self._image(dataset, key.symbol, 1)
            txt = rng.choice(KNOWLEDGE_QUESTIONS[dataset]).format(**vars(key))
            src = json.dumps({"entity_id": key.wikidata_id, "entity_name": key.name})
            negatives = keys
        elif dataset == "webqa":
            txt = rng.choice(WEBQA_QUESTIONS[task]).format(**vars(key))
            negatives = keys
        elif dataset in EDITS:
            ref = key
            key = rng.choice(neighbours(ref))
            changed = next(a for a in ("shape", "colour", "background") if getattr(ref, a) != getattr(key, a))
            txt = rng.choice(EDITS[dataset][changed]).format(old=getattr(ref, changed), new=getattr(key, changed))
            img = self._image(dataset, ref, 0)
            negatives = [ref]
        elif dataset == "nights":
            img = self._image(dataset, key, 0)
            negatives = neighbours(key)
        elif task == 3:
            img = self._image(dataset, key, 0)
            negatives = neighbours(key)
        else:
            txt = _fill(rng.choice(CAPTIONS[dataset]), key)
            negatives = neighbours(key)
        positives = [universe[key]["did"]]
        if dataset in KNOWLEDGE and rng.random() < CROSS_POSITIVE_RATE:
            other = KNOWLEDGE[1 - KNOWLEDGE.index(dataset)]
            positives.append(self.universes[(other, task)][key]["did"])
        neg_dids = []
        if with_negatives and rng.random() < NEGATIVE_RATE:
            neg_dids = [universe[k]["did"] for k in rng.sample(negatives, min(2, len(negatives))) if k != key]
        return {"qid": qid, "query_txt": txt, "query_img_path": img, "query_modality": layout.TASKS[task][0],
                "query_src_content": src, "pos_cand_list": positives, "neg_cand_list": neg_dids, "task_id": task}


def _write(root: str, rel: str, data: bytes) -> None:
    try:
        from apache_beam.io.filesystems import CompressionTypes, FileSystems
    except ImportError:  # trainer-only machines have no Beam: local folders still work
        if "://" in root:
            raise
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return
    f = FileSystems.create(FileSystems.join(root, rel), compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        f.write(data)
    finally:
        f.close()


def _jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _qrels(rows: Iterable[dict]) -> bytes:
    return "".join(f"{r['qid']} 0 {did} 1 {r['task_id']}\n" for r in rows for did in r["pos_cand_list"]).encode()


def _sorted_pool(cands: Iterable[dict]) -> list[dict]:
    unique = {c["did"]: c for c in cands}
    return [unique[d] for d in sorted(unique, key=layout.did_to_int)]


def write_sample(root: str, *, overwrite: bool, flag: str, seed: int = 0, scale: int = 1) -> dict[str, Any]:
    """generate() into a claimed folder (new, empty, or an earlier sample's; with `overwrite` beside files that
    are none of a sample's), then mark it complete."""
    with claim_output_dir(root, command=COMMAND, patterns=OWN_FILES, legacy=(COMPLETE,), overwrite=overwrite,
                          flag=flag):
        summary = generate(root, seed=seed, scale=scale)
        _write(root, COMPLETE, b"")
    return summary


def _write_images(root: str, images: dict[str, tuple[Obj, int]]) -> None:
    rendered: dict[tuple[Obj, int], bytes] = {}
    for path in sorted(images):
        key = images[path]
        if key not in rendered:
            rendered[key] = render(*key)
        _write(root, path, rendered[key])


def generate(root: str, seed: int = 0, scale: int = 1,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the sample under root (any FileSystems path); return {"files": {rel: lines}, "images": n, ...}."""
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be in 1..{MAX_SCALE} (qids must stay below {layout.QID_STRIDE})")
    b = _Builder(seed)
    files: dict[str, int] = {}
    by_did = {c["did"]: c for u in b.universes.values() for c in u.values()}

    def emit_rows(rel: str, rows: list[dict], kind: str = "jsonl") -> None:
        _write(root, rel, _jsonl(rows) if kind == "jsonl" else _qrels(rows))
        files[rel] = sum(len(r["pos_cand_list"]) for r in rows) if kind == "qrels" else len(rows)
        if progress:
            progress(rel)

    def referenced(queries: Iterable[dict]) -> set[str]:
        return {d for q in queries for d in (*q["pos_cand_list"], *q["neg_cand_list"])}

    train_refs: set[str] = set()  # not the rows: scale may reach millions of queries
    for dataset, tasks in TRAIN_TASKS.items():
        rng = random.Random(f"{seed}:train:{dataset}")
        d = layout.DATASET_IDS[dataset]
        n = TRAIN_QUERIES_PER_DATASET * scale
        rows = [b.query(dataset, tasks[i % len(tasks)], f"{d}:{QID_START['train'] + i}", rng, True) for i in range(n)]
        emit_rows(layout.query_file("train", dataset), rows)
        emit_rows(layout.qrels_file("train", dataset), rows, "qrels")
        train_refs |= referenced(rows)
    emit_rows(layout.UNION_TRAIN_POOL, _sorted_pool(by_did[d] for d in train_refs))

    local: list[dict] = []
    for split, count in (("val", VAL_QUERIES_PER_PAIR), ("test", TEST_QUERIES_PER_PAIR)):
        split_all: list[dict] = []
        next_n = {ds: QID_START[split] for ds in TRAIN_TASKS}
        for dataset, task in layout.TEST_PAIRS:
            rng = random.Random(f"{seed}:{split}:{dataset}:{task}")
            d = layout.DATASET_IDS[dataset]
            rows = [b.query(dataset, task, f"{d}:{next_n[dataset] + i}", rng, False) for i in range(count)]
            next_n[dataset] += count
            emit_rows(layout.query_file(split, dataset, task), rows)
            emit_rows(layout.qrels_file(split, dataset, task), rows, "qrels")
            split_all += rows
            if split == "test":
                pool = _sorted_pool(b.universes[(dataset, task)].values())
                emit_rows(layout.local_pool_file(dataset, task), pool)
                local += pool
        if split == "val":
            emit_rows(layout.UNION_VAL_POOL, _sorted_pool(by_did[d] for d in referenced(split_all)))
    emit_rows(layout.UNION_TEST_POOL, _sorted_pool(local))

    _write(root, layout.INSTRUCTIONS, instructions_tsv().encode("utf-8"))
    files[layout.INSTRUCTIONS] = instructions_tsv().count("\n") - 1
    _write_images(root, b.images)
    return {"root": root, "seed": seed, "scale": scale, "files": files, "images": len(b.images),
            "queries": {s: sum(v for k, v in files.items() if k.startswith(f"query/{s}/")) for s in layout.SPLITS}}
