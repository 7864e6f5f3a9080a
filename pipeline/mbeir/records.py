"""The elements that flow through the pipeline. Plain dataclasses: picklable, Beam-free."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageFacts:
    """What the read-time decode check learnt about an image, handed on so no later stage decodes it again:
    the sha256 of its bytes (part of the request key), its format, mode and size (whether it can be sent as
    it is). The bytes sent are checked against the digest, so a file changed since the check is not sent."""

    sha256: str
    format: str
    mode: str
    size: tuple[int, int]

    def sendable_as_is(self, max_side: int) -> bool:
        """An RGB or greyscale JPEG within max_side goes to the teacher unchanged (most of M-BEIR)."""
        return self.format == "JPEG" and self.mode in ("RGB", "L") and max(self.size) <= max_side


@dataclass(frozen=True)
class QueryRecord:
    """One M-BEIR query line, parsed and checked."""

    qid: str
    query_txt: str | None
    query_img_path: str | None
    query_modality: str
    query_src_content: str | None
    pos_cand_list: tuple[str, ...]
    neg_cand_list: tuple[str, ...]
    task_id: int
    dataset: str  # file stem, e.g. "cirr"
    dataset_id: int
    source_file: str  # path relative to the M-BEIR root
    line_number: int  # 1-based
    query_img: ImageFacts | None = field(default=None, compare=False)  # set by the decode check

    @property
    def key(self) -> str:
        """Unique key: qids can repeat across task files of one dataset (MBEIR.md)."""
        return f"{self.source_file}#{self.qid}"


@dataclass(frozen=True)
class CandidateRecord:
    """One M-BEIR candidate pool line."""

    did: str
    txt: str | None
    img_path: str | None
    modality: str
    src_content: str | None = None
    # Where it was read (duplicate_did rejects name both lines); not part of equality: two lines of one did
    # are the same candidate when everything above agrees.
    source_file: str = field(default="", compare=False)
    line_number: int = field(default=0, compare=False)
    img: ImageFacts | None = field(default=None, compare=False)  # set by the decode check of the join


@dataclass(frozen=True)
class Reject:
    """A record that cannot be used, with a reason code. Written to rejects/ and counted."""

    reason: str
    detail: str
    source_file: str = ""
    line_number: int = 0
    qid: str = ""
    dataset: str = ""
    stage: str = "read"
    text: str = ""  # the offending line or generated text, truncated


@dataclass(frozen=True)
class Failure:
    """A request the teacher never answered usefully (after retries). Written to failed/ and counted."""

    error: str
    detail: str
    qid: str
    dataset: str
    source_file: str
    request_key: str = ""
    attempts: int = 0


@dataclass
class Example:
    """A query joined to its positive candidate(s) and its chosen instruction."""

    query: QueryRecord
    positives: list[CandidateRecord]
    instruction: str
    cand_modality: str
    route: str = ""  # "direct" | "reasoning"
    route_source: str = ""  # e.g. "dataset", "judge", "heuristic"
    route_confidence: float | None = None
    extra: dict = field(default_factory=dict)  # stage annotations (teacher response, verifier verdict, ...)
