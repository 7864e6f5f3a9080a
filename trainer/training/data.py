"""M-BEIR-CoT Parquet shards -> task-homogeneous training batches.

Mixing rule (documented, seeded): per epoch, each task family (dataset, task_id) is shuffled and cut into
global batches (one optimizer step each); the batches of all families are then shuffled together. Every row appears once per epoch and each
family's share of steps is proportional to its size. The sampler's position is saveable for exact resume.
"""

from __future__ import annotations

import posixpath
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from common.errors import ConfigError
from pipeline.mbeir import image_gate, images
from trainer.modeling.config_check import first_line
from trainer.modeling.interface import CandidateInput, QueryInput
from trainer.modeling.student import format_query_text
from trainer.training.row_types import (
    IMAGE_COLUMNS,
    REQUIRED_COLUMNS,
    ROW_COLUMNS,
    row_problem,
    schema_problem,
)


def list_shards(data: str) -> list[str]:
    """Parquet files under DATA: DATA/data/*.parquet when present, else DATA/*.parquet, or a glob / file.
    ConfigError (naming --data) when DATA does not exist or holds no Parquet file."""
    fs, _, _ = fsspec.get_fs_token_paths(data)
    protocol = data.split("://", 1)[0] + "://" if "://" in data else ""
    if data.endswith(".parquet") or any(ch in data for ch in "*?["):
        paths = fs.glob(data)
    else:
        root = data.rstrip("/")
        if not fs.exists(root):
            raise ConfigError(f"--data {data} does not exist: give an M-BEIR-CoT folder (DATA/data/*.parquet), "
                              "a glob or a Parquet file")
        paths = fs.glob(root + "/data/*.parquet") or fs.glob(root + "/*.parquet")
    paths = sorted(protocol + p if protocol and not p.startswith(protocol) else p for p in paths)
    if not paths:
        raise ConfigError(f"--data {data}: no Parquet shards there (looked for data/*.parquet and *.parquet); "
                          "build the dataset first (make dataset) or point --data at its folder")
    return paths


@dataclass
class Example:
    query: QueryInput
    target: str
    candidate: CandidateInput
    route: str
    row_id: str
    cand_key: str = ""  # the positive's identity (did): equal keys in one batch are not negatives


class ShardIndex:
    """Maps a global row index to (shard, row group, offset) and reads rows by row group with an LRU cache.

    A shard that cannot be read (truncated, not Parquet, unreadable), lacks REQUIRED_COLUMNS or has a column of
    another type than the row contract's (trainer/training/row_types.py) is skipped with a line on stderr and
    counted in `skipped`, as a bad row is; ConfigError only when no usable shard is left. A row without a dataset
    or task_id is left out of the index (counted); a row group that fails to read later drops its rows (counted as
    unreadable_row_group)."""

    def __init__(self, paths: list[str], cache_groups: int = 16):
        self.skipped: Counter[str] = Counter()
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()
        self._cache_groups = cache_groups
        self._problems: dict[str, str] = {}  # skipped shard -> what is wrong with it
        locs, fams, usable, names = [], [], [], []
        for path in paths:
            opened = self._open(path)
            if opened is None:
                continue
            f = len(usable)
            self._files[f], groups = opened
            usable.append(path)
            names.append(set(self._files[f].schema_arrow.names))
            for g, t in enumerate(groups):
                self._add_group(f, g, t, locs, fams)
        if not usable:
            first, what = next(iter(self._problems.items()))
            raise ConfigError(f"--data: none of the {len(paths)} Parquet shard(s) is usable ({self._summary()}); "
                              f"{first} {what}: rebuild or re-copy them (an M-BEIR-CoT row has "
                              f"{', '.join(ROW_COLUMNS)})")
        self.paths = usable
        self.locations = np.concatenate(locs) if locs else np.zeros((0, 3), dtype=np.int64)
        self.families = np.array(fams)
        self.columns = [c for c in ROW_COLUMNS + IMAGE_COLUMNS if all(c in shard for shard in names)]

    def _open(self, path: str) -> tuple[pq.ParquetFile, list[pa.Table]] | None:
        """(the shard, its row groups' dataset and task_id columns), or None when it is skipped (counted)."""
        try:
            pf = pq.ParquetFile(fsspec.open(path, "rb").open())
            problem = _shard_problem(pf.schema_arrow)
            if problem is None:
                return pf, [pf.read_row_group(g, columns=["dataset", "task_id"]) for g in range(pf.num_row_groups)]
        except (OSError, pa.ArrowException) as e:
            problem = "unreadable_shard", f"is not a readable Parquet file ({first_line(e)})"
        self._skip(path, *problem)
        return None

    def _add_group(self, f: int, g: int, table: pa.Table, locs: list[np.ndarray], fams: list[str]) -> None:
        """Index a row group's rows under their task family; a row with no dataset or task_id has no family and
        is skipped here (counted as null_dataset / null_task_id)."""
        keys = list(zip(table.column("dataset").to_pylist(), table.column("task_id").to_pylist(), strict=True))
        keep = []
        for i, (dataset, task_id) in enumerate(keys):
            if dataset is None or task_id is None:
                self.skipped["null_dataset" if dataset is None else "null_task_id"] += 1
            else:
                keep.append(i)
        n = len(keep)
        locs.append(np.stack([np.full(n, f), np.full(n, g), np.array(keep, dtype=np.int64)], axis=1))
        fams += [f"{keys[i][0]}/{keys[i][1]}" for i in keep]

    def _skip(self, path: str, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        self._problems[path] = what
        print(f"skipping shard {path}: it {what}", file=sys.stderr)

    def _summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))

    def __len__(self) -> int:
        return len(self.locations)

    def _file(self, f: int) -> pq.ParquetFile:
        if f not in self._files:
            self._files[f] = pq.ParquetFile(fsspec.open(self.paths[f], "rb").open())
        return self._files[f]

    def _group(self, f: int, g: int) -> list[dict] | None:
        key = (f, g)
        if key not in self._cache:
            try:
                self._cache[key] = self._file(f).read_row_group(g, columns=self.columns).to_pylist()
            except (OSError, pa.ArrowException):
                self._cache[key] = None
            if len(self._cache) > self._cache_groups:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def rows(self, indices: list[int]) -> list[dict]:
        """The rows at these global indices; rows of a row group that fails to read are left out (counted)."""
        out = []
        for f, g, r in self.locations[indices]:
            group = self._group(int(f), int(g))
            if group is None:
                self.skipped["unreadable_row_group"] += 1
            else:
                out.append(group[int(r)])
        return out

    def family_indices(self) -> dict[str, np.ndarray]:
        return {fam: np.flatnonzero(self.families == fam) for fam in sorted(set(self.families.tolist()))}


def _shard_problem(schema: pa.Schema) -> tuple[str, str] | None:
    """(reason, what) when a shard lacks a column the trainer needs or has one of another type; else None."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        return "shard_missing_columns", f"lacks the columns {', '.join(missing)}"
    wrong = schema_problem(schema)
    return ("shard_wrong_type", wrong) if wrong else None


class TaskBatchSampler:
    """Yields lists of global row indices, each from one task family; state_dict() gives an exact position."""

    def __init__(self, families: dict[str, np.ndarray], batch_size: int, seed: int = 0, min_batch: int = 2):
        self.families = families
        self.batch_size = batch_size
        self.seed = seed
        self.min_batch = min_batch  # a 1-row batch has no in-batch negative: drop such leftovers
        self.epoch = 0
        self.cursor = 0

    def plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for fam in sorted(self.families):
            idx = rng.permutation(self.families[fam])
            batches += [idx[s:s + self.batch_size].tolist() for s in range(0, len(idx), self.batch_size)
                        if len(idx[s:s + self.batch_size]) >= self.min_batch]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __len__(self) -> int:
        return len(self.plan(0))

    def __iter__(self):
        """Endless: walks epochs from the saved position."""
        while True:
            plan = self.plan(self.epoch)
            while self.cursor < len(plan):
                self.cursor += 1
                yield plan[self.cursor - 1]
            self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["batch_size"] != self.batch_size:
            raise ValueError(f"sampler state {state} does not match seed={self.seed} global_batch={self.batch_size}")
        self.epoch, self.cursor = state["epoch"], state["cursor"]


class ImageLoader:
    """Opens images from embedded {bytes, path} structs or from paths relative to the M-BEIR root."""

    def __init__(self, mbeir_root: str | None):
        self.root = mbeir_root

    def __call__(self, struct: dict | None, rel_path: str | None) -> Image.Image:
        if struct and struct.get("bytes"):
            data = struct["bytes"]
        else:
            if not rel_path:
                raise FileNotFoundError("no image path")
            if self.root is None:
                raise FileNotFoundError(f"image {rel_path!r} needs --mbeir_root")
            data = image_gate.read_path(images.image_path(self.root, rel_path, join=posixpath.join),
                                        open_remote=lambda path: fsspec.open(path, "rb"), where=rel_path)
        return image_gate.decode(data, where=rel_path or "embedded image").convert("RGB")


class RowDecoder:
    """Row dict -> Example, or None with the skip reason counted (bad rows are never fatal)."""

    def __init__(self, images: ImageLoader):
        self.images = images
        self.skipped: Counter[str] = Counter()

    def __call__(self, row: dict[str, Any]) -> Example | None:
        problem = row_problem(row)
        if problem:
            self.skipped[problem] += 1
            return None
        target = row["target"].strip()
        if not target:
            self.skipped["empty_target"] += 1
            return None
        try:
            q_img = c_img = None
            if row.get("query_img_path") or (row.get("query_image") or {}).get("bytes"):
                q_img = self.images(row.get("query_image"), row.get("query_img_path"))
            if row.get("pos_img_path") or (row.get("pos_image") or {}).get("bytes"):
                c_img = self.images(row.get("pos_image"), row.get("pos_img_path"))
        except (OSError, ValueError) as e:
            self.skipped[image_gate.reason_of(e)] += 1
            return None
        text = format_query_text(row.get("instruction") or "", row.get("query_txt"))
        if q_img is None and not text:
            self.skipped["empty_query"] += 1
            return None
        if c_img is None and not row.get("pos_txt"):
            self.skipped["empty_candidate"] += 1
            return None
        return Example(QueryInput(text, q_img, row["dataset"], row["task_id"]), target,
                       CandidateInput(row.get("pos_txt"), c_img, row.get("cand_modality") or "text"),
                       row.get("route") or "", row.get("id") or "",
                       row.get("pos_did") or f"{row.get('pos_img_path')}|{row.get('pos_txt')}")


def rank_share(rows: list, rank: int, world_size: int) -> list:
    """Rank r's contiguous part of a global batch (sizes differ by at most one), so the ranks' parts
    concatenated in rank order are the global batch in its own order."""
    n = len(rows)
    return rows[rank * n // world_size:(rank + 1) * n // world_size]


class TrainData:
    """Parquet shards + sampler + decoder. Each item is this rank's share of one optimizer step's global batch
    (batch_size rows over all ranks, one task family): the rows of a step depend only on the seed and
    batch_size, never on the world size or the micro-batch (trainer/training/gradcache.py splits the share)."""

    def __init__(self, data: str, batch_size: int, seed: int = 0, mbeir_root: str | None = None,
                 rank: int = 0, world_size: int = 1):
        self.index = ShardIndex(list_shards(data))
        self.sampler = TaskBatchSampler(self.index.family_indices(), batch_size, seed)
        self.decode = RowDecoder(ImageLoader(mbeir_root))
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.decode.skipped = self.index.skipped  # one tally for the train log: shards, row groups and rows
        if len(self.sampler) == 0:
            raise ConfigError(f"--data {data}: the usable shards hold {len(self.index)} row(s) and no task family "
                              "with 2 or more, so there is no batch to train on")

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for global_batch in self.sampler:
            mine = rank_share(global_batch, self.rank, self.world_size)
            yield [ex for ex in map(self.decode, self.index.rows(mine)) if ex is not None]
