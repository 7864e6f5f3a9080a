"""TRACE joint loss (PAPER.md §3): CE on the query-side target tokens + InfoNCE with in-batch negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.modeling.processor import IGNORE
from trainer.training.config import TrainConfig


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    nce: torch.Tensor
    n_target_tokens: int


def target_ce(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """Next-token CE over target tokens only (reasoning, answer and <|emb|>): the LM head runs at those
    positions alone, never over the full vocabulary at every position (ENVIRONMENT.md, GPU)."""
    shift = labels[:, 1:].to(hidden.device)
    keep = shift != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = lm_head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, shift[keep]), n


def route_ce(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """CE of each row's first target token — the routing decision (<|emb|> at once, or start reasoning) —
    averaged over rows, so a long reasoning target weighs its routing token as much as a direct row does."""
    has = (labels != IGNORE).any(-1)
    if not bool(has.any()):
        return hidden.sum() * 0.0
    labels, hidden = labels[has].to(hidden.device), hidden[has]
    first = (labels != IGNORE).int().argmax(-1)
    rows = torch.arange(len(labels), device=hidden.device)
    return F.cross_entropy(lm_head(hidden[rows, first - 1]).float(), labels[rows, first])


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(x of every rank concatenated, offset of this rank's rows). Differentiable: gradients flow back to each
    rank's own slice. Ranks may hold different row counts (skipped bad rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = F.pad(x.contiguous(), (0, 0, 0, max(sizes) - len(x)))
    parts = all_gather(padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]), sum(sizes[: dist.get_rank()])


def same_candidate_mask(keys: list[str]) -> torch.Tensor:
    """(B, B) True where candidate j is the same item as row i's positive but j != i: a false negative."""
    ids = {}
    key_ids = torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)
    return (key_ids[:, None] == key_ids[None, :]) & ~torch.eye(len(keys), dtype=torch.bool)


def contrastive_ce(q: torch.Tensor, c: torch.Tensor, temperature: float, offset: int = 0,
                   false_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Query i against every candidate in c; its positive is candidate offset + i. false_negatives
    (len(q), len(q)), optional: duplicates of row i's positive among candidates offset.., left out of the
    denominator."""
    if len(q) == 0:  # a rank or micro-batch left without rows (skipped bad rows): nothing to score
        return (q.sum() + c.sum()) * 0.0
    logits = q @ c.T / temperature
    if false_negatives is not None and bool(false_negatives.any()):
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[:, offset:offset + len(q)] = false_negatives.to(logits.device)
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(q), device=logits.device) + offset)


def info_nce(q: torch.Tensor, c: torch.Tensor, temperature: float,
             false_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's query i against every candidate of every rank; its positive is this rank's candidate i.
    false_negatives (B, B), optional: this rank's duplicates of the positive, left out of the denominator
    (duplicates on other ranks are not detected; the gradient cache, trainer/training/gradcache.py, masks them all)."""
    c_all, offset = gather_with_grad(c)
    return contrastive_ce(q, c_all, temperature, offset, false_negatives)


def trace_loss(q_emb: torch.Tensor, c_emb: torch.Tensor, q_hidden: torch.Tensor, q_labels: torch.Tensor,
               lm_head: torch.nn.Module, temperature: float = TrainConfig.temperature,
               ce_weight: float = TrainConfig.ce_weight, nce_weight: float = TrainConfig.nce_weight) -> LossParts:
    """L = ce_weight·CE + nce_weight·InfoNCE (defaults: TrainConfig's, PAPER.md §3)."""
    ce, n = target_ce(q_hidden, q_labels, lm_head)
    nce = info_nce(q_emb, c_emb, temperature)
    return LossParts(ce_weight * ce + nce_weight * nce, ce.detach(), nce.detach(), n)
