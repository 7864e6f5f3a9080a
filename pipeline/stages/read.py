"""Read M-BEIR files.

ReadQueries: relative query-file paths -> QueryRecord (main), Reject (tag "rejects"), Event (tag "events").
ReadPool: relative pool-file paths -> CandidateRecord (main), Reject and Event likewise.
CheckQueryImages: Example -> Example whose query image passes the check (main), Reject (tag "rejects"); the
graph applies it after the join, so that on a local runner it shares the fused stage of the teacher calls.
Each file is read by one worker, streaming, with line numbers (rejects name them); a Reshuffle after the read
spreads the records over workers. Bytes are parsed by pipeline.mbeir (never ReadFromText, whose decoding would
kill the run on one invalid UTF-8 line), so a bad line becomes a reject with its reason code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import apache_beam as beam

from pipeline.mbeir import images, reasons
from pipeline.mbeir.lines import DEFAULT_MAX_LINE_BYTES
from pipeline.mbeir.read import dataset_of_file, iter_candidate_file, iter_query_file, select_queries
from pipeline.mbeir.records import Example, Reject
from pipeline.stats import Event

REJECTS, EVENTS = "rejects", "events"


class _ReadQueryFile(beam.DoFn):
    """With `lines` (a partition of a local run, pipeline.partition) only those line numbers of each file are
    read; they were selected with the same tasks and limit."""

    def __init__(self, root: str, tasks: list[int] | None, limit: int | None, lines: dict[str, Any] | None,
                 max_line_bytes: int):
        self.root, self.tasks, self.limit, self.lines = root, set(tasks) if tasks else None, limit, lines
        self.max_line_bytes = max_line_bytes

    def process(self, rel_path: str):
        dataset = dataset_of_file(rel_path)
        if self.lines is None:
            inputs = select_queries(self.root, rel_path, self.tasks, self.limit, self.max_line_bytes)
        else:
            wanted = set(self.lines.get(rel_path, ()))
            inputs = (iter_query_file(self.root, rel_path, dataset, lines=wanted, max_line_bytes=self.max_line_bytes)
                      if wanted else iter(()))
        taken = 0
        for parsed in inputs:
            taken += 1
            if isinstance(parsed, Reject):
                yield beam.pvalue.TaggedOutput(REJECTS, parsed)
            else:
                yield parsed
        yield beam.pvalue.TaggedOutput(EVENTS, Event("input", dataset, n=taken))  # one count per file, not per line


class _ReadPoolFile(beam.DoFn):
    def __init__(self, root: str, max_line_bytes: int):
        self.root, self.max_line_bytes = root, max_line_bytes

    def process(self, rel_path: str):
        lines = 0
        for parsed in iter_candidate_file(self.root, rel_path, self.max_line_bytes):
            lines += 1
            if isinstance(parsed, Reject):
                yield beam.pvalue.TaggedOutput(REJECTS, dataclasses.replace(parsed, stage="pool"))
                yield beam.pvalue.TaggedOutput(EVENTS, Event("pool_rejected", code=parsed.reason))
            else:
                yield parsed
        yield beam.pvalue.TaggedOutput(EVENTS, Event("pool_line", n=lines))


class ReadQueries(beam.PTransform):
    def __init__(self, root: str, files: list[str], tasks: list[int] | None = None, limit: int | None = None,
                 lines: dict[str, Any] | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        super().__init__()
        self.root, self.files, self.tasks, self.limit, self.lines = root, files, tasks, limit, lines
        self.max_line_bytes = max_line_bytes

    def expand(self, pbegin):
        out = (pbegin
               | "QueryFiles" >> beam.Create(self.files)
               | "ReadQueryLines" >> beam.ParDo(
                   _ReadQueryFile(self.root, self.tasks, self.limit, self.lines, self.max_line_bytes))
               .with_outputs(REJECTS, EVENTS, main="records"))
        records = out.records | "SpreadQueries" >> beam.Reshuffle()
        return records, out[REJECTS], out[EVENTS]


class ReadPool(beam.PTransform):
    def __init__(self, root: str, files: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        super().__init__()
        self.root, self.files, self.max_line_bytes = root, files, max_line_bytes

    def expand(self, pbegin):
        out = (pbegin
               | "PoolFiles" >> beam.Create(self.files)
               | "ReadPoolLines" >> beam.ParDo(_ReadPoolFile(self.root, self.max_line_bytes))
               .with_outputs(REJECTS, EVENTS, main="records"))
        # No reshuffle here: the join filters the stream down to the candidates queries need before any shuffle.
        return out.records, out[REJECTS], out[EVENTS]


class _FirstOfEachQid(beam.DoFn):
    def process(self, keyed):
        _, records = keyed
        first, *rest = sorted(records, key=lambda r: r.line_number)
        yield first
        for dup in rest:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(
                reasons.DUPLICATE_QID, f"qid {dup.qid} already on line {first.line_number}", dup.source_file,
                dup.line_number, dup.qid, dup.dataset))


class DropDuplicateQids(beam.PTransform):
    """QueryRecord -> QueryRecord (first line of each qid in a file), Reject for the later copies."""

    def expand(self, queries):
        out = (queries
               | "KeyByQid" >> beam.Map(lambda q: (q.key, q))
               | "GroupQid" >> beam.GroupByKey()
               | "FirstQid" >> beam.ParDo(_FirstOfEachQid()).with_outputs(REJECTS, main="records"))
        return out.records, out[REJECTS]


class _CheckQueryImage(beam.DoFn):
    def __init__(self, root: str, mode: str):
        self.root, self.mode = root, mode

    def process(self, example: Example):
        q = example.query
        if q.query_img_path:  # mode "none" still refuses a path out of the root
            reason, facts = images.inspect_image(self.root, q.query_img_path, mode=self.mode)
            if reason:
                yield beam.pvalue.TaggedOutput(REJECTS, Reject(
                    reason, f"query image {q.query_img_path}", q.source_file, q.line_number, q.qid, q.dataset))
                return
            if facts is not None:  # handed on: the request builder and the call need not decode it again
                example = dataclasses.replace(example, query=dataclasses.replace(q, query_img=facts))
        yield example


class CheckQueryImages(beam.PTransform):
    """Example -> Example whose query image (if any) passes the check, Reject otherwise. Whatever the mode,
    an image path leading out of the M-BEIR root (symlinks included) is rejected as unsafe_image_path. With
    mode "decode" the query carries what the check learnt (QueryRecord.query_img).

    It runs after the join, in the stage that routes the example and asks the teacher: on a local runner its
    decoding overlaps the first calls instead of delaying them."""

    def __init__(self, root: str, mode: str):
        super().__init__()
        self.root, self.mode = root, mode

    def expand(self, examples):
        out = examples | "CheckImage" >> beam.ParDo(_CheckQueryImage(self.root, self.mode)).with_outputs(
            REJECTS, main="examples")
        return out.examples, out[REJECTS]
