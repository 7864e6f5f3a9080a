"""Every training default in one place, with the paper section it comes from (shared PAPER.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from common.errors import ConfigError
from trainer.modeling.checkpoint import CONFIG_RANGES, ModelConfig
from trainer.training.telemetry import check_report_to

NEGATIVES = ("global", "micro")  # global: the gradient cache (PAPER.md §3 batch); micro: the ablation


@dataclass
class TrainConfig:
    data: str = ""  # M-BEIR-CoT folder (DATA/data/*.parquet), a glob, or any fsspec path
    model: str = "tiny"  # Qwen2-VL / Qwen2.5-VL name or path, or "tiny" (offline random model, trainer/modeling/tiny.py)
    output_dir: str = "out/trace"
    overwrite: bool = False  # write into an output_dir holding other files (never replacing them: common/outdir.py)
    mbeir_root: str | None = None  # images referenced by relative path in the rows
    # optimisation
    lr: float = 2e-4  # PAPER.md §3: lr 2e-4, AdamW
    warmup_ratio: float = 0.03  # PAPER.md §3: LamRA default warm-up 3 %, then cosine decay
    epochs: float = 1.0  # PAPER.md §3: 1 epoch
    global_batch: int = 1024  # PAPER.md §3: global batch 1024, all ranks together; with --negatives global
    # it is also the InfoNCE batch (every query against all global_batch candidates, negatives across GPUs)
    micro_batch: int = 8  # rows per GPU per forward: memory only (the gradient cache keeps the loss exact)
    negatives: str = "global"  # global: InfoNCE over the global batch (gradient cache, trainer/training/gradcache.py);
    # micro: per-forward InfoNCE over micro_batch x world size candidates, plain accumulation (the ablation)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    # loss
    temperature: float = 0.05  # PAPER.md §3: not given; LamRA default 0.05
    ce_weight: float = 1.0  # PAPER.md §3: L = 1.0·CE + 1.0·InfoNCE
    nce_weight: float = 1.0
    route_weight: float = 0.0  # extra CE on each row's first target token; not in the paper (0), tiny mode only
    # model: the paper's numbers are ModelConfig's (trainer/modeling/checkpoint.py)
    lora_r: int = ModelConfig.lora_r
    lora_alpha: int = ModelConfig.lora_alpha
    lora_dropout: float = ModelConfig.lora_dropout
    gradient_checkpointing: bool = ModelConfig.gradient_checkpointing
    max_text_tokens: int = ModelConfig.max_text_tokens
    max_target_tokens: int = ModelConfig.max_target_tokens
    image_max_pixels: int = 0  # 0: the checkpoint's image processor setting (ModelConfig's None)
    train_vision: bool = ModelConfig.train_vision
    # bookkeeping
    seed: int = 0
    save_every: int = 0  # optimizer steps between checkpoints (0: only the final one)
    log_every: int = 10
    resume: str = ""  # a checkpoint-N folder, or "auto" for the newest one in output_dir
    progress: bool = True  # tqdm bar on rank 0
    report_to: str = "none"  # none, tensorboard or wandb: where each step's scalars also go (training/telemetry.py)


# Offline tiny mode: small enough for CPU tests; applied unless the flag is given explicitly. The model has
# random weights, so it is fully fine-tuned (lora_r=0; LoRA on random weights cannot learn the routing),
# vision tower included (a frozen random encoder leaves image candidates near-identical: R@5 at chance),
# over 8 epochs of the sample (4 gave half the R@5 gain); the routing token gets its own CE (a 32-token
# target would otherwise weigh it 1/32 against the direct rows' single <|emb|>), and targets are cut to 32
# tokens to keep CPU steps cheap. lr 3e-4: at 1e-3 InfoNCE collapses every embedding to one vector (loss
# stuck at ln(batch)); temperature 0.1: on the sample it gained more held-out R@5 than 0.2 (PAPER.md §3
# gives none; LamRA uses 0.05).
TINY_DEFAULTS = {"global_batch": 16, "micro_batch": 8, "lora_r": 0, "lr": 3e-4, "epochs": 8.0,
                 "route_weight": 1.0, "max_text_tokens": 96, "max_target_tokens": 32, "train_vision": True,
                 "temperature": 0.1}


def config_fields() -> list:
    return list(fields(TrainConfig))


# Range of each numeric flag: field -> (test, what the flag must be). Cross-field rules are in validate().
_RANGES = {
    "lr": (lambda v: v > 0, "above 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "epochs": (lambda v: v >= 0, "0 or more"),
    "global_batch": (lambda v: v >= 2, "at least 2 (InfoNCE needs a negative)"),
    "micro_batch": (lambda v: v >= 1, "at least 1"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "max_grad_norm": (lambda v: v > 0, "above 0"),
    "max_steps": (lambda v: v >= 0, "0 (use --epochs) or more"),
    "temperature": (lambda v: v > 0, "above 0"),
    "ce_weight": (lambda v: v >= 0, "0 or more"),
    "nce_weight": (lambda v: v >= 0, "0 or more"),
    "route_weight": (lambda v: v >= 0, "0 or more"),
    **{name: CONFIG_RANGES[name]  # the model's own fields: trace_config.json's rules
       for name in ("lora_r", "lora_alpha", "lora_dropout", "max_text_tokens", "max_target_tokens")},
    "image_max_pixels": (lambda v: v >= 0, "0 (the checkpoint's setting) or more"),
    "save_every": (lambda v: v >= 0, "0 (only the final checkpoint) or more"),
    "log_every": (lambda v: v >= 1, "at least 1"),
}


def validate(cfg: TrainConfig) -> TrainConfig:
    """The config unchanged, or ConfigError naming the first flag out of range and what it must be."""
    for name, (ok, want) in _RANGES.items():
        value = getattr(cfg, name)
        if value != value or not ok(value):  # value != value: NaN
            raise ConfigError(f"--{name} {value} is out of range: it must be {want}")
    if cfg.negatives not in NEGATIVES:
        raise ConfigError(f"--negatives {cfg.negatives!r} is not one of {', '.join(NEGATIVES)}: global (InfoNCE over "
                          "the whole global batch, the paper's) or micro (over each micro-batch, the ablation)")
    if cfg.micro_batch > cfg.global_batch:
        raise ConfigError(f"--micro_batch {cfg.micro_batch} is above --global_batch {cfg.global_batch}: the "
                          "micro-batch is a slice of the global batch")
    if cfg.max_steps == 0 and cfg.epochs == 0:
        raise ConfigError("--epochs 0 with --max_steps 0 trains nothing: give --epochs above 0 or --max_steps")
    if cfg.ce_weight == cfg.nce_weight == cfg.route_weight == 0:
        raise ConfigError("--ce_weight, --nce_weight and --route_weight are all 0: nothing to train")
    check_report_to(cfg.report_to)
    return cfg
