"""Training rows open images through the image gate: a hostile image (by path or embedded) skips its row, counted
under the gate's reason code, never a traceback and never a hang."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.mbeir import reasons
from tests.pipeline.mbeir.hostile_images import FOLDER, HOSTILE, bomb_png, hostile_root, jpeg, no_hang
from trainer.training.data import ImageLoader, RowDecoder, TrainData


def _row(query_img: str | None, **extra) -> dict:
    return {"id": f"cirr/7/{query_img}", "target": "<|emb|>", "instruction": "Find it", "query_txt": "bluer",
            "query_img_path": query_img, "dataset": "cirr", "task_id": 7, "pos_txt": "a blue shirt",
            "pos_img_path": None, "cand_modality": "text", "route": "direct", **extra}


def test_each_hostile_image_skips_its_row_counted_by_code(tmp_path):
    root = hostile_root(tmp_path)
    decode = RowDecoder(ImageLoader(root))
    assert no_hang(lambda: decode(_row(f"{FOLDER}/ok.jpg"))).query.image.size == (32, 24)
    for name in HOSTILE:
        assert no_hang(lambda n=name: decode(_row(f"{FOLDER}/{n}"))) is None
    assert decode.skipped == {code: 1 for code in HOSTILE.values()}


def test_embedded_image_bytes_pass_the_same_gate():
    decode = RowDecoder(ImageLoader(None))
    assert decode(_row(None, query_image={"bytes": jpeg(), "path": "ok.jpg"})) is not None
    assert decode(_row(None, query_image={"bytes": bomb_png(), "path": "bomb.png"})) is None
    assert decode(_row(None, query_image={"bytes": jpeg()[:200], "path": "cut.jpg"})) is None
    assert decode.skipped == {reasons.DECOMPRESSION_BOMB: 1, reasons.UNREADABLE_IMAGE: 1}


def test_a_training_run_skips_hostile_rows_and_counts_them_in_the_tally(tmp_path):
    root = hostile_root(tmp_path)
    rows = [_row(f"{FOLDER}/{name}") for name in ["ok.jpg", "ok.jpg", *sorted(HOSTILE)]]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    data = TrainData(str(tmp_path), batch_size=len(rows), seed=0, mbeir_root=root)
    batch = no_hang(lambda: next(iter(data)))
    assert len(batch) == 2
    assert data.decode.skipped == {code: 1 for code in HOSTILE.values()}
