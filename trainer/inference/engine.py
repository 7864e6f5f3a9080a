"""Route, then batch: query encoding at the cost of its parts.

Every query is prefilled once, in batches of `batch_size`. The prefill's last hidden state routes it: a row whose
first greedy token is <|emb|> takes that state as its embedding and leaves at once. Only reasoning rows are
decoded, together, in a decode batch of at most `batch_size` rows: a row that emits <|emb|> (or reaches
`max_new_tokens`) leaves the batch and its KV cache (compaction), and its slot is taken by the next reasoning
row waiting, whose prefilled KV cache is joined to the batch's (continuous batching). `direct` is a pure
prefill. Caches of different lengths are joined by left padding, masked out, so results do not depend on
which rows share a batch. Rows waiting for a slot hold their prefill cache: at most 2 x batch_size rows of KV.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from trainer.modeling.interface import MODES, CandidateInput, EncodeResult, QueryInput


@dataclass
class Rows:
    """Rows that decode together: KV cache, attention mask and positions left-aligned to one width; each row
    still has to feed `next_ids` (its last generated token) to the model."""

    index: list[int]  # position of each row's query in the input list
    cache: DynamicCache
    mask: torch.Tensor  # (n, width) 1 = real token, the cache holds `width` positions
    pos: torch.Tensor  # (3, n, 1) M-RoPE position of each row's last cached token
    next_ids: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return len(self.index)

    def select(self, keep: Sequence[int]) -> Rows:
        """The rows at `keep` (positions in this group), leading columns no row needs dropped."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in _layers(self.cache):
            layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        rows = Rows([self.index[i] for i in keep], self.cache, self.mask[idx], self.pos[:, idx], self.next_ids[idx])
        rows._trim()
        return rows

    def _trim(self) -> None:
        lead = int((self.mask.cumsum(1) == 0).sum(1).min()) if len(self) else 0
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = cache.layers
    if not all(type(layer) is DynamicLayer for layer in layers):
        raise NotImplementedError("continuous batching needs a full-attention DynamicCache "
                                  f"(got {sorted({type(layer).__name__ for layer in layers})})")
    return layers


def join(a: Rows | None, b: Rows | None) -> Rows | None:
    """One group holding a's rows then b's; the narrower cache is left-padded (masked) to the wider width."""
    if a is None or not len(a):
        return b
    if b is None or not len(b):
        return a
    width = max(a.mask.shape[1], b.mask.shape[1])

    def left_pad(t: torch.Tensor, dim_from_end: int, w: int) -> torch.Tensor:
        pad = [0, 0] * (dim_from_end - 1) + [width - w, 0]
        return F.pad(t, pad)

    wa, wb = a.mask.shape[1], b.mask.shape[1]
    for la, lb in zip(_layers(a.cache), _layers(b.cache), strict=True):
        la.keys = torch.cat([left_pad(la.keys, 2, wa), left_pad(lb.keys, 2, wb)])
        la.values = torch.cat([left_pad(la.values, 2, wa), left_pad(lb.values, 2, wb)])
    return Rows(a.index + b.index, a.cache, torch.cat([left_pad(a.mask, 1, wa), left_pad(b.mask, 1, wb)]),
                torch.cat([a.pos, b.pos], dim=1), torch.cat([a.next_ids, b.next_ids]))


def split(rows: Rows | None, k: int) -> tuple[Rows | None, Rows | None]:
    """(first k rows, the rest); each with its own cache."""
    if rows is None or len(rows) <= k:
        return rows, None
    if k <= 0:
        return None, rows
    rest_cache = DynamicCache()
    rest_cache.layers = [DynamicLayer() for _ in rows.cache.layers]
    for src, dst in zip(_layers(rows.cache), rest_cache.layers, strict=True):
        dst.lazy_initialization(src.keys, src.values)
        dst.keys, dst.values = src.keys, src.values
    n = len(rows)
    rest = Rows(rows.index, rest_cache, rows.mask, rows.pos, rows.next_ids).select(list(range(k, n)))
    return rows.select(list(range(k))), rest


class QueryEngine:
    """Greedy decoding until <|emb|>; the embedding is the hidden state that feeds <|emb|> (pre-token pooling,
    PAPER.md §1). If <|emb|> never comes within max_new_tokens it is appended: the last generated token's state."""

    def __init__(self, embedder, mode: str = "adaptive", max_new_tokens: int = 128, batch_size: int = 8):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or max_new_tokens < 0:
            raise ValueError(f"batch_size must be >= 1 and max_new_tokens >= 0, got {batch_size}, {max_new_tokens}")
        self.emb, self.mode, self.max_new, self.batch_size = embedder, mode, max_new_tokens, batch_size
        self.emb_id = embedder.emb_id

    @torch.inference_mode()  # no autograd bookkeeping: about a tenth off every small decode step
    def run(self, queries: Sequence[QueryInput]) -> EncodeResult:
        n = len(queries)
        dim = self.emb.base.config.text_config.hidden_size
        self.out = torch.zeros(n, dim, dtype=torch.float32)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        chunks = self._chunks(queries)
        active: Rows | None = None
        waiting: Rows | None = None
        while True:
            while (len(active or ()) + len(waiting or ()) < self.batch_size
                   and (chunk := next(chunks, None)) is not None):
                waiting = join(waiting, self._prefill(*chunk))
            take, waiting = split(waiting, self.batch_size - len(active or ()))
            active = join(active, take)
            if active is None:
                break
            active = self._step(active)
        texts = self.emb.processor.tokenizer.batch_decode(self.tokens, skip_special_tokens=False)
        return EncodeResult(embeddings=F.normalize(self.out, dim=-1), reasoned=[len(t) > 0 for t in self.tokens],
                            generated_tokens=[len(t) for t in self.tokens], texts=texts)

    def _chunks(self, queries: Sequence[QueryInput]) -> Iterator[tuple[list[int], list[QueryInput]]]:
        for s in range(0, len(queries), self.batch_size):
            yield list(range(s, min(s + self.batch_size, len(queries)))), list(queries[s:s + self.batch_size])

    def _finish(self, index: list[int], rows: Sequence[int], h: torch.Tensor) -> None:
        if rows:
            self.out[[index[i] for i in rows]] = h[list(rows)].float().cpu()

    def _prefill(self, index: list[int], queries: list[QueryInput]) -> Rows | None:
        """Prefill and route a chunk; returns the rows that go on to decode (None when none do)."""
        emb = self.emb
        batch = {k: v.to(emb.device) for k, v in emb.processor(emb.query_items(queries), padding_side="left").items()}
        pos = emb.positions(batch)
        decode = self.mode != "direct" and self.max_new > 0
        out = emb.base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=pos, pixel_values=batch.get("pixel_values"),
                             image_grid_thw=batch.get("image_grid_thw"), use_cache=decode)
        h = out.last_hidden_state[:, -1]
        if not decode:
            self._finish(index, range(len(index)), h)
            return None
        logits = emb.lm_head(h).float()
        if self.mode == "always":
            logits[:, self.emb_id] = float("-inf")
        nxt = logits.argmax(-1).tolist()
        direct = [i for i, t in enumerate(nxt) if t == self.emb_id]
        self._finish(index, direct, h)
        keep = [i for i, t in enumerate(nxt) if t != self.emb_id]
        if not keep:
            return None
        for i in keep:
            self.tokens[index[i]].append(nxt[i])
        rows = Rows(index, out.cache, batch["attention_mask"], pos[:, :, -1:],
                    torch.tensor(nxt, dtype=torch.long, device=h.device))
        return rows.select(keep)

    def _step(self, rows: Rows) -> Rows | None:
        """One decode step of every active row; finished rows leave. Returns the rows still decoding."""
        emb = self.emb
        rows.pos = rows.pos + 1
        rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
        text_model = emb.base.model.language_model  # a decode step has no image: skip the vision wrapper
        mask = rows.mask
        if text_model.config._attn_implementation == "sdpa":  # one query position: the mask is the padding
            mask = {"full_attention": rows.mask.bool()[:, None, None, :]}
        out = text_model(input_ids=rows.next_ids[:, None], attention_mask=mask, position_ids=rows.pos,
                         cache=rows.cache, use_cache=True)
        h = out.last_hidden_state[:, -1]
        nxt = emb.lm_head(h).float().argmax(-1)
        nxt_list = nxt.tolist()
        done, keep = [], []
        for i, q in enumerate(rows.index):
            if len(self.tokens[q]) >= self.max_new or nxt_list[i] == self.emb_id:
                done.append(i)
            else:
                keep.append(i)
                self.tokens[q].append(nxt_list[i])
        self._finish(rows.index, done, h)
        rows.cache, rows.next_ids = out.cache, nxt
        if not keep:
            return None
        return rows if not done else rows.select(keep)


def length_order(embedder, candidates: Sequence[CandidateInput]) -> list[int]:
    """Indices of `candidates` by prompt length (text tokens + image tokens), so batches pad little."""
    proc = embedder.processor
    texts = [c.text or "" for c in candidates]
    text_len = [len(ids) for ids in proc.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    merge = proc.image_processor.merge_size ** 2

    def image_tokens(img) -> int:
        if img is None:
            return 0
        return proc.image_processor.get_number_of_image_patches(img.height, img.width) // merge

    lengths = [min(t, proc.max_text_tokens) + image_tokens(c.image) for t, c in zip(text_len, candidates,
                                                                                     strict=True)]
    return sorted(range(len(candidates)), key=lambda i: lengths[i])


@torch.inference_mode()
def encode_candidates(embedder, candidates: Sequence[CandidateInput], batch_size: int = 32) -> torch.Tensor:
    """Candidates never reason: the embedding is the hidden state that feeds <|emb|> (the last prompt token).
    Batches are formed in length order; the result is in input order."""
    dim = embedder.base.config.text_config.hidden_size
    out = torch.zeros(len(candidates), dim, dtype=torch.float32)
    order = length_order(embedder, candidates)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = embedder.processor(embedder.candidate_items([candidates[i] for i in idx]), padding_side="left")
        h = embedder.hidden(batch).last_hidden_state[:, -1]
        out[idx] = F.normalize(h.float(), dim=-1).cpu()
    return out
