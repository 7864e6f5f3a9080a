"""Types checked at the door: a shard whose column has another type than the row contract's is skipped whole with
one line; a row whose value has another type, or is null where the trainer needs one, is skipped and counted by
reason; the run goes on."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError
from trainer.training.cli import main
from trainer.training.data import ImageLoader, RowDecoder, TrainData, list_shards
from trainer.training.row_types import column_types, row_problem, schema_problem

TEXT_ROW = {"id": "cirr/7/1:1", "pos_did": "1:2", "dataset": "cirr", "task_id": 7, "instruction": "Find it",
            "query_txt": "a red circle", "query_img_path": None, "pos_txt": "a red circle", "pos_img_path": None,
            "cand_modality": "text", "route": "direct", "target": "<|emb|>"}


def _rows(sample_cot, n: int = 12) -> list[dict]:
    """n text-only rows of one task family (one batch holds them all)."""
    rows = [r for r in pq.read_table(list_shards(sample_cot)).to_pylist() if not r["query_img_path"]
            and not r["pos_img_path"]][:n]
    for r in rows:
        r["dataset"], r["task_id"] = "cirr", 7
    return rows


# (column, a table column of the wrong type, what the skip line says)
WRONG_COLUMNS = [
    ("target", pa.array([7] * 12), "has the column target as int64, not a string"),
    ("task_id", pa.array(["7"] * 12), "has the column task_id as string, not an integer"),
    ("query_txt", pa.array([["a", "b"]] * 12), "has the column query_txt as list<element: string>, not a string"),
    ("pos_did", pa.array([1.5] * 12), "has the column pos_did as double, not a string"),
    ("query_image", pa.array([{"bytes": "not bytes", "path": "x.jpg"}] * 12),
     "has the column query_image as struct<bytes: string, path: string>, not an image struct {bytes: binary, "
     "path: string}"),
    ("pos_image", pa.array(["x.jpg"] * 12),
     "has the column pos_image as string, not an image struct {bytes: binary, path: string}"),
]


@pytest.mark.parametrize("column, values, says", WRONG_COLUMNS, ids=[c[0] for c in WRONG_COLUMNS])
def test_a_shard_with_a_column_of_another_type_is_skipped_whole_with_one_line(sample_cot, tmp_path, capsys,
                                                                              column, values, says):
    rows = _rows(sample_cot)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "a.parquet")
    bad = pa.Table.from_pylist(rows)
    bad = (bad.set_column(bad.schema.get_field_index(column), column, values) if column in bad.schema.names
           else bad.append_column(column, values))
    pq.write_table(bad, tmp_path / "data" / "b.parquet")
    data = TrainData(str(tmp_path), batch_size=12, seed=0)
    assert data.decode.skipped == {"shard_wrong_type": 1}
    assert len(data.index) == len(rows) and len(next(iter(data))) == len(rows)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"skipping shard {tmp_path / 'data' / 'b.parquet'}: it {says}"]


def test_no_shard_of_the_right_types_is_one_error_naming_the_first(sample_cot, tmp_path):
    table = pa.Table.from_pylist(_rows(sample_cot))
    (tmp_path / "data").mkdir()
    pq.write_table(table.set_column(table.schema.get_field_index("target"), "target", pa.array([1] * 12)),
                   tmp_path / "data" / "a.parquet")
    with pytest.raises(ConfigError, match=r"none of the 1 Parquet shard\(s\) is usable \(1 shard_wrong_type\); "
                                          r".*a.parquet has the column target as int64, not a string"):
        TrainData(str(tmp_path), batch_size=4, seed=0)


def test_columns_null_in_every_row_or_dictionary_encoded_are_fine():
    schema = pa.schema([("query_img_path", pa.null()), ("dataset", pa.dictionary(pa.int32(), pa.string())),
                        ("task_id", pa.int8()), ("target", pa.large_string()),
                        ("pos_image", pa.struct([("bytes", pa.large_binary()), ("path", pa.null())]))])
    assert schema_problem(schema) is None


# (what is wrong, the row's change, the reason it is counted under)
WRONG_VALUES = [
    ("int target", {"target": 7}, "wrong_type_target"),
    ("string task_id", {"task_id": "7"}, "wrong_type_task_id"),
    ("bool task_id", {"task_id": True}, "wrong_type_task_id"),
    ("string image bytes", {"query_image": {"bytes": "not bytes", "path": None}}, "wrong_type_query_image"),
    ("image that is a string", {"pos_image": "x.jpg"}, "wrong_type_pos_image"),
    ("list where a string belongs", {"query_txt": ["a", "b"]}, "wrong_type_query_txt"),
    ("list id", {"id": ["a"]}, "wrong_type_id"),
    ("null target", {"target": None}, "null_target"),
    ("null dataset", {"dataset": None}, "null_dataset"),
    ("null task_id", {"task_id": None}, "null_task_id"),
    ("null instruction", {"instruction": None}, "null_instruction"),
]


@pytest.mark.parametrize("change, reason", [c[1:] for c in WRONG_VALUES], ids=[c[0] for c in WRONG_VALUES])
def test_a_row_with_a_value_of_another_type_is_skipped_and_counted(change, reason):
    decode = RowDecoder(ImageLoader(None))
    assert decode({**TEXT_ROW, **change}) is None
    assert decode.skipped == {reason: 1}
    assert decode(TEXT_ROW) is not None


def test_nulls_the_row_contract_allows_pass_and_every_column_has_a_type():
    assert row_problem({**TEXT_ROW, "query_txt": None, "pos_img_path": None, "route": None, "query_image": None,
                        "pos_image": {"bytes": None, "path": None}}) is None
    assert set(column_types().values()) <= {(k, n) for k in ("string", "integer", "image") for n in (True, False)}


def test_null_rows_are_skipped_counted_in_the_log_and_the_summary_and_the_run_goes_on(sample_cot, sample_root,
                                                                                      tmp_path, capsys):
    rows = _rows(sample_cot)
    rows[0]["task_id"], rows[1]["target"], rows[2]["instruction"] = None, None, None
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "a.parquet")
    wrong = pa.Table.from_pylist(rows)
    pq.write_table(wrong.set_column(wrong.schema.get_field_index("target"), "target", pa.array([7] * 12)),
                   tmp_path / "data" / "b.parquet")
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data"), "--mbeir_root", sample_root, "--model", "tiny", "--global_batch",
                 "12", "--micro_batch", "12", "--max_steps", "1", "--progress", "false", "--output_dir",
                 str(out)]) == 0
    record = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    # the row without a task_id has no task family: it is left out (and counted) when the shards are indexed
    assert record["skipped"] == {"shard_wrong_type": 1, "null_task_id": 1, "null_target": 1, "null_instruction": 1}
    captured = capsys.readouterr()
    assert "skipped: 1 null_instruction, 1 null_target, 1 null_task_id, 1 shard_wrong_type" in captured.out
    assert "b.parquet: it has the column target as int64" in captured.err and "Traceback" not in captured.err
