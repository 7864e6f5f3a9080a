"""Join each query to its positive candidate(s) and its instruction.

in: QueryRecord, CandidateRecord   out: Example (main), Reject (tag "rejects"), pool Reject (tag "pool_rejects")
The pool is never loaded into one process: it streams past a filter that keeps only the dids some query
points to, those candidates and the queries' positive references meet in a CoGroupByKey on did, then the found
positives meet their query in a second CoGroupByKey on the query key.
One candidate per did: when pool lines repeat a did, the first by (file name, line number) is used, so reruns
are byte-identical; a later line with different content is a pool reject (duplicate_did, naming both lines), an
exact copy (a local pool and the union pool it is part of) is not. Only dids some query needs are checked.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.mbeir import images, reasons
from pipeline.mbeir.instructions import Instructions
from pipeline.mbeir.layout import INSTRUCTIONS
from pipeline.mbeir.records import CandidateRecord, Example, QueryRecord, Reject

REJECTS, POOL_REJECTS = "rejects", "pool_rejects"


class _ResolveCandidate(beam.DoFn):
    """(did, {cands, refs}) -> (query key, (did, candidate or None, reason or None)) per referring query."""

    def __init__(self, root: str, image_check: str):
        self.root, self.image_check = root, image_check

    def process(self, keyed):
        did, grouped = keyed
        refs = list(grouped["refs"])
        if not refs:
            return
        cands = sorted(grouped["cands"], key=lambda c: (c.source_file, c.line_number))
        cand = cands[0] if cands else None
        for later in cands[1:]:
            if later != cand:
                yield beam.pvalue.TaggedOutput(POOL_REJECTS, Reject(
                    reasons.DUPLICATE_DID, f"did {did} already on {cand.source_file}:{cand.line_number} with "
                    "different content; that first line is used", later.source_file, later.line_number,
                    stage="pool", text=(later.txt or later.img_path or "")[:500]))
        reason = None
        if cand is None:
            reason = reasons.POSITIVE_NOT_FOUND
        elif cand.img_path:  # check "none" still refuses a path out of the root
            reason, facts = images.inspect_image(self.root, cand.img_path, mode=self.image_check)
            if facts is not None:
                cand = dataclasses.replace(cand, img=facts)
        for query_key in refs:
            yield query_key, (did, None if reason else cand, reason)


class _BuildExample(beam.DoFn):
    def __init__(self, root: str, seed: int):
        self.root, self.seed = root, seed
        self.instructions: Instructions | None = None

    def setup(self):
        with FileSystems.open(FileSystems.join(self.root, INSTRUCTIONS)) as f:
            self.instructions = Instructions.parse(f.read().decode("utf-8-sig"))

    def process(self, keyed):
        _, grouped = keyed
        queries = list(grouped["query"])
        if not queries:
            return
        q: QueryRecord = queries[0]
        found: dict[str, CandidateRecord] = {}
        problems: dict[str, str] = {}
        for did, cand, reason in grouped["positives"]:
            if cand is not None:
                found[did] = cand
            else:
                problems[did] = reason
        positives = [found[d] for d in dict.fromkeys(q.pos_cand_list) if d in found]
        if not positives:
            # Name the reason of the first positive: missing from every pool, or its image is unusable.
            first = next(iter(dict.fromkeys(q.pos_cand_list)))
            reason = problems.get(first, reasons.POSITIVE_NOT_FOUND)
            yield beam.pvalue.TaggedOutput(REJECTS, _reject(q, reason, f"no usable positive: {problems}"))
            return
        cand_modality = positives[0].modality
        prompt = self.instructions.choose(q.dataset_id, q.query_modality, cand_modality, q.qid, self.seed)
        if prompt is None:
            yield beam.pvalue.TaggedOutput(REJECTS, _reject(
                q, reasons.UNKNOWN_INSTRUCTION, f"no instruction for '{q.dataset_id}, {q.query_modality}, {cand_modality}'"))
            return
        yield Example(query=q, positives=positives, instruction=prompt, cand_modality=cand_modality)


def _reject(q: QueryRecord, reason: str, detail: str) -> Reject:
    return Reject(reason, detail, q.source_file, q.line_number, q.qid, q.dataset, stage="join")


class JoinPositives(beam.PTransform):
    """(queries, pool) -> (examples, rejects, pool rejects)."""

    def __init__(self, root: str, image_check: str, instruction_seed: int):
        super().__init__()
        self.root, self.image_check, self.seed = root, image_check, instruction_seed

    def expand(self, inputs):
        queries, pool = inputs
        refs = queries | "PositiveRefs" >> beam.FlatMap(
            lambda q: [(did, q.key) for did in dict.fromkeys(q.pos_cand_list)])
        # Only candidates some query points to enter the shuffle, so memory follows the queries, not the pool
        # (the global test pool is 5.6M lines).
        needed = (refs
                  | "NeededDid" >> beam.Map(lambda ref: ref[0])
                  | "DistinctDid" >> beam.Distinct()
                  | "AsEntry" >> beam.Map(lambda did: (did, True)))
        cands = (pool
                 | "KeepNeeded" >> beam.Filter(lambda c, wanted: c.did in wanted, wanted=beam.pvalue.AsDict(needed))
                 | "KeyByDid" >> beam.Map(lambda c: (c.did, c)))
        resolved = ({"cands": cands, "refs": refs}
                    | "JoinByDid" >> beam.CoGroupByKey()
                    | "ResolvePositive" >> beam.ParDo(_ResolveCandidate(self.root, self.image_check))
                    .with_outputs(POOL_REJECTS, main="positives"))
        positives = resolved.positives
        keyed_queries = queries | "KeyByQuery" >> beam.Map(lambda q: (q.key, q))
        out = ({"query": keyed_queries, "positives": positives}
               | "JoinByQuery" >> beam.CoGroupByKey()
               | "BuildExample" >> beam.ParDo(_BuildExample(self.root, self.seed)).with_outputs(REJECTS, main="examples"))
        return out.examples, out[REJECTS], resolved[POOL_REJECTS]
