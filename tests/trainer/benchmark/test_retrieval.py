"""Chunked exact top-k, over one matrix or over consecutive blocks, and the float16 embedding file."""

import numpy as np
import pytest
import torch

from trainer.benchmark.retrieval import EmbeddingWriter, open_embeddings, search, search_blocks


def _normed(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("chunk,block", [(7, 3), (64, 1000), (1000, 5)])
def test_chunked_topk_equals_full_matmul(chunk, block):
    q, c = _normed(23, 16, 0), _normed(301, 16, 1)
    s, i = search(q, c, k=10, chunk_size=chunk, query_block=block)
    full = (q @ c.T).topk(10, dim=1)
    assert torch.equal(i, full.indices)
    assert torch.allclose(s, full.values)


def test_search_over_float16_memmap(tmp_path):
    q, c = _normed(9, 32, 2), _normed(500, 32, 3)
    w = EmbeddingWriter(tmp_path / "e.npy", 500, 32)
    for b in range(0, 500, 128):
        w.write(c[b:b + 128])
    w.close()
    mm = open_embeddings(tmp_path / "e.npy")
    assert isinstance(mm, np.memmap) and mm.dtype == np.float16
    s, i = search(q, mm, k=5, chunk_size=37)
    full = (q @ torch.from_numpy(np.array(mm)).float().T).topk(5, dim=1)
    assert torch.equal(i, full.indices)


def test_k_larger_than_pool_and_empty_queries():
    q, c = _normed(4, 8, 4), _normed(3, 8, 5)
    s, i = search(q, c, k=10, chunk_size=2)
    assert i.shape == (4, 3) and sorted(i[0].tolist()) == [0, 1, 2]
    assert search(q[:0], c, k=2)[1].shape == (0, 2)


def test_blocks_search_several_query_sets_in_one_pass():
    qa, qb, c = _normed(7, 8, 9), _normed(3, 8, 10), _normed(40, 8, 11)
    blocks = [c[:16], c[16:16], c[16:33], c[33:]]  # an empty block (a chunk of rejected lines) is skipped
    read = []
    found = search_blocks([qa, qb, qa[:0]], (read.append(len(b)) or b for b in blocks), k=5)
    assert read == [16, 0, 17, 7]  # one pass, however many sets
    for q, (s, i) in zip([qa, qb], found[:2], strict=True):
        full = (q @ c.T).topk(5, dim=1)
        assert torch.equal(i, full.indices) and torch.allclose(s, full.values)
    assert found[2][1].shape == (0, 5)


def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    q, c = _normed(5, 8, 7), _normed(50, 8, 8)
    assert torch.equal(search(q, c, 4, chunk_size=16, backend="faiss")[1], search(q, c, 4)[1])
