"""One optimizer step of the TRACE joint loss over a global batch, in micro-batches ("chunks").

`--negatives global` (default) is a gradient cache (Gao et al. 2021, arXiv 2101.06983; its phases carry the names
of luyug/GradCache): `forward_no_grad` embeds every chunk without autograd, noting each chunk's random state;
`build_cache` gathers the embeddings of all ranks and takes the gradient of InfoNCE over the whole global batch
(every query against every candidate) with respect to them; `forward_backward` re-runs each chunk with autograd
(its random state replayed, so dropout agrees) and back-propagates dot(embedding, cached gradient) plus the
chunk's share of CE and routing CE. The gradients equal one forward and backward over the whole global batch, with
memory bounded by the micro-batch.
`--negatives micro` is plain gradient accumulation: each chunk's InfoNCE sees only that chunk on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sized
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.modeling.model import TraceModel
from trainer.modeling.processor import IGNORE
from trainer.training.config import NEGATIVES, TrainConfig
from trainer.training.data import Example
from trainer.training.loss import contrastive_ce, gather_with_grad, info_nce, same_candidate_mask
from trainer.training.ranks import gather_objects, sum_over_ranks, world_size
from trainer.training.rng import RandContext


@dataclass
class Chunk:
    q: dict  # query batch with labels (right-padded)
    c: dict  # candidate batch (left-padded: the embedding is the last position's state)
    keys: list[str]  # the positives' identities, for the same-candidate mask
    n_tokens: int  # target tokens scored by the CE (labels[:, 1:] != IGNORE)
    n_routed: int  # rows with a target, scored by the routing CE
    tokens: int  # input tokens, for throughput

    @classmethod
    def of(cls, q: dict, c: dict, keys: list[str]) -> Chunk:
        labels = q["labels"]
        return cls(q, c, keys, int((labels[:, 1:] != IGNORE).sum()), int((labels != IGNORE).any(-1).sum()),
                   int(q["attention_mask"].sum() + c["attention_mask"].sum()))


Build = Callable[[Any], Chunk | None]


@dataclass
class Reps:
    """What forward_no_grad leaves: this rank's embeddings (no autograd), each part's random state before its
    forward, and each part's CE weights."""

    q: torch.Tensor
    c: torch.Tensor
    keys: list[str]
    states: list[RandContext]
    n_tokens: list[int]  # per part
    n_routed: list[int]  # per part
    tokens: int  # input tokens of this rank
    seconds: float  # time the pass took


@dataclass
class Cache:
    """What build_cache leaves: d(nce_weight * InfoNCE)/d(embedding) for this rank's rows, and global totals."""

    grad_q: torch.Tensor
    grad_c: torch.Tensor
    nce: float
    rows: int  # rows of the global batch
    all_tokens: float  # target tokens of the global batch (at least 1)
    all_routed: float  # routed rows of the global batch (at least 1)


def split(examples: list[Example], n_chunks: int) -> list[list[Example]]:
    """This rank's rows in n_chunks contiguous near-equal parts (empty where there are fewer rows)."""
    return [examples[k * len(examples) // n_chunks:(k + 1) * len(examples) // n_chunks] for k in range(n_chunks)]


def make_chunk(embedder: TraceModel, part: list[Example]) -> Chunk | None:
    """Model inputs of one part; None for an empty part. Built once per pass rather than kept for the whole
    step, so host memory too is bounded by the micro-batch (pixel values are the bulk)."""
    if not part:
        return None
    q = embedder.processor(embedder.query_items([e.query for e in part], with_target=[e.target for e in part]))
    c = embedder.processor(embedder.candidate_items([e.candidate for e in part]), padding_side="left")
    return Chunk.of(q, c, [e.cand_key for e in part])


def n_chunks_for(n_rows: int, micro_batch: int, same_on_all_ranks: bool, device: torch.device) -> int:
    """Chunks of at most micro_batch rows; the same count on every rank when their forwards must pair up."""
    n = torch.tensor([max(1, math.ceil(n_rows / micro_batch))], device=device)  # NCCL reduces GPU tensors only
    if same_on_all_ranks and world_size() > 1:
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return int(n)


def train_step(step_module: nn.Module, embedder: TraceModel, examples: list[Example], cfg: TrainConfig) -> dict:
    """Forward and backward of one optimizer step over this rank's share of the global batch (gradients are
    left in .grad, reduced across ranks by DDP). Returns the step's loss parts over the whole global batch and
    its bookkeeping: rows (all ranks), tokens (this rank), nce_candidates (candidates in each InfoNCE
    denominator), extra_pass_s (seconds in the cache's first pass)."""
    n = n_chunks_for(len(examples), cfg.micro_batch, cfg.negatives == "micro", embedder.device)
    return step_over_parts(step_module, embedder, split(examples, n), lambda part: make_chunk(embedder, part), cfg)


def step_over_parts(step_module: nn.Module, embedder: TraceModel, parts: list[Sized], build: Build,
                    cfg: TrainConfig) -> dict:
    """train_step over parts already split, each turned into model inputs by build(part) (once per pass)."""
    if cfg.negatives not in NEGATIVES:
        raise ValueError(f"--negatives must be one of {'|'.join(NEGATIVES)}, got {cfg.negatives!r}")
    if cfg.negatives == "micro":
        return _micro_step(step_module, embedder, parts, build, cfg)
    return cache_step(step_module, embedder, parts, build, cfg)


def cache_step(step_module: nn.Module, embedder: TraceModel, parts: list, build: Build, cfg: TrainConfig) -> dict:
    """The gradient cache's three phases over this rank's parts."""
    device = embedder.device
    inner = getattr(step_module, "module", step_module)  # the first pass bypasses DDP: no gradients to reduce
    reps = forward_no_grad(inner, parts, build, device)
    cache = build_cache(reps, cfg, device)
    ce, route = forward_backward(step_module, parts, build, reps, cache, cfg, device)
    return {"loss": cfg.ce_weight * ce + cfg.nce_weight * cache.nce + cfg.route_weight * route, "ce": ce,
            "nce": cache.nce, "route": route, "rows": cache.rows, "tokens": reps.tokens,
            "nce_candidates": cache.rows, "extra_pass_s": reps.seconds}


def forward_no_grad(inner: nn.Module, parts: list, build: Build, device: torch.device) -> Reps:
    """Phase 1: every part's embeddings without autograd, and the random state each forward started from."""
    t0 = time.perf_counter()
    states, q_parts, c_parts, keys, n_tokens, n_routed, tokens = [], [], [], [], [], [], 0
    with torch.no_grad(), _amp(device):
        for part in parts:
            states.append(RandContext(device))
            if (ch := build(part)) is not None:
                q, c, _ = inner.embed(ch.q, ch.c)
                q_parts += [q]
                c_parts += [c]
                keys += ch.keys
                tokens += ch.tokens
            n_tokens.append(ch.n_tokens if ch else 0)
            n_routed.append(ch.n_routed if ch else 0)
    seconds = time.perf_counter() - t0
    dim = inner.embedder.base.config.text_config.hidden_size
    q_local = torch.cat(q_parts) if q_parts else torch.zeros(0, dim, device=device)
    c_local = torch.cat(c_parts) if c_parts else torch.zeros(0, dim, device=device)
    return Reps(q_local, c_local, keys, states, n_tokens, n_routed, tokens, seconds)


def build_cache(reps: Reps, cfg: TrainConfig, device: torch.device) -> Cache:
    """Phase 2: InfoNCE over the embeddings of every rank (duplicates of a positive left out of its denominator)
    and its gradient with respect to this rank's embeddings."""
    q_all, offset = gather_with_grad(reps.q)
    c_all, _ = gather_with_grad(reps.c)
    keys = [k for rank_keys in gather_objects(reps.keys) for k in rank_keys]
    all_tokens, all_routed = (max(1, n) for n in sum_over_ranks([sum(reps.n_tokens), sum(reps.n_routed)], device))
    q_all, c_all = q_all.detach().requires_grad_(True), c_all.detach().requires_grad_(True)
    with torch.enable_grad():
        nce = contrastive_ce(q_all, c_all, cfg.temperature, 0, same_candidate_mask(keys).to(q_all.device))
        grad_q, grad_c = torch.autograd.grad(cfg.nce_weight * nce, (q_all, c_all))
    return Cache(grad_q[offset:offset + len(reps.q)], grad_c[offset:offset + len(reps.c)], float(nce.detach()),
                 len(keys), all_tokens, all_routed)


def forward_backward(step_module: nn.Module, parts: list, build: Build, reps: Reps, cache: Cache,
                     cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """Phase 3: each part again with autograd, from its phase-1 random state, back-propagating its embeddings'
    cached gradients and its share of CE and routing CE. Returns (CE, routing CE) over the global batch."""
    world = world_size()
    ce_sum = route_sum = 0.0
    row = 0
    for k, part in enumerate(parts):
        ch = build(part)
        with _sync_on(step_module, k == len(parts) - 1):
            with reps.states[k], _amp(device):
                q, c, ce, route = step_module(ch.q if ch else None, ch.c if ch else None)
            g_q, g_c = cache.grad_q[row:row + len(q)], cache.grad_c[row:row + len(q)]
            surrogate = ((q * g_q).sum() + (c * g_c).sum() + cfg.ce_weight * ce * reps.n_tokens[k] / cache.all_tokens
                         + cfg.route_weight * route * reps.n_routed[k] / cache.all_routed)
            (surrogate * world).backward()  # DDP averages over ranks; the surrogate is this rank's share
        row += len(q)
        ce_sum += float(ce.detach()) * reps.n_tokens[k]
        route_sum += float(route.detach()) * reps.n_routed[k]
    ce_sum, route_sum = sum_over_ranks([ce_sum, route_sum], device)
    return ce_sum / cache.all_tokens, route_sum / cache.all_routed


def _micro_step(step_module: nn.Module, embedder: TraceModel, parts: list, build: Build, cfg: TrainConfig) -> dict:
    sums, tokens = {"loss": 0.0, "ce": 0.0, "nce": 0.0, "route": 0.0}, 0
    for k, part in enumerate(parts):
        ch = build(part)
        with _sync_on(step_module, k == len(parts) - 1):
            with _amp(embedder.device):
                q, c, ce, route = step_module(ch.q if ch else None, ch.c if ch else None)
            nce = info_nce(q, c, cfg.temperature, same_candidate_mask(ch.keys) if ch else None)
            loss = cfg.ce_weight * ce + cfg.nce_weight * nce + cfg.route_weight * route
            (loss / len(parts)).backward()
        tokens += ch.tokens if ch else 0
        for name, v in (("loss", loss), ("ce", ce), ("nce", nce), ("route", route)):
            sums[name] += float(v.detach()) / len(parts)
    world = world_size()
    averaged = sum_over_ranks(list(sums.values()), embedder.device)  # each rank's mean over its chunks, then ranks
    rows = int(sum_over_ranks([sum(len(p) for p in parts)], embedder.device)[0])
    return {**{name: v / world for name, v in zip(sums, averaged, strict=True)}, "rows": rows, "tokens": tokens,
            "nce_candidates": rows / len(parts), "extra_pass_s": 0.0}


def _amp(device: torch.device):
    """bf16 autocast for the model's forwards on GPU; the losses over embeddings stay in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _sync_on(step_module: nn.Module, sync: bool):
    """DDP reduces gradients in the last chunk's backward only (no_sync before it)."""
    return step_module.no_sync() if not sync and hasattr(step_module, "no_sync") else nullcontext()
