"""A training run set up: this rank's place, the model (from the tiny base, --model, or a full fine-tune's
checkpoint), seeded; the step module (DDP over several ranks), the data, the optimizer and its schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from trainer.modeling.checkpoint import ModelConfig
from trainer.modeling.model import TraceModel
from trainer.training.config import TrainConfig
from trainer.training.data import TrainData
from trainer.training.ranks import Ranks, barrier
from trainer.training.rng import seed_all
from trainer.training.step import TrainStep

TINY_BASE = "tiny_base"  # --model tiny: the random base model is written to OUTPUT_DIR/tiny_base


@dataclass
class Run:
    cfg: TrainConfig
    ranks: Ranks
    base_ref: str  # the base model as checkpoints name it (TINY_BASE for the tiny model)
    embedder: TraceModel
    step_module: nn.Module  # TrainStep, in DDP over several ranks
    data: TrainData
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total: int  # optimizer steps of the whole run
    step: int = 0  # optimizer steps taken

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)


def set_up(cfg: TrainConfig, ranks: Ranks, resume: Path | None) -> Run:
    """Everything a run needs before its first step, in the order that fixes its random draws; `resume` is the
    checkpoint it will resume from (a full fine-tune loads its weights from there)."""
    base, base_ref = base_model(cfg, ranks)
    if resume is not None and cfg.lora_r == 0:  # full fine-tuning: the checkpoint folder is the model
        base = str(resume)
    seed_all(cfg.seed)
    embedder = TraceModel.from_base(base, device=ranks.device, **model_fields(cfg))
    embedder.train()
    step_module: nn.Module = TrainStep(embedder)
    if ranks.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None)
    data = TrainData(cfg.data, cfg.global_batch, cfg.seed, cfg.mbeir_root, ranks.rank, ranks.world)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * data.steps_per_epoch()))
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    return Run(cfg, ranks, base_ref, embedder, step_module, data, params, optimizer, scheduler, total)


def base_model(cfg: TrainConfig, ranks: Ranks) -> tuple[str, str]:
    """(where to load the base model from, how checkpoints name it); --model tiny writes the random tiny base
    into the output folder first (rank 0, once)."""
    if cfg.model != "tiny":
        return cfg.model, cfg.model
    tiny = Path(cfg.output_dir) / TINY_BASE
    if ranks.main and not (tiny / "config.json").exists():
        from trainer.modeling.tiny import save_tiny_base

        save_tiny_base(tiny, seed=cfg.seed)
    barrier()
    return str(tiny), TINY_BASE


def model_fields(cfg: TrainConfig) -> dict:
    """The ModelConfig fields of a TrainConfig (image_max_pixels 0, the flag's "keep the checkpoint's", is None)."""
    values = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig) if f.name != "base_model"}
    return {**values, "image_max_pixels": cfg.image_max_pixels or None}


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
