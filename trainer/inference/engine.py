"""Route, then batch: query encoding at the cost of its parts.

Every query is prefilled once, in batches of `batch_size`. The prefill's last hidden state routes it: a row whose
first greedy token is <|emb|> takes that state as its embedding and leaves at once. Only reasoning rows are
decoded, together, in a decode batch of at most `batch_size` rows: a row that emits <|emb|> (or reaches
`max_new_tokens`) leaves the batch and its KV cache (compaction), and its slot is taken by the next reasoning
row waiting, whose prefilled KV cache is joined to the batch's (continuous batching). `direct` is a pure
prefill. Caches of different lengths are joined by left padding, masked out, so results do not depend on
which rows share a batch. Rows waiting for a slot hold their prefill cache.

One loop (`QueryEngine.loop`) does all of this for whatever feeds it jobs: a query list (`encode_queries`, via
ListFeed: a chunk is admitted only while fewer than batch_size rows decode or wait, so at most 2 x batch_size rows
of KV) or a server's request queue (trainer/serving), whose jobs carry their own mode and may be candidates
(prefill only: they never wait for a decode to end, only for the step in progress). A feed may hand over the
processor's batches made elsewhere (Feed's optional `collated`): `run(queries, prepared)` takes a query list's
chunk batches from trainer/inference/collate.py's query_batches, made ahead in another process, so the model's
thread neither tokenizes nor processes an image.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from trainer.inference.collate import batch_rows, candidate_batches, chunk_slices
from trainer.modeling.interface import MODES, CandidateInput, EncodeResult, QueryInput


@dataclass(eq=False)
class Job:
    """One input of the loop: a query in its own mode, or a candidate (mode "direct": it never reasons). The loop
    fills tokens and prompt_tokens; a feed may set `cancelled` at any time and the row leaves at the next step."""

    item: QueryInput | CandidateInput
    mode: str = "direct"
    ref: Any = None  # the feed's handle: a list position, a request's ticket
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cancelled: bool = False


class Feed(Protocol):
    """Where the loop's jobs come from and their embeddings go.

    A feed may also have `collated(jobs: list[Job]) -> dict[str, Tensor] | None`, looked up with getattr (a feed
    without it, like the server's queue, is collated by the loop): the processor's batch of exactly `jobs`, all
    queries, in that order, left-padded, on any device, as the loop would make it; None: the loop collates."""

    def take(self, in_decode: int, steps: int) -> list[Job] | None:
        """Jobs to prefill next (at most batch_size); [] when none now, None when none ever again. `in_decode`:
        rows decoding or waiting for a decode slot; when it is 0 the feed may block until work arrives. `steps`:
        decode steps run so far (a feed that must not starve decoding rows gives one chunk a step)."""

    def finish(self, jobs: list[Job], h: torch.Tensor) -> None:
        """Embeddings (rows of h: float, not normalised) of jobs that are done; a cancelled job may be among them."""

    def fail(self, job: Job, error: Exception) -> None:
        """`job` alone could not be prefilled (its batch mates were retried without it)."""


@dataclass
class Rows:
    """Rows that decode together: KV cache, attention mask and positions left-aligned to one width; each row
    still has to feed `next_ids` (its last generated token) to the model."""

    jobs: list[Job]
    cache: DynamicCache
    mask: torch.Tensor  # (n, width) 1 = real token, the cache holds `width` positions
    pos: torch.Tensor  # (3, n, 1) M-RoPE position of each row's last cached token
    next_ids: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return len(self.jobs)

    def select(self, keep: Sequence[int]) -> Rows:
        """The rows at `keep` (positions in this group), leading columns no row needs dropped."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in _layers(self.cache):
            layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        rows = Rows([self.jobs[i] for i in keep], self.cache, self.mask[idx], self.pos[:, idx], self.next_ids[idx])
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
    return Rows(a.jobs + b.jobs, a.cache, torch.cat([left_pad(a.mask, 1, wa), left_pad(b.mask, 1, wb)]),
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
    rest = Rows(rows.jobs, rest_cache, rows.mask, rows.pos, rows.next_ids).select(list(range(k, n)))
    return rows.select(list(range(k))), rest


def live(rows: Rows | None) -> Rows | None:
    """The rows whose job is not cancelled; None when no row is left."""
    if rows is None:
        return None
    keep = [i for i, job in enumerate(rows.jobs) if not job.cancelled]
    if len(keep) == len(rows):
        return rows
    return rows.select(keep) if keep else None


class ListFeed:
    """A query list in chunks of batch_size (collate.chunk_slices), in order; a chunk is admitted only while fewer
    than batch_size rows decode or wait for a slot. Embeddings are collected in input order.

    `prepared`: each chunk's batch, made by collate.query_batches (elsewhere, ahead of the model). Every batch the
    loop asks for is then cut from them (a chunk's own, or a job's rows when a failed chunk is retried job by
    job), never collated from the queries, whose images may be left out (None)."""

    def __init__(self, queries: Sequence[QueryInput], mode: str, batch_size: int, dim: int,
                 prepared: Sequence[dict[str, torch.Tensor]] | None = None):
        self.jobs = [Job(q, mode, i) for i, q in enumerate(queries)]
        self.chunks = [self.jobs[part] for part in chunk_slices(len(self.jobs), batch_size)]
        if prepared is not None and [len(b["input_ids"]) for b in prepared] != list(map(len, self.chunks)):
            raise ValueError(f"prepared batches of {[len(b['input_ids']) for b in prepared]} rows do not match the "
                             f"chunks of {len(self.jobs)} queries by {batch_size}")
        self.batch_size, self.next, self.prepared = batch_size, 0, prepared
        self.out = torch.zeros(len(self.jobs), dim, dtype=torch.float32)

    def take(self, in_decode: int, steps: int) -> list[Job] | None:
        if self.next >= len(self.chunks):
            return None
        if in_decode >= self.batch_size:
            return []
        self.next += 1
        return self.chunks[self.next - 1]

    def collated(self, jobs: list[Job]) -> dict[str, torch.Tensor] | None:
        """The prepared batch of `jobs` (a chunk, or some of one chunk's jobs); None when nothing was prepared."""
        if self.prepared is None:
            return None
        k = jobs[0].ref // self.batch_size
        if any(job.ref // self.batch_size != k for job in jobs):
            raise ValueError("jobs of several chunks have no prepared batch")
        if jobs == self.chunks[k]:
            return self.prepared[k]
        return batch_rows(self.prepared[k], [job.ref - k * self.batch_size for job in jobs])

    def finish(self, jobs: list[Job], h: torch.Tensor) -> None:
        self.out[[job.ref for job in jobs]] = h.float().cpu()

    def fail(self, job: Job, error: Exception) -> None:
        raise error

    def result(self, tokenizer) -> EncodeResult:
        tokens = [job.tokens for job in self.jobs]
        return EncodeResult(embeddings=F.normalize(self.out, dim=-1), reasoned=[len(t) > 0 for t in tokens],
                            generated_tokens=[len(t) for t in tokens],
                            texts=tokenizer.batch_decode(tokens, skip_special_tokens=False))


class QueryEngine:
    """Greedy decoding until <|emb|>; the embedding is the hidden state that feeds <|emb|> (pre-token pooling,
    PAPER.md §1). If <|emb|> never comes within max_new_tokens it is appended: the last generated token's state.
    `mode` is the mode of `run`'s queries; jobs from another feed carry their own."""

    def __init__(self, embedder, mode: str = "adaptive", max_new_tokens: int = 128, batch_size: int = 8):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or max_new_tokens < 0:
            raise ValueError(f"batch_size must be >= 1 and max_new_tokens >= 0, got {batch_size}, {max_new_tokens}")
        self.emb, self.mode, self.max_new, self.batch_size = embedder, mode, max_new_tokens, batch_size
        self.steps = 0  # decode steps run
        self.emb_id = embedder.emb_id

    def run(self, queries: Sequence[QueryInput],
            prepared: Sequence[dict[str, torch.Tensor]] | None = None) -> EncodeResult:
        """`queries` in mode self.mode. `prepared`: their chunks' batches (collate.query_batches with this engine's
        batch_size), so the loop collates nothing; the result is the same, bit for bit."""
        feed = ListFeed(queries, self.mode, self.batch_size, self.emb.base.config.text_config.hidden_size, prepared)
        self.loop(feed)
        return feed.result(self.emb.processor.tokenizer)

    @torch.inference_mode()  # no autograd bookkeeping: about a tenth off every small decode step
    def loop(self, feed: Feed) -> None:
        """Until the feed has nothing more and no row decodes: prefill what the feed gives, then one decode step
        of at most batch_size rows; finished (or cancelled) rows leave, waiting rows take their slots."""
        active: Rows | None = None
        waiting: deque[Rows] = deque()  # prefilled chunks' reasoning rows, oldest first, each its own cache
        while True:
            while chunk := feed.take(len(active or ()) + sum(map(len, waiting)), self.steps):
                if (rows := self._admit(chunk, feed)) is not None:
                    waiting.append(rows)
            active, waiting = live(active), deque(g for g in map(live, waiting) if g is not None)
            if chunk is None and active is None and not waiting:
                break
            active = self._fill(active, waiting)
            if active is not None:
                active = self._step(active, feed)

    def _fill(self, active: Rows | None, waiting: deque[Rows]) -> Rows | None:
        """Free slots of the decode batch taken by waiting rows, oldest first; only the chunk that is split is
        copied, however many rows wait."""
        while waiting and len(active or ()) < self.batch_size:
            take, rest = split(waiting[0], self.batch_size - len(active or ()))
            active = join(active, take)
            if rest is None:
                waiting.popleft()
            else:
                waiting[0] = rest
        return active

    def _admit(self, jobs: list[Job], feed: Feed) -> Rows | None:
        """_prefill; when a chunk fails, each job alone, so that a bad input fails only itself."""
        try:
            return self._prefill(jobs, feed)
        except Exception as error:
            if len(jobs) == 1:
                feed.fail(jobs[0], error)
                return None
        return reduce(join, (self._admit([job], feed) for job in jobs), None)

    def _batch(self, jobs: list[Job], feed: Feed) -> tuple[dict[str, torch.Tensor], list[Job]]:
        """(the processor's batch on the model's device, the jobs in its row order: queries, then candidates);
        the feed's own when it has collated them (Feed.collated)."""
        emb = self.emb
        collated = getattr(feed, "collated", None)
        batch = collated(jobs) if collated is not None else None
        if batch is None:
            queries = [job for job in jobs if isinstance(job.item, QueryInput)]
            cands = [job for job in jobs if not isinstance(job.item, QueryInput)]
            batch = emb.processor(emb.query_items([j.item for j in queries]) +
                                  emb.candidate_items([j.item for j in cands]), padding_side="left")
            jobs = queries + cands
        batch = {k: v.to(emb.device) for k, v in batch.items()}
        for job, n in zip(jobs, batch["attention_mask"].sum(1).tolist(), strict=True):
            job.prompt_tokens = n
        return batch, jobs

    def _prefill(self, jobs: list[Job], feed: Feed) -> Rows | None:
        """Prefill and route a chunk; returns the rows that go on to decode (None when none do)."""
        emb = self.emb
        batch, jobs = self._batch(jobs, feed)
        pos = emb.positions(batch)
        decode = self.max_new > 0 and any(job.mode != "direct" for job in jobs)
        out = emb.base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=pos, pixel_values=batch.get("pixel_values"),
                             image_grid_thw=batch.get("image_grid_thw"), use_cache=decode)
        h = out.last_hidden_state[:, -1]
        if not decode:
            feed.finish(jobs, h)
            return None
        nxt = self._first_tokens(jobs, h)
        keep = [i for i, job in enumerate(jobs) if job.mode != "direct" and nxt[i] != self.emb_id]
        self._finish(jobs, sorted(set(range(len(jobs))) - set(keep)), h, feed)
        if not keep:
            return None
        rows = Rows(jobs, out.cache, batch["attention_mask"], pos[:, :, -1:],
                    torch.tensor(nxt, dtype=torch.long, device=h.device)).select(keep)
        for i in keep:
            jobs[i].tokens.append(nxt[i])
        return rows

    def _first_tokens(self, jobs: list[Job], h: torch.Tensor) -> list[int]:
        """Each row's greedy first token; <|emb|> is out of reach for rows in mode "always"."""
        logits = self.emb.lm_head(h).float()
        always = [i for i, job in enumerate(jobs) if job.mode == "always"]
        if always:
            logits[always, self.emb_id] = float("-inf")
        return logits.argmax(-1).tolist()

    @staticmethod
    def _finish(jobs: list[Job], rows: Sequence[int], h: torch.Tensor, feed: Feed) -> None:
        if rows:
            feed.finish([jobs[i] for i in rows], h[list(rows)])

    def _step(self, rows: Rows, feed: Feed) -> Rows | None:
        """One decode step of every active row; finished rows leave. Returns the rows still decoding."""
        emb = self.emb
        self.steps += 1
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
        for i, job in enumerate(rows.jobs):
            if len(job.tokens) >= self.max_new or nxt_list[i] == self.emb_id:
                done.append(i)
            else:
                keep.append(i)
                job.tokens.append(nxt_list[i])
        self._finish(rows.jobs, done, h, feed)
        rows.cache, rows.next_ids = out.cache, nxt
        if not keep:
            return None
        return rows if not done else rows.select(keep)


def embed_candidate_batch(embedder, batch) -> torch.Tensor:
    """(n, d) float32 L2-normalised embeddings of a collated candidate batch, on the CPU: the hidden state that
    feeds <|emb|> (the last prompt token)."""
    h = embedder.hidden(batch).last_hidden_state[:, -1]
    return F.normalize(h.float(), dim=-1).cpu()


@torch.inference_mode()
def encode_candidates(embedder, candidates: Sequence[CandidateInput], batch_size: int = 32) -> torch.Tensor:
    """Candidates never reason: one forward per length-ordered batch; the result is in input order."""
    out = torch.zeros(len(candidates), embedder.base.config.text_config.hidden_size, dtype=torch.float32)
    for idx, batch in candidate_batches(embedder, candidates, batch_size):
        out[idx] = embed_candidate_batch(embedder, batch)
    return out
