"""The chunk cache: atomic chunk files whose ids can never be relabelled by their content."""

import os
import socket
import zipfile

import numpy as np
import pytest

from common.errors import ConfigError
from trainer.benchmark.chunks import Chunk, ChunkFolder, read_chunk, write_chunk

HOSTILE_IDS = ["2:1\n", "2:1\n2:2", "\t2:3", "2:4\r\n", "2:5\u2028", "2:6\u2029", "2:7\x85", "2:8\x00", "2:9\x0b",
               "2:10\x0c", "2:11\x1c", '2:12"', "2:13\\n", "", " ", "2:14\ud7ff", "ünï:cødé"]


def test_hostile_ids_never_relabel_an_embedding(tmp_path):
    ids = [f"2:{n}" for n in range(40)]
    ids[3:3] = HOSTILE_IDS  # every hostile id between ordinary ones
    rows = np.arange(len(ids), dtype=np.float16)[:, None] * np.ones((1, 4), dtype=np.float16)
    write_chunk(tmp_path / "c.chunk", Chunk(ids, rows, {"seconds": 1.0}))
    back = read_chunk(tmp_path / "c.chunk")
    assert back.ids == ids and len(back.ids) == len(back.embeddings)
    for i, did in enumerate(back.ids):  # row i still carries the embedding written for ids[i]
        assert ids.index(did) == i and back.embeddings[i, 0] == i
    assert back.embeddings.dtype == np.float16 and back.info == {"seconds": 1.0}


def test_chunk_written_atomically_and_damage_is_one_line(tmp_path):
    folder = ChunkFolder(tmp_path / "pool", total=3, describe={"pool_file": "p.jsonl"})
    folder.prepare()
    stale = folder.folder / f".c000001.chunk.{socket.gethostname()}-999999999.tmp"  # a dead process's leftover
    stale.write_bytes(b"half a chunk")
    folder.prepare()
    assert not stale.exists() and folder.missing() == [0, 1, 2]
    folder.write(1, Chunk(["9:1"], np.ones((1, 2), dtype=np.float32)))
    assert folder.missing() == [0, 2] and sorted(p.name for p in folder.folder.iterdir()) == ["c000001.chunk",
                                                                                            "key.json"]
    with pytest.raises(ConfigError, match="is missing: rerun the same command"):
        list(folder.chunks())
    with open(folder.path(1), "r+b") as f:  # cut in half: the ZIP directory at its end is gone
        f.truncate(os.path.getsize(folder.path(1)) // 2)
    with pytest.raises(ConfigError, match=r"c000001.chunk is damaged .*delete it and rerun"):
        folder.read(1)


def test_chunk_is_a_plain_zip_of_npy_and_json(tmp_path):
    write_chunk(tmp_path / "c.chunk", Chunk(["1:1", "1:2"], np.zeros((2, 3), dtype=np.float16), {"lines": 2}))
    with zipfile.ZipFile(tmp_path / "c.chunk") as z:
        assert z.namelist() == ["embeddings.npy", "record.json"]
        assert b'"ids": ["1:1", "1:2"]' in z.read("record.json")
