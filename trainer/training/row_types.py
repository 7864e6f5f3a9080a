"""The M-BEIR-CoT columns the trainer reads and their types, taken from the row contract
(schemas/mbeir_cot_row.schema.json): a shard whose column has another Arrow type is skipped whole (schema_problem),
a row whose value has another type, or is null where the trainer needs a value, is skipped and counted (row_problem).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import pyarrow as pa

import schemas

ROW_SCHEMA = "mbeir_cot_row"
# What the trainer cannot do without; the other ROW_COLUMNS have defaults when a shard lacks them.
REQUIRED_COLUMNS = ("dataset", "task_id", "target", "instruction", "query_txt", "query_img_path", "pos_txt",
                    "pos_img_path")
ROW_COLUMNS = ["id", "pos_did", "dataset", "task_id", "instruction", "query_txt", "query_img_path", "pos_txt",
               "pos_img_path", "cand_modality", "route", "target"]
IMAGE_COLUMNS = ["query_image", "pos_image"]  # optional Hugging Face Image structs {bytes, path}
IMAGE_FIELDS = {"bytes": "binary", "path": "string"}  # the struct's fields the trainer may read

_ARROW = {"string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
          "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t),
          "integer": pa.types.is_integer}
_PYTHON = {"string": str, "binary": bytes, "integer": int}
_NAMES = {"string": "a string", "binary": "binary data", "integer": "an integer", "image": "an image struct "
          "{bytes: binary, path: string}"}


@cache
def column_types() -> dict[str, tuple[str, bool]]:
    """column -> (kind: string | integer | image, whether the trainer takes a null there) for every column it
    reads; a column of the contract may be null where the schema allows it or the trainer does not need it."""
    props = schemas.load(ROW_SCHEMA)["properties"]
    out = {}
    for column in ROW_COLUMNS + IMAGE_COLUMNS:
        prop = props[column]
        kinds = prop.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        named = [k for k in kinds if k != "null"] or ["string"]  # a type-less enum of strings
        kind = {"object": "image"}.get(named[0], named[0])
        out[column] = (kind, "null" in kinds or column not in REQUIRED_COLUMNS)
    return out


def _arrow_fits(kind: str, arrow: pa.DataType) -> bool:
    if pa.types.is_null(arrow):  # a column that is null in every row: each row is judged by row_problem
        return True
    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    if kind != "image":
        return _ARROW[kind](arrow)
    return pa.types.is_struct(arrow) and all(_arrow_fits(IMAGE_FIELDS[f.name], f.type) for f in arrow
                                             if f.name in IMAGE_FIELDS)


def schema_problem(schema: pa.Schema) -> str | None:
    """What makes a shard unusable whatever its rows hold: "has the column target as int64, not a string";
    None when every column the trainer reads that the shard has is of its type."""
    for column, (kind, _nullable) in column_types().items():
        if column in schema.names and not _arrow_fits(kind, schema.field(column).type):
            return f"has the column {column} as {schema.field(column).type}, not {_NAMES[kind]}"
    return None


def _value_fits(kind: str, value: Any) -> bool:
    if kind == "image":
        return isinstance(value, dict) and all(value.get(f) is None or _value_fits(k, value[f])
                                               for f, k in IMAGE_FIELDS.items())
    return isinstance(value, _PYTHON[kind]) and not isinstance(value, bool)


def row_problem(row: Mapping[str, Any]) -> str | None:
    """The skip reason of a row: null_<column> for a null where the trainer needs a value, wrong_type_<column>
    for a value of another type (a list where a string belongs, text where image bytes belong); None if none."""
    for column, (kind, nullable) in column_types().items():
        value = row.get(column)
        if value is None:
            if not nullable:
                return f"null_{column}"
        elif not _value_fits(kind, value):
            return f"wrong_type_{column}"
    return None
