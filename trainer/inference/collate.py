"""The engine's CPU half: inputs into the processor's batches, which may be made ahead of the model, elsewhere
(trainer/benchmark/prefetch.py makes them in DataLoader worker processes), and rows cut back out of a batch.

Candidates are length-sorted, then batched (`candidate_batches`). A query list is prefilled in fixed chunks of
batch_size, in order (`chunk_slices`, the engine's ListFeed); `query_batches` makes each chunk's batch exactly as
the engine's loop makes it for an all-query chunk, so QueryEngine.run(queries, prepared=list(query_batches(...)))
gives the bits of QueryEngine.run(queries) without the processor on the model's thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from trainer.modeling.interface import CandidateInput, QueryInput

VISION_KEYS = ("pixel_values", "image_grid_thw")  # per image, not per row: the rest of a batch is (rows, width)


def length_order(embedder, candidates: Sequence[CandidateInput]) -> list[int]:
    """Indices of `candidates` by prompt length (text tokens + image tokens), so batches pad little."""
    proc = embedder.processor
    texts = [c.text or "" for c in candidates]
    text_len = [len(ids) for ids in proc.text_ids(texts)]
    merge = proc.image_processor.merge_size ** 2

    def image_tokens(img) -> int:
        if img is None:
            return 0
        return proc.image_processor.get_number_of_image_patches(img.height, img.width) // merge

    lengths = [min(t, proc.max_text_tokens) + image_tokens(c.image) for t, c in zip(text_len, candidates,
                                                                                     strict=True)]
    return sorted(range(len(candidates)), key=lambda i: lengths[i])


def candidate_batches(embedder, candidates: Sequence[CandidateInput], batch_size: int = 32):
    """(positions in `candidates`, collated batch) in length order: the CPU half of encode_candidates."""
    order = length_order(embedder, candidates)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield idx, embedder.processor(embedder.candidate_items([candidates[i] for i in idx]), padding_side="left")


def chunk_slices(n: int, batch_size: int) -> list[slice]:
    """The prefill chunks of a list of n queries: batch_size at a time, in order, the last one shorter."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def query_batches(embedder, queries: Sequence[QueryInput], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """The collated batch of each prefill chunk of `queries` (chunk_slices), left-padded, on the CPU."""
    for part in chunk_slices(len(queries), batch_size):
        yield embedder.processor(embedder.query_items(list(queries[part])), padding_side="left")


def batch_rows(batch: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rows `rows` (in that order) of a left-padded processor batch, as the processor makes them for those rows'
    items alone: the padding no kept row needs dropped, only the kept rows' images (image j of a batch belongs to
    its j-th row that has image tokens)."""
    rows = list(rows)
    mask = batch["attention_mask"][rows]
    lead = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns that are padding in every kept row
    out = {k: v[rows][:, lead:] for k, v in batch.items() if k not in VISION_KEYS}
    if "image_grid_thw" not in batch:
        return out
    with_image = [r for r, has in enumerate(batch["mm_token_type_ids"].bool().any(1).tolist()) if has]
    image_of = {r: j for j, r in enumerate(with_image)}
    grid = batch["image_grid_thw"]
    starts = [0, *grid.prod(-1).cumsum(0).tolist()]
    picked = [image_of[r] for r in rows if r in image_of]
    if picked:
        out["pixel_values"] = torch.cat([batch["pixel_values"][starts[j]:starts[j + 1]] for j in picked])
        out["image_grid_thw"] = grid[picked]
    return out
