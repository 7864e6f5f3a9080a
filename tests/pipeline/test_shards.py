"""Shards: schema generated from the JSON schema, byte-identical rewrites, datasets loads what we write."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from pipeline import shards
from pipeline.mbeir.layout import DATASET_IDS, TASKS
from pipeline.mbeir.records import Failure, Reject

DATASETS = ("cirr", "webqa", "mscoco", "oven")
TASK_OF = {"cirr": 7, "webqa": 1, "mscoco": 3, "oven": 8}


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), ((seed * 40) % 256, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def sample_rows(n: int, embed_images: bool = False) -> list[dict]:
    """Valid M-BEIR-CoT rows covering direct and reasoning routes and several task families."""
    rows = []
    for i in range(n):
        ds = DATASETS[i % len(DATASETS)]
        task = TASK_OF[ds]
        qmod, cmod = TASKS[task]
        d = DATASET_IDS[ds]
        reasoning_route = i % 3 != 0
        reasoning = f"The query asks for item {i}; step one considers colour and step two shape." * (1 + i % 4)
        answer = f"A picture of object {i}" if reasoning_route else ""
        row = {
            "id": f"{ds}/{task}/{d}:{i}", "qid": f"{d}:{i}", "dataset": ds, "dataset_id": d, "task_id": task,
            "query_modality": qmod, "cand_modality": cmod, "instruction": "Find the matching item.",
            "query_txt": f"query text {i}" if "text" in qmod else None,
            "query_img_path": f"mbeir_images/{ds}/q{i}.png" if "image" in qmod else None,
            "pos_did": f"{d}:{1000 + i}", "pos_txt": f"candidate {i}" if "text" in cmod else None,
            "pos_img_path": f"mbeir_images/{ds}/c{i}.png" if "image" in cmod else None,
            "pos_cand_list": [f"{d}:{1000 + i}"], "neg_cand_list": [f"{d}:{2000 + i}", f"{d}:{3000 + i}"],
            "route": "reasoning" if reasoning_route else "direct", "route_source": "dataset",
            "route_confidence": None if i % 2 else 0.75,
            "reasoning": reasoning if reasoning_route else "", "answer": answer,
            "target": (f"{reasoning} {answer}<|emb|>" if reasoning_route else "<|emb|>"),
            "teacher_model": "reference-teacher" if reasoning_route else "",
            "prompt_id": "teacher_cot" if reasoning_route else "", "prompt_sha": "ab" * 8,
            "request_key": hashlib.sha256(str(i).encode()).hexdigest() if reasoning_route else "",
            "prompt_tokens": 120 + i if reasoning_route else 0,
            "completion_tokens": 40 + i if reasoning_route else 0,
            "verifier_confidence": 0.9 if reasoning_route else None,
            "generation_params": json.dumps({"temperature": 0.7, "max_tokens": 512}),
        }
        if embed_images:
            row["query_image"] = ({"bytes": png_bytes(i), "path": row["query_img_path"]}
                                  if row["query_img_path"] else None)
            row["pos_image"] = ({"bytes": png_bytes(i + 1), "path": row["pos_img_path"]}
                                if row["pos_img_path"] else None)
        rows.append(row)
    return rows


def write_dataset(out, rows, embed_images=False, n=2):
    schema = shards.row_arrow_schema(embed_images)
    files = []
    per = -(-len(rows) // n)
    for i in range(n):
        files.append(shards.write_shard(rows[i * per:(i + 1) * per], str(out / shards.shard_name(i, n)), schema))
    shards.write_manifest(str(out), files, {"command": "test"})
    return files


def test_schema_follows_json_schema_order_and_types():
    props = schemas.load("mbeir_cot_row")["properties"]
    plain = shards.row_arrow_schema()
    assert plain.names == [p for p in props if p not in ("query_image", "pos_image")]
    assert str(plain.field("dataset_id").type) == "int64"
    assert str(plain.field("pos_cand_list").type) == "list<item: string>"
    assert str(plain.field("verifier_confidence").type) == "double"
    assert str(plain.field("query_modality").type) == "string"
    with_images = shards.row_arrow_schema(embed_images=True)
    assert with_images.names == list(props)
    assert str(with_images.field("pos_image").type) == "struct<bytes: binary, path: string>"
    meta = json.loads(with_images.metadata[b"huggingface"])
    assert meta["info"]["features"]["query_image"]["_type"] == "Image"
    assert shards.row_arrow_schema(True) == with_images  # stable across calls


def test_reject_and_failed_schemas_match_records():
    assert shards.reject_arrow_schema().names == [f.name for f in dataclasses.fields(Reject)]
    assert shards.failed_arrow_schema().names == [f.name for f in dataclasses.fields(Failure)]
    assert "text" in shards.reject_arrow_schema().names


def test_rejects_round_trip(tmp_path):
    rejects = [dataclasses.asdict(Reject(reason="cot_format", detail="no <answer>", qid="8:1", text="bad"))]
    info = shards.write_shard(rejects, str(tmp_path / shards.shard_name(0, 1, folder="rejects")),
                              shards.reject_arrow_schema())
    assert pq.read_table(info["path"]).to_pylist() == rejects


def test_rows_validate_and_bad_rows_are_named():
    rows = sample_rows(8, embed_images=True)
    shards.validate_rows(rows)
    bad = sample_rows(3)
    bad[1]["route"] = "maybe"
    del bad[2]["target"]
    with pytest.raises(shards.RowSchemaError) as err:
        shards.validate_rows(bad)
    assert "row 1" in str(err.value) and "row 2" in str(err.value) and "row 0" not in str(err.value)


def test_write_shard_is_byte_identical_and_reports_sha(tmp_path):
    rows = sample_rows(30, embed_images=True)
    schema = shards.row_arrow_schema(True)
    a = shards.write_shard(rows, str(tmp_path / "a.parquet"), schema)
    b = shards.write_shard(rows, str(tmp_path / "b.parquet"), schema)
    data = (tmp_path / "a.parquet").read_bytes()
    assert data == (tmp_path / "b.parquet").read_bytes()
    assert a["sha256"] == b["sha256"] == hashlib.sha256(data).hexdigest()
    assert a["bytes"] == len(data) and a["rows"] == 30
    assert pq.read_table(a["path"]).to_pylist() == rows


def test_shard_names_and_counts():
    assert shards.shard_name(0, 4) == "data/train-00000-of-00004.parquet"
    assert shards.shard_name(3, 4, folder="rejects") == "rejects/train-00003-of-00004.parquet"
    with pytest.raises(ValueError):
        shards.shard_name(4, 4)
    assert shards.num_shards(0) == 1
    assert shards.num_shards(10, target_rows=5) == 2
    assert shards.num_shards(11, target_rows=5) == 3


def test_manifest_lists_relative_paths_and_totals(tmp_path):
    files = write_dataset(tmp_path, sample_rows(9))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["data/train-00000-of-00002.parquet",
                                                      "data/train-00001-of-00002.parquet"]
    assert manifest["rows"] == {"data": 9}
    assert manifest["command"] == "test" and manifest["created_by"].startswith("mbeir-cot ")
    assert [f["sha256"] for f in manifest["files"]] == [f["sha256"] for f in files]


@pytest.mark.parametrize("embed_images", [False, True])
def test_datasets_loads_written_folder(tmp_path, embed_images):
    import datasets

    rows = sample_rows(10, embed_images)
    write_dataset(tmp_path, rows, embed_images)
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "data"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.features == shards.row_features(embed_images)
    assert ds.num_rows == 10
    if embed_images:
        first = ds[0]["query_image"] if ds[0]["query_image"] is not None else ds[0]["pos_image"]
        assert first.size == (4, 3)
        ds = ds.cast_column("query_image", datasets.Image(decode=False))
        got = ds["query_image"]
        assert [g and g["bytes"] for g in got] == [r["query_image"] and r["query_image"]["bytes"] for r in rows]
    else:
        assert ds.to_list() == rows
