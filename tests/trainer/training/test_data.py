import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError
from tests.trainer.conftest import write_cot_shards
from trainer.training.data import TaskBatchSampler, TrainData, list_shards


def test_batches_hold_one_task_family_and_cover_every_row_once(sample_cot, sample_root):
    data = TrainData(sample_cot, batch_size=8, seed=3, mbeir_root=sample_root)
    plan = data.sampler.plan(0)
    fams = data.index.families
    assert all(len({fams[i] for i in b}) == 1 for b in plan)
    seen = [i for b in plan for i in b]
    assert len(seen) == len(set(seen)) and len(seen) >= len(data.index) - len(data.index.family_indices())
    assert plan == TaskBatchSampler(data.index.family_indices(), 8, seed=3).plan(0)
    assert plan != TaskBatchSampler(data.index.family_indices(), 8, seed=4).plan(0)
    assert plan != data.sampler.plan(1)


def test_sampler_resumes_at_the_saved_position(sample_cot):
    data = TrainData(sample_cot, batch_size=4, seed=0)
    fams = data.index.family_indices()
    a = TaskBatchSampler(fams, 4, seed=0)
    it = iter(a)
    n = len(a) + 5  # crosses an epoch boundary
    first = [next(it) for _ in range(n)]
    b = TaskBatchSampler(fams, 4, seed=0)
    b.load_state_dict(a.state_dict())
    rest_a, rest_b = [next(it) for _ in range(7)], [next(iter(b)) for _ in range(1)]
    assert rest_b[0] == rest_a[0] and first[-1] != rest_a[0]
    with pytest.raises(ValueError):
        TaskBatchSampler(fams, 8, seed=0).load_state_dict(a.state_dict())


def test_examples_carry_instruction_images_and_target(sample_cot, sample_root):
    data = TrainData(sample_cot, batch_size=8, seed=0, mbeir_root=sample_root)
    batch = next(iter(data))
    assert batch and all(ex.target.endswith("<|emb|>") for ex in batch)
    rows = {r["id"]: r for r in data.index.rows(list(range(len(data.index))))}
    for ex in batch:
        row = rows[ex.row_id]
        assert ex.query.text.startswith(row["instruction"][:1].upper())
        assert (ex.query.image is not None) == (row["query_img_path"] is not None)
        assert (ex.candidate.image is not None) == (row["pos_img_path"] is not None)
        assert ex.route == row["route"] and ex.query.dataset == row["dataset"]


def test_bad_rows_are_skipped_and_counted(sample_cot, sample_root, tmp_path):
    rows = pq.read_table(list_shards(sample_cot)[0]).to_pylist()[:12]
    for r in rows:
        r["dataset"], r["task_id"] = "cirr", 7  # one family so a single batch holds them all
        r["query_image"] = None
    rows[0]["target"] = ""
    rows[1]["query_img_path"] = "mbeir_images/nowhere/missing.jpg"
    rows[2]["query_img_path"], rows[2]["query_image"] = None, {"bytes": b"not an image", "path": "x.jpg"}
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    data = TrainData(str(tmp_path), batch_size=12, seed=0, mbeir_root=sample_root)
    batch = next(iter(data))
    assert len(batch) == 9
    assert data.decode.skipped == {"empty_target": 1, "missing_image": 1, "unreadable_image": 1}


def test_embedded_image_structs_need_no_root(sample_cot, sample_root, tmp_path):
    from pathlib import Path

    rows = [r for r in pq.read_table(list_shards(sample_cot)[0]).to_pylist() if r["query_img_path"]][:4]
    for r in rows:
        r["query_image"] = {"bytes": (Path(sample_root) / r["query_img_path"]).read_bytes(), "path": None}
        r["pos_image"] = ({"bytes": (Path(sample_root) / r["pos_img_path"]).read_bytes(), "path": None}
                          if r["pos_img_path"] else None)
        r["dataset"], r["task_id"] = "oven", 6
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "one.parquet")
    data = TrainData(str(tmp_path / "*.parquet"), batch_size=4, seed=0, mbeir_root=None)
    batch = next(iter(data))
    assert len(batch) == 4 and all(ex.query.image is not None for ex in batch)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=f"--data {tmp_path}: no Parquet shards there"):
        list_shards(str(tmp_path))
    with pytest.raises(ConfigError, match=f"--data {tmp_path / 'gone'} does not exist"):
        list_shards(str(tmp_path / "gone"))


def _shards(sample_cot, tmp_path, n: int = 3):
    """A copy of n of the sample's shards (re-split) under tmp_path/data; returns the paths."""
    rows = pq.read_table(list_shards(sample_cot)).to_pylist()
    write_cot_shards(rows, tmp_path, n_shards=n)
    return sorted((tmp_path / "data").glob("*.parquet"))


def test_corrupt_shards_are_skipped_and_counted(sample_cot, tmp_path, capsys):
    good, cut, alien = _shards(sample_cot, tmp_path)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a half-copied shard
    alien.write_text("id,target\n1,x\n")  # not Parquet at all
    data = TrainData(str(tmp_path), batch_size=4, seed=0)
    assert data.decode.skipped == {"unreadable_shard": 2}  # the tally the train log writes
    assert len(data.index) == pq.ParquetFile(good).metadata.num_rows
    err = capsys.readouterr().err
    assert f"skipping shard {cut}: it is not a readable Parquet file" in err and str(alien) in err
    assert "Traceback" not in err


def test_no_usable_shard_is_a_config_error(sample_cot, tmp_path):
    shards = _shards(sample_cot, tmp_path, 2)
    for path in shards:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="none of the 2 Parquet shard.s. is usable .2 unreadable_shard."):
        TrainData(str(tmp_path), batch_size=4, seed=0)


def test_shards_without_the_needed_columns_name_them(sample_cot, tmp_path, capsys):
    rows = pq.read_table(list_shards(sample_cot)[0]).to_pylist()
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows).drop_columns(["target", "pos_txt"]), tmp_path / "data/a.parquet")
    with pytest.raises(ConfigError, match="a.parquet lacks the columns target, pos_txt"):
        TrainData(str(tmp_path), batch_size=4, seed=0)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data/b.parquet")
    data = TrainData(str(tmp_path), batch_size=4, seed=0)  # one good shard: train on it, count the other
    assert data.decode.skipped == {"shard_missing_columns": 1}
    assert "a.parquet: it lacks the columns target, pos_txt" in capsys.readouterr().err


def test_too_few_rows_to_batch_is_a_config_error(sample_cot, tmp_path):
    rows = pq.read_table(list_shards(sample_cot)[0]).to_pylist()[:1]
    write_cot_shards(rows, tmp_path, n_shards=1)
    with pytest.raises(ConfigError, match="hold 1 row.s. and no task family with 2 or more"):
        TrainData(str(tmp_path), batch_size=4, seed=0)


def _step_rows(data: TrainData, steps: int) -> list[list[str]]:
    it = iter(data)
    return [[ex.row_id for ex in next(it)] for _ in range(steps)]


def test_step_rows_depend_only_on_seed_and_global_batch(sample_cot, sample_root):
    """Ranks split each global batch in order: their shares concatenated are the one-process batch."""
    one = _step_rows(TrainData(sample_cot, 16, seed=1, mbeir_root=sample_root), 3)
    for world in (2, 3):
        shares = [_step_rows(TrainData(sample_cot, 16, 1, sample_root, rank=r, world_size=world), 3)
                  for r in range(world)]
        assert [sum((s[i] for s in shares), []) for i in range(3)] == one
    assert one != _step_rows(TrainData(sample_cot, 8, seed=1, mbeir_root=sample_root), 3)


def test_resume_with_another_world_size_continues_with_the_same_rows(sample_cot, sample_root):
    first = TrainData(sample_cot, 16, seed=0, mbeir_root=sample_root)
    it = iter(first)
    next(it)
    saved = first.sampler.state_dict()  # as a checkpoint after step 1 stores it
    expected = [ex.row_id for ex in next(it)]
    shares = []
    for r in range(2):
        data = TrainData(sample_cot, 16, 0, sample_root, rank=r, world_size=2)
        data.sampler.load_state_dict(saved)
        shares += [ex.row_id for ex in next(iter(data))]
    assert shares == expected
