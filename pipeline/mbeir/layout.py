"""Facts about the M-BEIR release layout (shared MBEIR.md): ids, names, tasks, file paths."""

from __future__ import annotations

import re

# Dataset file stem -> M-BEIR dataset id.
DATASET_IDS: dict[str, int] = {
    "visualnews": 0, "fashion200k": 1, "webqa": 2, "edis": 3, "nights": 4,
    "oven": 5, "infoseek": 6, "fashioniq": 7, "cirr": 8, "mscoco": 9,
}
DATASET_NAMES: dict[int, str] = {v: k for k, v in DATASET_IDS.items()}
# Display names as they appear in query_instructions.tsv and the paper.
DISPLAY_NAMES: dict[str, str] = {
    "visualnews": "VisualNews", "fashion200k": "Fashion200K", "webqa": "WebQA", "edis": "EDIS",
    "nights": "NIGHTS", "oven": "OVEN", "infoseek": "InfoSeek", "fashioniq": "FashionIQ", "cirr": "CIRR",
    "mscoco": "MSCOCO",
}
# Task id -> (query modality, candidate modality). There is no task 5.
TASKS: dict[int, tuple[str, str]] = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"), 3: ("image", "text"),
    4: ("image", "image"), 6: ("image,text", "text"), 7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
MODALITIES = ("text", "image", "image,text")
# The tasks each dataset's train file mixes (MBEIR.md; UniIR's M-BEIR construction).
DATASET_TASKS: dict[str, tuple[int, ...]] = {
    "visualnews": (0, 3), "fashion200k": (0, 3), "webqa": (1, 2), "edis": (2,), "nights": (4,),
    "oven": (6, 8), "infoseek": (6, 8), "fashioniq": (7,), "cirr": (7,), "mscoco": (0, 3),
}
SPLITS = ("train", "val", "test")

# The 16 evaluation pairs (dataset, task id); Recall@10 is the headline for the three Fashion pairs.
TEST_PAIRS: tuple[tuple[str, int], ...] = (
    ("visualnews", 0), ("mscoco", 0), ("fashion200k", 0), ("webqa", 1), ("edis", 2), ("webqa", 2),
    ("visualnews", 3), ("mscoco", 3), ("fashion200k", 3), ("nights", 4), ("oven", 6), ("infoseek", 6),
    ("fashioniq", 7), ("cirr", 7), ("oven", 8), ("infoseek", 8),
)
RECALL_AT_10_DATASETS = frozenset({"fashion200k", "fashioniq"})

# Id hashing that UniIR relies on: qid "d:n" -> d*500_000+n, did "d:n" -> d*10_000_000+n.
QID_STRIDE = 500_000
DID_STRIDE = 10_000_000
# A qid or did, whole: "{dataset id}:{n}" in plain decimal. No sign, space, newline or control character, and no
# leading zero ("9:06" would be a second spelling of UniIR's integer for "9:6"); 9 digits at most, so int() on
# either part is exact and cheap. The schemas' id patterns say the same (tests/pipeline/mbeir/test_ids.py).
ID_PATTERN = r"(?:0|[1-9][0-9]{0,8}):(?:0|[1-9][0-9]{0,8})"
_ID = re.compile(ID_PATTERN)

UNION_TRAIN_POOL = "cand_pool/global/mbeir_union_train_cand_pool.jsonl"
UNION_VAL_POOL = "cand_pool/global/mbeir_union_val_cand_pool.jsonl"
UNION_TEST_POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
INSTRUCTIONS = "instructions/query_instructions.tsv"
IMAGE_DIR = "mbeir_images"
IMAGE_ARCHIVE_PATTERN = "mbeir_images.tar.gz.part-*"  # about 169 GB in four parts (MBEIR.md)


def pair_name(dataset: str, task_id: int) -> str:
    return f"{dataset}_task{task_id}"


def query_file(split: str, dataset: str, task_id: int | None = None) -> str:
    if split == "train":
        return f"query/train/mbeir_{dataset}_train.jsonl"
    return f"query/{split}/mbeir_{dataset}_task{task_id}_{split}.jsonl"


def local_pool_file(dataset: str, task_id: int) -> str:
    if dataset == "mscoco":
        return f"cand_pool/local/mbeir_mscoco_task{task_id}_test_cand_pool.jsonl"
    return f"cand_pool/local/mbeir_{dataset}_task{task_id}_cand_pool.jsonl"


def qrels_file(split: str, dataset: str, task_id: int | None = None) -> str:
    if split == "train":
        return f"qrels/train/mbeir_{dataset}_train_qrels.txt"
    return f"qrels/{split}/mbeir_{dataset}_task{task_id}_{split}_qrels.txt"


def union_pool_file(split: str) -> str:
    return {"train": UNION_TRAIN_POOL, "val": UNION_VAL_POOL, "test": UNION_TEST_POOL}[split]


def is_mbeir_id(value: object) -> bool:
    """True when `value` is a string that is exactly an M-BEIR qid/did (ID_PATTERN, matched whole)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def dataset_of_id(qid_or_did: str) -> int:
    """The dataset id prefix of "d:n"."""
    return int(qid_or_did.split(":", 1)[0])


def qid_to_int(qid: str) -> int:
    d, n = qid.split(":", 1)
    return int(d) * QID_STRIDE + int(n)


def did_to_int(did: str) -> int:
    d, n = did.split(":", 1)
    return int(d) * DID_STRIDE + int(n)
