"""Route examples to direct or reasoning (pipeline.routing has the rules).

in: Example   out: Example with route, route_source (and route_confidence) set (main), plus for --routing judge
the teacher stage's Reject, Failure and Event outputs.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from pipeline.mbeir.records import Example
from pipeline.routing import JUDGE_MIN_CONFIDENCE, RULE_ROUTERS, route_from_judge
from pipeline.stages.teacher import AskTeacher


def _routed(example: Example, route: str, source: str, confidence: float | None) -> Example:
    return dataclasses.replace(example, route=route, route_source=source, route_confidence=confidence)


def _by_rule(example: Example, routing: str) -> Example:
    route, confidence = RULE_ROUTERS[routing](example)
    return _routed(example, route, routing, confidence)


def _by_judge(example: Example, min_confidence: float) -> Example:
    route, confidence = route_from_judge(example.extra["judge"].parsed, min_confidence)
    return _routed(example, route, "judge", confidence)


class Route(beam.PTransform):
    """Returns (examples, rejects, failed, events); the last three are empty unless routing is 'judge'."""

    def __init__(self, routing: str, *, judge: AskTeacher | None = None,
                 judge_min_confidence: float = JUDGE_MIN_CONFIDENCE):
        super().__init__()
        if routing == "judge" and judge is None:
            raise ValueError("--routing judge needs a teacher (--teacher_base_url/--teacher_model)")
        self.routing, self.judge, self.min_confidence = routing, judge, judge_min_confidence

    def expand(self, examples):
        if self.routing != "judge":
            routed = examples | "RouteByRule" >> beam.Map(_by_rule, self.routing)
            p = examples.pipeline
            return routed, *(p | f"NoJudge{name}" >> beam.Create([]) for name in ("Rejects", "Failed", "Events"))
        judged, rejects, failed, events = examples | "Judge" >> self.judge
        return judged | "RouteByJudge" >> beam.Map(_by_judge, self.min_confidence), rejects, failed, events
