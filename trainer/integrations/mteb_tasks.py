"""The M-BEIR evaluation pairs as mteb retrieval tasks, read from a local M-BEIR tree (no Hub download).

MIEB holds the 16 pairs as Hub datasets (mteb/mbeir_<pair>); `LocalMbeirRetrieval` builds the same retrieval task
from the local query, pool and qrels files with the trainer's readers (trainer/benchmark/evalset.py), so its
queries, pool and positives are the ones `python -m trainer.evaluate` scores:
- a query's text is UniIR's: the fixed-seed instruction + its text (MBEIR.md "Instructions");
- the corpus is the pair's local pool, less candidates with neither text nor an image file (the trainer drops them);
- images stay paths (relative to the root, found at build time) until the encoder reads them, so a pool of
  500,000 images is never held decoded; a missing image is counted, never fatal.
Task names are `MBEIRLocal-<pair>`; the task's dataset path is the M-BEIR root the encoder reads images from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

from common.errors import ConfigError
from pipeline.mbeir import images, layout, reasons
from pipeline.mbeir.instructions import query_text
from trainer.benchmark.evalset import (
    EvalPair,
    ReadStats,
    check_root,
    eval_pairs,
    iter_candidates,
    read_instructions,
    read_pair_qrels,
    read_queries,
)
from trainer.benchmark.retrieval import file_fingerprint

LOCAL_PREFIX = "MBEIRLocal-"
# MIEB's task for each M-BEIR pair (mteb/tasks/retrieval/eng/*.py; their datasets are mteb/mbeir_<pair>).
MIEB_TASKS: dict[str, str] = {
    "VisualNewsT2IRetrieval": "visualnews_task0", "MSCOCOT2IRetrieval": "mscoco_task0",
    "Fashion200kT2IRetrieval": "fashion200k_task0", "WebQAT2TRetrieval": "webqa_task1",
    "EDIST2ITRetrieval": "edis_task2", "WebQAT2ITRetrieval": "webqa_task2",
    "VisualNewsI2TRetrieval": "visualnews_task3", "MSCOCOI2TRetrieval": "mscoco_task3",
    "Fashion200kI2TRetrieval": "fashion200k_task3", "NIGHTSI2IRetrieval": "nights_task4",
    "OVENIT2TRetrieval": "oven_task6", "InfoSeekIT2TRetrieval": "infoseek_task6",
    "FashionIQIT2IRetrieval": "fashioniq_task7", "CIRRIT2IRetrieval": "cirr_task7",
    "OVENIT2ITRetrieval": "oven_task8", "InfoSeekIT2ITRetrieval": "infoseek_task8",
}
PAIR_TO_MIEB = {pair: name for name, pair in MIEB_TASKS.items()}
_LETTERS = {"text": "t", "image": "i", "image,text": "it"}
_FEATURES = {"id": Value("string"), "text": Value("string"), "image": Value("string"), "modality": Value("string")}


def category(task_id: int) -> str:
    """mteb's category of an M-BEIR task, e.g. 7 ((image,text) -> image) is "it2i"."""
    query, cand = layout.TASKS[task_id]
    return f"{_LETTERS[query]}2{_LETTERS[cand]}"


CATEGORY_TASK_IDS = {category(t): t for t in layout.TASKS}


def pair_of_task(metadata: TaskMetadata) -> str | None:
    """The M-BEIR pair a task evaluates: a local task's, a MIEB task's (by name or its mteb/mbeir_<pair> dataset),
    or None for any other task."""
    if metadata.name.startswith(LOCAL_PREFIX):
        return metadata.name[len(LOCAL_PREFIX):]
    if metadata.name in MIEB_TASKS:
        return MIEB_TASKS[metadata.name]
    path = str(metadata.dataset.get("path", ""))
    return path.removeprefix("mteb/mbeir_") if path.startswith("mteb/mbeir_") else None


def local_root(metadata: TaskMetadata) -> str | None:
    """The M-BEIR root a local task reads its images from; None for other tasks."""
    return str(metadata.dataset["path"]) if metadata.name.startswith(LOCAL_PREFIX) else None


def resolve_pairs(names: Sequence[str], split: str = "test") -> list[EvalPair]:
    """EvalPairs for names that are pair names (cirr_task7) or MIEB task names (CIRRIT2IRetrieval)."""
    pairs = [MIEB_TASKS.get(n, n) for n in names]
    known = {p.name for p in eval_pairs(None, split)}
    unknown = [n for n, p in zip(names, pairs, strict=True) if p not in known]
    if unknown:
        raise ConfigError(f"--tasks: {', '.join(unknown)} is not an M-BEIR pair; with --mbeir_root give pair names "
                          f"({', '.join(sorted(known)[:3])}, ...) or MIEB's names for them "
                          f"({', '.join(sorted(MIEB_TASKS)[:3])}, ...)")
    return eval_pairs(pairs, split)


def _metadata(root: Path, pair: EvalPair, revision: str) -> TaskMetadata:
    query_mod, cand_mod = layout.TASKS[pair.task_id]
    mieb = PAIR_TO_MIEB.get(pair.name)
    return TaskMetadata(
        name=f"{LOCAL_PREFIX}{pair.name}",
        description=f"M-BEIR {layout.DISPLAY_NAMES[pair.dataset]} task {pair.task_id} ({query_mod} -> {cand_mod}), "
                    f"{pair.split} split, local pool, read from a local M-BEIR tree",
        dataset={"path": str(root), "revision": revision},
        # No category: mteb would drop the text of an image query (category i2t), and UniIR's image queries carry
        # their instruction as text; both columns reach the encoder, which reads what each item holds.
        type="Any2AnyRetrieval", category=None,
        modalities=["text", "image"] if "image" in f"{query_mod},{cand_mod}" else ["text"],
        eval_splits=[pair.split], eval_langs=["eng-Latn"], main_score="ndcg_at_10", prompt=None,
        license="not specified", annotations_creators="derived", sample_creation="found", bibtex_citation="",
        adapted_from=[mieb] if mieb else None, reference="https://huggingface.co/datasets/TIGER-Lab/M-BEIR")


class LocalMbeirRetrieval(AbsTaskRetrieval):
    """One M-BEIR pair from a local tree; build it with `for_pair`. `instruction_seed` fixes each query's
    instruction as trainer.evaluate's --seed does."""

    metadata: TaskMetadata

    @classmethod
    def for_pair(cls, root: str | Path, pair: EvalPair, instruction_seed: int = 0) -> LocalMbeirRetrieval:
        """An instance of a subclass that holds the pair's metadata as a class attribute, where mteb expects it
        (AbsTask.unload_data drops instance metadata). The revision fingerprints the pair's three files and the
        seed, so mteb reuses a result only for the same data."""
        root = Path(root)
        fingerprint = "-".join(file_fingerprint(root / f)[:8] for f in (pair.query_file, pair.pool_file,
                                                                         pair.qrels_file))
        meta = _metadata(root, pair, f"local-{fingerprint}-seed{instruction_seed}")
        task_class = type(f"{cls.__name__}_{pair.name}", (cls,), {"metadata": meta})
        return task_class(root, pair, instruction_seed)

    def __init__(self, root: str | Path, pair: EvalPair, instruction_seed: int = 0, **kwargs: Any):
        self.root, self.pair, self.instruction_seed = Path(root), pair, instruction_seed
        self.read_stats = ReadStats()
        super().__init__(**kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        qrels = read_pair_qrels(self.root, self.pair).positives(self.pair.name)
        self.dataset = {"default": {self.pair.split: {
            "corpus": self._corpus(), "queries": self._queries(),
            "relevant_docs": {qid: dict.fromkeys(sorted(dids), 1) for qid, dids in qrels.items()},
            "top_ranked": None}}}
        self.data_loaded = True

    def _image(self, rel: str | None) -> str | None:
        """The relative path when the file is there and stays inside the root; else None, counted."""
        if not rel:
            return None
        path = images.local_image_path(str(self.root), rel)
        if path is None:
            self.read_stats.rejected[reasons.UNSAFE_IMAGE_PATH] += 1
        elif os.path.isfile(path):
            return rel
        else:
            self.read_stats.missing_images += 1
        return None

    def _queries(self) -> Dataset:
        instructions = read_instructions(self.root)
        rows: dict[str, dict] = {}
        for r in read_queries(self.root, self.pair, self.read_stats):
            # The candidate modality of the instruction key is the task's, as trainer.evaluate reads it.
            prompt = instructions.choose(r.dataset_id, r.query_modality, layout.TASKS[r.task_id][1], r.qid,
                                         self.instruction_seed)
            rows.setdefault(r.qid, {"id": r.qid, "text": query_text(prompt, r.query_txt),
                                    "image": self._image(r.query_img_path), "modality": r.query_modality})
        return _dataset(list(rows.values()))

    def _corpus(self) -> Dataset:
        rows = []
        for rec in iter_candidates(self.root, self.pair.pool_file, self.read_stats):
            text = rec.txt if rec.txt and rec.txt.strip() else ""
            image = self._image(rec.img_path)
            if not text and image is None:
                self.read_stats.empty_inputs += 1
                continue
            rows.append({"id": rec.did, "text": text, "image": image, "modality": rec.modality})
        return _dataset(rows)


def _dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({k: [r[k] for r in rows] for k in _FEATURES}, features=Features(_FEATURES))


def local_tasks(root: str | Path, names: Sequence[str], split: str = "test",
                instruction_seed: int = 0) -> list[LocalMbeirRetrieval]:
    """The local tasks for pair or MIEB names; ConfigError for an unknown name or a file the root lacks."""
    pairs = resolve_pairs(names, split)
    try:
        check_root(root, pairs)
    except ConfigError as e:
        raise ConfigError(str(e).replace("choose other --pairs", "choose other --tasks")) from None
    return [LocalMbeirRetrieval.for_pair(root, p, instruction_seed) for p in pairs]
