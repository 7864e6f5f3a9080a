"""One optimizer step of the TRACE joint loss over a global batch, in micro-batches ("chunks").

`--negatives global` (default) is a gradient cache (idea: Gao et al. 2021, arXiv 2101.06983): pass 1 embeds
every chunk without autograd; the embeddings of all ranks are gathered and InfoNCE over the whole global batch
(every query against every candidate) gives its gradient with respect to the embeddings; pass 2 re-runs each
chunk with autograd (random state replayed, so dropout agrees) and back-propagates
dot(embedding, cached gradient) plus the chunk's share of CE and routing CE. The gradients equal one forward and
backward over the whole global batch, with memory bounded by the micro-batch.
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

from trainer.modeling.processor import IGNORE
from trainer.training.config import NEGATIVES, TrainConfig
from trainer.training.data import Example
from trainer.training.loss import contrastive_ce, gather_with_grad, info_nce, same_candidate_mask


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


def split(examples: list[Example], n_chunks: int) -> list[list[Example]]:
    """This rank's rows in n_chunks contiguous near-equal parts (empty where there are fewer rows)."""
    return [examples[k * len(examples) // n_chunks:(k + 1) * len(examples) // n_chunks] for k in range(n_chunks)]


def make_chunk(embedder, part: list[Example]) -> Chunk | None:
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
    if same_on_all_ranks and _world() > 1:
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return int(n)


def train_step(step_module: nn.Module, embedder, examples: list[Example], cfg: TrainConfig) -> dict:
    """Forward and backward of one optimizer step over this rank's share of the global batch (gradients are
    left in .grad, reduced across ranks by DDP). Returns the step's loss parts over the whole global batch and
    its bookkeeping: rows (all ranks), tokens (this rank), nce_candidates (candidates in each InfoNCE
    denominator), extra_pass_s (seconds in the cache's first pass)."""
    n = n_chunks_for(len(examples), cfg.micro_batch, cfg.negatives == "micro", embedder.device)
    return step_over_parts(step_module, embedder, split(examples, n), lambda part: make_chunk(embedder, part), cfg)


def step_over_parts(step_module: nn.Module, embedder, parts: list[Sized], build: Callable[[Any], Chunk | None],
                    cfg: TrainConfig) -> dict:
    """train_step over parts already split, each turned into model inputs by build(part) (once per pass)."""
    if cfg.negatives not in NEGATIVES:
        raise ValueError(f"--negatives must be one of {'|'.join(NEGATIVES)}, got {cfg.negatives!r}")
    if cfg.negatives == "micro":
        return _micro_step(step_module, embedder, parts, build, cfg)
    return _cached_step(step_module, embedder, parts, build, cfg)


def _amp(device: torch.device):
    """bf16 autocast for the model's forwards on GPU; the losses over embeddings stay in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _cached_step(step_module: nn.Module, embedder, parts: list, build, cfg: TrainConfig) -> dict:
    world, device, t0 = _world(), embedder.device, time.perf_counter()
    inner = getattr(step_module, "module", step_module)  # pass 1 bypasses DDP: no gradients to reduce
    rng, q_parts, c_parts, keys, n_tokens, n_routed, tokens = [], [], [], [], [], [], 0
    with torch.no_grad(), _amp(device):
        for part in parts:
            rng.append(_rng_state(device))
            if (ch := build(part)) is not None:
                q, c, _ = inner.embed(ch.q, ch.c)
                q_parts += [q]
                c_parts += [c]
                keys += ch.keys
                tokens += ch.tokens
            n_tokens.append(ch.n_tokens if ch else 0)
            n_routed.append(ch.n_routed if ch else 0)
    extra_s = time.perf_counter() - t0
    dim = embedder.base.config.text_config.hidden_size
    q_local = torch.cat(q_parts) if q_parts else torch.zeros(0, dim, device=device)
    c_local = torch.cat(c_parts) if c_parts else torch.zeros(0, dim, device=device)
    q_all, offset = gather_with_grad(q_local)
    c_all, _ = gather_with_grad(c_local)
    keys = _gather_keys(keys)
    all_tokens, all_routed = (max(1, n) for n in _sum([sum(n_tokens), sum(n_routed)], device))
    q_all, c_all = q_all.detach().requires_grad_(True), c_all.detach().requires_grad_(True)
    with torch.enable_grad():
        nce = contrastive_ce(q_all, c_all, cfg.temperature, 0, same_candidate_mask(keys).to(q_all.device))
        grad_q, grad_c = torch.autograd.grad(cfg.nce_weight * nce, (q_all, c_all))
    grad_q, grad_c = grad_q[offset:offset + len(q_local)], grad_c[offset:offset + len(c_local)]

    ce_sum = route_sum = 0.0
    row = 0
    for k, part in enumerate(parts):
        ch = build(part)
        _set_rng_state(rng[k], device)
        with _sync_on(step_module, k == len(parts) - 1):
            with _amp(device):
                q, c, ce, route = step_module(ch.q if ch else None, ch.c if ch else None)
            g_q, g_c = grad_q[row:row + len(q)], grad_c[row:row + len(q)]
            surrogate = ((q * g_q).sum() + (c * g_c).sum() + cfg.ce_weight * ce * n_tokens[k] / all_tokens
                         + cfg.route_weight * route * n_routed[k] / all_routed)
            (surrogate * world).backward()  # DDP averages over ranks; the surrogate is this rank's share
        row += len(q)
        ce_sum += float(ce.detach()) * n_tokens[k]
        route_sum += float(route.detach()) * n_routed[k]
    ce_sum, route_sum = _sum([ce_sum, route_sum], device)
    ce, route, nce = ce_sum / all_tokens, route_sum / all_routed, float(nce.detach())
    return {"loss": cfg.ce_weight * ce + cfg.nce_weight * nce + cfg.route_weight * route, "ce": ce, "nce": nce,
            "route": route, "rows": len(keys), "tokens": tokens, "nce_candidates": len(keys),
            "extra_pass_s": extra_s}


def _micro_step(step_module: nn.Module, embedder, parts: list, build, cfg: TrainConfig) -> dict:
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
    world = _world()
    averaged = _sum(list(sums.values()), embedder.device)  # each rank's mean over its chunks, then over ranks
    rows = int(_sum([sum(len(p) for p in parts)], embedder.device)[0])
    return {**{name: v / world for name, v in zip(sums, averaged, strict=True)}, "rows": rows, "tokens": tokens,
            "nce_candidates": rows / len(parts), "extra_pass_s": 0.0}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks."""
    if _world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _gather_keys(keys: list[str]) -> list[str]:
    if _world() == 1:
        return keys
    parts: list = [None] * _world()
    dist.all_gather_object(parts, keys)
    return [k for p in parts for k in p]


def _sync_on(step_module: nn.Module, sync: bool):
    """DDP reduces gradients in the last chunk's backward only (no_sync before it)."""
    return step_module.no_sync() if not sync and hasattr(step_module, "no_sync") else nullcontext()


def _rng_state(device: torch.device) -> tuple:
    """The generators dropout draws from: the CPU one, and the device's own on GPU."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
