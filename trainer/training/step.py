"""TrainStep: the differentiable part of one chunk (embeddings and the CE terms) in one module call, the unit that
the gradient cache (trainer/training/gradcache.py) runs and DDP wraps."""

from __future__ import annotations

import torch
from torch import nn

from trainer.modeling.model import TraceModel
from trainer.training.loss import route_ce, target_ce


class TrainStep(nn.Module):
    """The whole differentiable step of one chunk in one forward, so DDP sees every trainable parameter use."""

    def __init__(self, embedder: TraceModel):
        super().__init__()
        self.embedder = embedder

    def embed(self, q_batch: dict, c_batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query embeddings, candidate embeddings, query hidden states)."""
        emb = self.embedder
        q_emb, q_hidden = emb.embed_sequences(q_batch)
        h = emb.hidden(c_batch).last_hidden_state[:, -1]  # left-padded: the state feeding <|emb|>, as at inference
        return q_emb, torch.nn.functional.normalize(h.float(), dim=-1), q_hidden

    def forward(self, q_batch: dict | None, c_batch: dict | None):
        """(query embeddings, candidate embeddings, target-token CE, first-target-token (routing) CE). Every
        trainable parameter enters the graph (times 0 where unused, e.g. the vision merger in a text-only
        chunk), so DDP needs no find_unused_parameters; None batches (a rank left without rows) give empty
        embeddings and zero losses."""
        touch = sum(p.view(-1)[0] for p in self.parameters() if p.requires_grad) * 0.0
        if q_batch is None:
            empty = torch.zeros(0, self.embedder.base.config.text_config.hidden_size, device=touch.device)
            return empty, empty, touch, touch
        q_emb, c_emb, q_hidden = self.embed(q_batch, c_batch)
        ce, _ = target_ce(q_hidden, q_batch["labels"], self.embedder.lm_head)
        route = route_ce(q_hidden, q_batch["labels"], self.embedder.lm_head)
        return q_emb, c_emb, ce + touch, route
