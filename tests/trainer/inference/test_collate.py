"""The engine's CPU half: rows cut out of a collated batch are the batch the processor makes for those rows
alone, key by key, bit for bit (the loop's retry of a failed prepared chunk relies on it)."""

import pytest
import torch

from tests.trainer.inference.test_engine import _queries
from trainer.inference.api import TraceEmbedder
from trainer.inference.collate import batch_rows, chunk_slices, query_batches


@pytest.fixture(scope="module")
def embedder(tiny_base) -> TraceEmbedder:
    return TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).eval()


def _collate(emb: TraceEmbedder, queries) -> dict[str, torch.Tensor]:
    return emb.processor(emb.query_items(queries), padding_side="left")


@pytest.mark.parametrize("rows", [[0], [1], [4, 2], [3, 1, 0], [8, 5, 6, 7], list(range(9))])
def test_rows_of_a_batch_are_the_batch_of_those_rows(embedder, rows):
    qs = _queries()  # texts of different lengths; images on some rows, none on rows 0, 4 and 8
    cut = batch_rows(_collate(embedder, qs), rows)
    alone = _collate(embedder, [qs[r] for r in rows])
    assert sorted(cut) == sorted(alone)
    for key, value in alone.items():
        assert torch.equal(cut[key], value), key


def test_query_batches_are_the_chunks_collated(embedder):
    qs = _queries()
    assert [(s.start, s.stop) for s in chunk_slices(len(qs), 4)] == [(0, 4), (4, 8), (8, 9)]
    batches = list(query_batches(embedder, qs, 4))
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 1]
    for got, part in zip(batches, chunk_slices(len(qs), 4), strict=True):
        want = _collate(embedder, qs[part])
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
