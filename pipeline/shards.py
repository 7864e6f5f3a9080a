"""Output files: the Arrow schema of an M-BEIR-CoT row, deterministic Parquet shards, manifest.json.

The row schema is generated from schemas/mbeir_cot_row.schema.json (one source of truth) as `datasets.Features`,
so every shard carries the "huggingface" schema metadata and image columns load as `datasets.Image`.
Files are written through Beam FileSystems, so `gs://...` output directories work unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import uuid
from functools import cache
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

import schemas
from pipeline.mbeir.records import Failure, Reject

ROW_SCHEMA = "mbeir_cot_row"
# Rows per Parquet row group: small enough for the Hub viewer to page through image rows.
ROW_GROUP_SIZE = 1_000
COMPRESSION = "zstd"
# Rows per shard. Text rows are about 2 KB, so 50k rows is about 100 MB of Parquet; embedded images
# (about 100 KB each) need far fewer rows to stay near the Hub's recommended shard size of a few hundred MB.
TARGET_ROWS = 50_000
TARGET_ROWS_WITH_IMAGES = 3_000
PACKAGE = "mbeir-cot"


class RowSchemaError(ValueError):
    """Rows that do not match schemas/mbeir_cot_row.schema.json."""


def _value_feature(prop: dict[str, Any]):
    from datasets import List, Value

    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    types = [t for t in types if t != "null"]
    if not types and "enum" in prop and all(isinstance(v, str) for v in prop["enum"]):
        types = ["string"]
    if len(types) != 1:
        raise ValueError(f"cannot map JSON schema type {prop.get('type')!r} to Arrow")
    kind = types[0]
    if kind == "array":
        return List(_value_feature(prop["items"]))
    scalar = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}
    if kind not in scalar:
        raise ValueError(f"cannot map JSON schema type {kind!r} to Arrow")
    return Value(scalar[kind])


def _is_image(prop: dict[str, Any]) -> bool:
    types = prop.get("type")
    return "object" in ([types] if isinstance(types, str) else (types or []))


@cache
def row_features(embed_images: bool = False):
    """`datasets.Features` of a row, in the JSON schema's property order."""
    from datasets import Features, Image

    features = {}
    for name, prop in schemas.load(ROW_SCHEMA)["properties"].items():
        if _is_image(prop):
            if embed_images:
                features[name] = Image()
            continue
        features[name] = _value_feature(prop)
    return Features(features)


def row_arrow_schema(embed_images: bool = False) -> pa.Schema:
    """Arrow schema of an M-BEIR-CoT row; image struct columns only when `embed_images`."""
    return row_features(embed_images).arrow_schema


def _dataclass_features(cls):
    from datasets import Features, Value

    kinds = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}
    return Features({f.name: Value(kinds[str(f.type)]) for f in dataclasses.fields(cls)})


def reject_arrow_schema() -> pa.Schema:
    """Schema of rejects/ shards: the fields of `Reject` (including the rejected text)."""
    return _dataclass_features(Reject).arrow_schema


def failed_arrow_schema() -> pa.Schema:
    """Schema of failed/ shards: the fields of `Failure`."""
    return _dataclass_features(Failure).arrow_schema


def validate_rows(rows: list[dict[str, Any]]) -> None:
    """Raise RowSchemaError naming every bad row (index, id, first problems) against the row JSON schema."""
    validator = schemas.validator(ROW_SCHEMA)
    problems = []
    for i, row in enumerate(rows):
        errors = sorted(validator.iter_errors(row), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "<row>"
            problems.append(f"row {i} ({row.get('id', '?')}): {where}: {errors[0].message}"
                            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    if problems:
        raise RowSchemaError(f"{len(problems)} of {len(rows)} rows invalid:\n" + "\n".join(problems[:20]))


def shard_name(i: int, n: int, split: str = "train", folder: str = "data") -> str:
    """Hub naming that `datasets` maps to a split: 'data/train-00000-of-00004.parquet'."""
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} out of range for {n} shards")
    return f"{folder}/{split}-{i:05d}-of-{n:05d}.parquet"


def num_shards(n_rows: int, target_rows: int = TARGET_ROWS) -> int:
    """ceil(n_rows / target_rows), at least 1 (an empty split still gets one empty shard)."""
    if target_rows <= 0:
        raise ValueError("target_rows must be positive")
    return max(1, math.ceil(n_rows / target_rows))


def parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """Encode rows as one Parquet file. Same rows and schema -> same bytes (no timestamps are written)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_SIZE, compression=COMPRESSION,
                   write_statistics=True, use_dictionary=True)
    return sink.getvalue()


def _create(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file through Beam FileSystems (local, gs://, ...), never leaving a partial file under
    `path`: on filesystems with folders (disks) the bytes go to a temporary sibling that is renamed into place
    once complete (a full disk or a crash leaves no truncated shard); object stores publish an object only
    when its upload completes."""
    if not FileSystems.get_filesystem(path).has_dirs():
        _create(path, data)
        return
    partial = f"{path}.partial-{uuid.uuid4().hex}"
    try:
        _create(partial, data)
        FileSystems.rename([partial], [path])
    except BaseException:
        try:
            FileSystems.delete([partial])
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass
        raise


def move(source: str, target: str) -> None:
    """Rename a file through Beam FileSystems, making the target folder first where folders exist."""
    folder = FileSystems.split(target)[0]
    if FileSystems.get_filesystem(target).has_dirs() and not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    FileSystems.rename([source], [target])


def write_shard(rows: list[dict[str, Any]], path: str, schema: pa.Schema) -> dict[str, Any]:
    """Write one Parquet file and return {path, rows, sha256, bytes}."""
    data = parquet_bytes(rows, schema)
    write_bytes(path, data)
    return {"path": path, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_json(path: str, obj: Any) -> None:
    """Pretty, key-sorted JSON (stable bytes for stable input)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def relative_path(output_dir: str, path: str) -> str:
    prefix = output_dir.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def write_manifest(output_dir: str, files: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """manifest.json: every written file (path relative to output_dir, rows, sha256, bytes), row totals per
    top folder (data, rejects, failed), and the package version. `extra` keys are added at top level."""
    entries = sorted(({**f, "path": relative_path(output_dir, f["path"])} for f in files),
                     key=lambda f: f["path"])
    rows: dict[str, int] = {}
    for f in entries:
        top = f["path"].split("/", 1)[0]
        rows[top] = rows.get(top, 0) + int(f.get("rows", 0))
    manifest = {**(extra or {}), "created_by": f"{PACKAGE} {package_version()}", "files": entries, "rows": rows}
    write_json(FileSystems.join(output_dir, "manifest.json"), manifest)
