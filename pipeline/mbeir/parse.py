"""Parse one M-BEIR JSONL line into a QueryRecord / CandidateRecord, or a Reject with a reason code.

Checks: size (--max_line_bytes), UTF-8, strict JSON (RFC 8259: no NaN/Infinity, no lone surrogate escapes,
nesting Python can parse), JSON object, the JSON Schemas in schemas/ (mbeir_query, mbeir_candidate), ids that are
exactly M-BEIR ids (layout.is_mbeir_id, matched whole: no space, newline or control character), task id known
and consistent with the query modality, text/image present where the modality needs it, safe image paths,
non-empty positives. Never raises on bad input, whatever a line holds.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import schemas
from pipeline.mbeir import reasons
from pipeline.mbeir.images import safe_image_path
from pipeline.mbeir.layout import DATASET_IDS, DATASET_NAMES, DID_STRIDE, QID_STRIDE, TASKS, is_mbeir_id
from pipeline.mbeir.lines import DEFAULT_MAX_LINE_BYTES
from pipeline.mbeir.records import CandidateRecord, QueryRecord, Reject

REJECT_TEXT_CHARS = 500


@cache
def _validator(name: str):
    return schemas.validator(name)


@cache
def _fast_validator(name: str):
    """The same schema compiled to Python (about 17x faster than jsonschema on a valid line); jsonschema
    still explains every rejection."""
    import fastjsonschema

    return fastjsonschema.compile(schemas.load(name))


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str):
    raise _Bad(reasons.INVALID_JSON, f"{name} is not a JSON number (RFC 8259); write null or a finite number")


def _load(raw: bytes, complete: bool, max_line_bytes: int) -> dict[str, Any]:
    if len(raw) > max_line_bytes:
        raise _Bad(reasons.LINE_TOO_LONG, f"the line is over {max_line_bytes} bytes (--max_line_bytes); not parsed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(reasons.INVALID_UTF8, f"invalid UTF-8 at byte {e.start}") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        if not complete:
            raise _Bad(reasons.TRUNCATED_LINE, f"last line has no newline and does not parse: {e.msg}") from None
        raise _Bad(reasons.INVALID_JSON, f"{e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _Bad(reasons.TOO_DEEPLY_NESTED, "arrays/objects nested deeper than the JSON parser's limit") from None
    except ValueError as e:  # e.g. an integer of more digits than int() converts (sys.set_int_max_str_digits)
        raise _Bad(reasons.INVALID_JSON, str(e).split(";")[0][:200]) from None
    if not isinstance(obj, dict):
        raise _Bad(reasons.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad(reasons.INVALID_UTF8, "a \\u escape encodes a lone UTF-16 surrogate (not a character)"
                       ) from None
    return obj


def _check_schema(obj: dict[str, Any], schema: str, modality_field: str) -> None:
    try:
        _fast_validator(schema)(obj)
        return
    except Exception:  # noqa: BLE001 - any failure of the fast path: let jsonschema name the problem
        pass
    try:
        errors = sorted(_validator(schema).iter_errors(obj),
                        key=lambda e: (e.validator != "required", [str(p) for p in e.path]))
    except RecursionError:
        raise _Bad(reasons.TOO_DEEPLY_NESTED, "a field nests deeper than the schema check can follow") from None
    if not errors:
        return
    e = errors[0]
    field = ".".join(str(p) for p in e.path)
    if e.validator == "required":
        raise _Bad(reasons.MISSING_FIELD, e.message)
    if field == modality_field and e.validator == "enum":
        raise _Bad(reasons.UNKNOWN_MODALITY, f"{field}: {obj.get(field)!r} is not one of text, image, image,text")
    raise _Bad(reasons.BAD_FIELD_TYPE, f"{field or '(line)'}: {e.message}")


def _check_ids(obj: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Every id field (a string or a list of them) is exactly an M-BEIR id. The schema says so too, but a JSON
    Schema `$` lets a final newline through under Python's re; this check matches whole."""
    for name in (f for f in fields if f in obj):  # the schema has already required what is required
        value = obj[name]
        for i, one in enumerate(value if isinstance(value, list) else [value]):
            if not is_mbeir_id(one):
                at = f"{name}[{i}]" if isinstance(value, list) else name
                raise _Bad(reasons.BAD_FIELD_TYPE, f"{at}: {one!r} is not an M-BEIR id "
                           "('{dataset id}:{n}' in plain decimal, nothing before or after)")


def _check_content(obj: dict[str, Any], modality: str, txt_field: str, img_field: str) -> None:
    img = obj.get(img_field)
    if "image" in modality.split(","):
        if not isinstance(img, str) or not img.strip():
            raise _Bad(reasons.MISSING_FIELD, f"{img_field} is required for modality {modality!r}")
    if img is not None and not safe_image_path(img):
        raise _Bad(reasons.UNSAFE_IMAGE_PATH, f"{img_field} {img!r} must be relative to the M-BEIR root")
    if "text" in modality.split(","):
        txt = obj.get(txt_field)
        if not isinstance(txt, str) or not txt.strip():
            raise _Bad(reasons.MISSING_FIELD, f"{txt_field} is required for modality {modality!r}")


def _snippet(raw: bytes) -> str:
    return raw[: REJECT_TEXT_CHARS * 4].decode("utf-8", errors="replace")[:REJECT_TEXT_CHARS]


def parse_query_line(raw: bytes, *, source_file: str, line_number: int, dataset: str,
                     complete: bool = True, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> QueryRecord | Reject:
    """One query line -> QueryRecord or Reject. `dataset` is the file stem ("" = take it from the qid)."""
    qid = ""
    try:
        obj = _load(raw, complete, max_line_bytes)
        qid = obj.get("qid") if isinstance(obj.get("qid"), str) else ""
        _check_schema(obj, "mbeir_query", "query_modality")
        _check_ids(obj, ("qid", "pos_cand_list", "neg_cand_list"))
        dataset_id, n = map(int, qid.split(":", 1))
        if n >= QID_STRIDE:
            raise _Bad(reasons.BAD_FIELD_TYPE, f"qid {qid!r}: number must be below {QID_STRIDE} (UniIR id hashing)")
        if dataset_id not in DATASET_NAMES:
            raise _Bad(reasons.BAD_FIELD_TYPE, f"qid {qid!r}: unknown dataset id {dataset_id}")
        if dataset and DATASET_IDS.get(dataset) != dataset_id:
            raise _Bad(reasons.BAD_FIELD_TYPE, f"qid {qid!r} does not belong to dataset {dataset!r}")
        task_id, modality = int(obj["task_id"]), obj["query_modality"]
        if task_id not in TASKS:
            raise _Bad(reasons.UNKNOWN_TASK, f"task_id {task_id} is not an M-BEIR task (known: {sorted(TASKS)})")
        if TASKS[task_id][0] != modality:
            raise _Bad(reasons.UNKNOWN_TASK,
                       f"task_id {task_id} expects query_modality {TASKS[task_id][0]!r}, got {modality!r}")
        _check_content(obj, modality, "query_txt", "query_img_path")
        if not obj["pos_cand_list"]:
            raise _Bad(reasons.EMPTY_POSITIVES, "pos_cand_list is empty")
    except _Bad as bad:
        return Reject(reason=bad.reason, detail=bad.detail, source_file=source_file, line_number=line_number,
                      qid=qid, dataset=dataset, text=_snippet(raw))
    return QueryRecord(
        qid=qid, query_txt=obj.get("query_txt"), query_img_path=obj.get("query_img_path"),
        query_modality=modality, query_src_content=obj.get("query_src_content"),
        pos_cand_list=tuple(obj["pos_cand_list"]), neg_cand_list=tuple(obj.get("neg_cand_list") or ()),
        task_id=task_id, dataset=dataset or DATASET_NAMES[dataset_id], dataset_id=dataset_id,
        source_file=source_file, line_number=line_number,
    )


def parse_candidate_line(raw: bytes, *, source_file: str, line_number: int, complete: bool = True,
                         max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> CandidateRecord | Reject:
    """One candidate pool line -> CandidateRecord (with its file and line) or Reject."""
    try:
        obj = _load(raw, complete, max_line_bytes)
        _check_schema(obj, "mbeir_candidate", "modality")
        _check_ids(obj, ("did",))
        if int(obj["did"].split(":", 1)[1]) >= DID_STRIDE:
            raise _Bad(reasons.BAD_FIELD_TYPE, f"did {obj['did']!r}: number must be below {DID_STRIDE}")
        _check_content(obj, obj["modality"], "txt", "img_path")
    except _Bad as bad:
        return Reject(reason=bad.reason, detail=bad.detail, source_file=source_file, line_number=line_number,
                      text=_snippet(raw))
    return CandidateRecord(did=obj["did"], txt=obj.get("txt"), img_path=obj.get("img_path"),
                           modality=obj["modality"], src_content=obj.get("src_content"),
                           source_file=source_file, line_number=line_number)
