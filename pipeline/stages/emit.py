"""Write the outputs.

ToRows: accepted Example -> M-BEIR-CoT row dict (main), Reject (tag "rejects") for a query whose image cannot be
embedded (--embed_images: the file changed since the read check, or was never checked), so the run goes on and
the query is counted once, as rejected.
WriteShards: row dicts -> Parquet files under OUTPUT_DIR/<folder>/ (main output: one {path, rows, sha256, bytes}
per file). The shard count comes from the row count, a row's shard from a stable hash of its sort key, and
rows are sorted inside a shard, so identical input gives byte-identical files on any runner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import shards
from pipeline.mbeir.image_gate import ImageRejected
from pipeline.mbeir.records import Reject
from pipeline.rows import to_row

REJECTS = "rejects"


class _ToRow(beam.DoFn):
    def __init__(self, embed_images_root: str | None):
        self.root = embed_images_root

    def process(self, example):
        try:
            yield to_row(example, embed_images_root=self.root)
        except ImageRejected as err:
            q = example.query
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(err.reason, str(err), q.source_file, q.line_number, q.qid,
                                                           q.dataset, stage="emit"))


class ToRows(beam.PTransform):
    def __init__(self, embed_images_root: str | None):
        super().__init__()
        self.root = embed_images_root

    def expand(self, accepted):
        out = accepted | "Row" >> beam.ParDo(_ToRow(self.root)).with_outputs(REJECTS, main="rows")
        return out.rows, out[REJECTS]


def stable_shard(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % n


class _WriteShard(beam.DoFn):
    def __init__(self, output_dir: str, folder: str, split: str, schema_fn: Callable, sort_key: Callable):
        self.output_dir, self.folder, self.split = output_dir, folder, split
        self.schema_fn, self.sort_key = schema_fn, sort_key

    def process(self, keyed, n: int):
        index, rows = keyed
        rows = sorted(rows, key=self.sort_key)
        path = FileSystems.join(self.output_dir, shards.shard_name(index, n, split=self.split, folder=self.folder))
        yield shards.write_shard(rows, path, self.schema_fn())


class WriteShards(beam.PTransform):
    def __init__(self, output_dir: str, folder: str, split: str, schema_fn: Callable[[], Any],
                 sort_key: Callable[[dict], Any], num_shards: int = 0, target_rows: int = shards.TARGET_ROWS):
        super().__init__()
        self.output_dir, self.folder, self.split = output_dir, folder, split
        self.schema_fn, self.sort_key = schema_fn, sort_key
        self.fixed, self.target_rows = num_shards, target_rows

    def expand(self, rows):
        fixed, target = self.fixed, self.target_rows
        count = rows | "Count" >> beam.combiners.Count.Globally()
        n = count | "ShardCount" >> beam.Map(lambda c: fixed or shards.num_shards(c, target))
        sort_key = self.sort_key
        return (rows
                | "AssignShard" >> beam.Map(lambda r, n: (stable_shard(str(sort_key(r)), n), r),
                                            n=beam.pvalue.AsSingleton(n))
                | "GroupShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.output_dir, self.folder, self.split, self.schema_fn,
                                                         sort_key), n=beam.pvalue.AsSingleton(n)))
