"""Example -> M-BEIR-CoT row dict (the DESIGN.md row contract), and rejects/failures -> dicts. Beam-free."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from common.redact import redact
from pipeline.mbeir import images
from pipeline.mbeir.records import Example

EMB_TOKEN = "<|emb|>"  # PAPER.md §1: the embedding token that ends every student target


def student_target(reasoning: str, answer: str) -> str:
    """PAPER.md §2 Phase 2: tags stripped; target = reasoning text + answer text + <|emb|>."""
    if not reasoning and not answer:
        return EMB_TOKEN
    return f"{reasoning} {answer}".strip() + EMB_TOKEN


def row_id(example: Example) -> str:
    q = example.query
    return f"{q.dataset}/{q.task_id}/{q.qid}"


def to_row(example: Example, *, embed_images_root: str | None = None) -> dict[str, Any]:
    q, pos = example.query, example.positives[0]
    cot, verdict = example.extra.get("cot"), example.extra.get("verifier")
    request = example.extra.get("cot_request") or {}
    reasoning, answer = cot.parsed if cot is not None else ("", "")
    row = {
        "id": row_id(example), "qid": q.qid, "dataset": q.dataset, "dataset_id": q.dataset_id, "task_id": q.task_id,
        "query_modality": q.query_modality, "cand_modality": example.cand_modality,
        "instruction": example.instruction, "query_txt": q.query_txt, "query_img_path": q.query_img_path,
        "pos_did": pos.did, "pos_txt": pos.txt, "pos_img_path": pos.img_path,
        "pos_cand_list": list(q.pos_cand_list), "neg_cand_list": list(q.neg_cand_list),
        "route": example.route, "route_source": example.route_source, "route_confidence": example.route_confidence,
        "reasoning": reasoning, "answer": answer, "target": student_target(reasoning, answer),
        "teacher_model": request.get("model", ""), "prompt_id": request.get("prompt_id", ""),
        "prompt_sha": request.get("prompt_sha", ""), "request_key": request.get("key", ""),
        "prompt_tokens": cot.prompt_tokens if cot else 0, "completion_tokens": cot.completion_tokens if cot else 0,
        "verifier_confidence": float(verdict.parsed["confidence"]) if verdict is not None else None,
        "generation_params": json.dumps(request["params"], sort_keys=True) if request else "",
    }
    if embed_images_root is not None:
        row["query_image"] = _image_struct(embed_images_root, q.query_img_path)
        row["pos_image"] = _image_struct(embed_images_root, pos.img_path)
    return row


def _image_struct(root: str, rel_path: str | None) -> dict | None:
    if not rel_path:
        return None
    return {"bytes": images.read_image_bytes(root, rel_path), "path": rel_path}


def record_dict(record) -> dict[str, Any]:
    """A Reject or Failure as a row of rejects/ or failed/, its error detail and text redacted (common.redact):
    a teacher may echo the key in an error body, and --include_rejects publishes these rows."""
    row = dataclasses.asdict(record)
    for name in ("detail", "text"):
        if isinstance(row.get(name), str):
            row[name] = redact(row[name])
    return row
