"""The quality gate (PAPER.md §2 Phase 3): rule filter, then the verifier call, then de-duplication.

ApplyRules: Example with extra["cot"] -> Example (main), Reject (tag "rejects"), Event (tag "events").
KeepVerified: Example with extra["verifier"] -> Example (main), Reject (tag "rejects").
DropDuplicateAnswers: Example -> Example (main; one per query and normalised answer), Reject (tag "rejects").
The rules themselves are pure functions in validators/.
"""

from __future__ import annotations

import json

import apache_beam as beam

from pipeline.mbeir.records import Example, Reject
from pipeline.rows import row_id
from pipeline.stats import Event
from validators.dedup import DUPLICATE_REASON, dedup_key, pick_kept, query_content_key
from validators.defaults import RuleConfig
from validators.rules import CotContext, apply_rules
from validators.verifier import verifier_keeps

REJECTS, EVENTS = "rejects", "events"


def _reject(example: Example, codes: list[str], stage: str, text: str = "") -> Reject:
    q = example.query
    return Reject(codes[0], ", ".join(codes), q.source_file, q.line_number, q.qid, q.dataset, stage=stage,
                  text=text[:2000])


def source_caption(example: Example) -> str | None:
    """CIR: the reference image's caption when the query's src_content carries one (M-BEIR often does not)."""
    raw = example.query.query_src_content
    if not raw:
        return None
    try:
        content = json.loads(raw)
    except ValueError:
        return None
    if isinstance(content, dict):
        for field in ("source_caption", "reference_caption", "caption"):
            if isinstance(content.get(field), str):
                return content[field]
    return None


def cot_context(example: Example) -> CotContext:
    target = " ".join(c.txt for c in example.positives if c.txt) or None
    q = example.query
    return CotContext.build(example.extra["cot"].content, dataset=q.dataset, task_id=q.task_id,
                            instruction=example.instruction, query_txt=q.query_txt, target_txt=target,
                            source_caption=source_caption(example))


class _Rules(beam.DoFn):
    def __init__(self, config: RuleConfig):
        self.config = config

    def process(self, example: Example):
        codes = apply_rules(cot_context(example), self.config)
        if not codes:
            yield example
            return
        for code in codes:
            yield beam.pvalue.TaggedOutput(EVENTS, Event("rule_hit", example.query.dataset, code))
        yield beam.pvalue.TaggedOutput(REJECTS, _reject(example, codes, "rules", example.extra["cot"].content))


class ApplyRules(beam.PTransform):
    def __init__(self, config: RuleConfig):
        super().__init__()
        self.config = config

    def expand(self, examples):
        out = examples | "Rules" >> beam.ParDo(_Rules(self.config)).with_outputs(REJECTS, EVENTS, main="kept")
        return out.kept, out[REJECTS], out[EVENTS]


def _verified(example: Example, threshold: float):
    codes = verifier_keeps(example.extra["verifier"].parsed, threshold)
    if codes:
        yield beam.pvalue.TaggedOutput(REJECTS, _reject(example, codes, "verifier", example.extra["cot"].content))
    else:
        yield example


class KeepVerified(beam.PTransform):
    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def expand(self, examples):
        out = examples | "Verdict" >> beam.FlatMap(_verified, self.threshold).with_outputs(REJECTS, main="kept")
        return out.kept, out[REJECTS]


def _query_key(example: Example) -> str:
    q = example.query
    return query_content_key(q.dataset, q.task_id, q.query_txt, q.query_img_path)


def _keep_first(keyed):
    _, examples = keyed
    by_id = {row_id(e): e for e in examples}
    kept, dropped = pick_kept([{"id": i} for i in by_id])
    yield by_id[kept["id"]]
    for row in dropped:
        e = by_id[row["id"]]
        yield beam.pvalue.TaggedOutput(REJECTS, _reject(e, [DUPLICATE_REASON], "dedup", e.extra["cot"].content))


class DropDuplicateAnswers(beam.PTransform):
    def expand(self, examples):
        out = (examples
               | "KeyByAnswer" >> beam.Map(lambda e: (dedup_key(_query_key(e), e.extra["cot"].parsed[1]), e))
               | "GroupAnswer" >> beam.GroupByKey()
               | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(REJECTS, main="kept"))
        return out.kept, out[REJECTS]
