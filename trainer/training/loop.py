"""`python -m trainer.train --data DIR --model NAME_OR_PATH|tiny --output_dir CKPT [...]` (also under torchrun).

One optimizer step = global_batch rows of one task family (trainer/training/data.py), split over the ranks and into
forwards of at most micro_batch rows; with --negatives global (default) InfoNCE scores every query of the
global batch against all its candidates through a gradient cache (trainer/training/gradcache.py). Checkpoints hold the
adapter (LoRA, projector, <|emb|> rows), tokenizer, config, and training_state.pt (optimizer, scheduler, sampler position, RNG) for exact resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.cli import CliParser, run_cli, writable_folder
from common.errors import ConfigError
from trainer.modeling.model import TraceEmbedder, read_checkpoint
from trainer.training.config import TINY_DEFAULTS, TrainConfig, config_fields, validate
from trainer.training.data import TrainData
from trainer.training.gradcache import train_step
from trainer.training.loss import route_ce, target_ce

PROG = "python -m trainer.train"
STATE_FILE = "training_state.pt"
TINY_BASE = "tiny_base"


class TrainStep(nn.Module):
    """The whole differentiable step of one chunk in one forward, so DDP sees every trainable parameter use."""

    def __init__(self, embedder: TraceEmbedder):
        super().__init__()
        self.embedder = embedder

    def embed(self, q_batch: dict, c_batch: dict):
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


def _dist() -> tuple[int, int, int]:
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE_FILE).exists()]
    return max(found)[1] if found else None


def cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(cfg: TrainConfig) -> list[dict]:
    """Run training; returns the per-step log records (rank 0 also writes them to output_dir/train_log.jsonl)."""
    rank, world, local_rank = _dist()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL object collectives (all_gather_object) use the current device
    out = Path(cfg.output_dir)
    base, base_ref = cfg.model, cfg.model
    if cfg.model == "tiny":
        base, base_ref = str(out / TINY_BASE), TINY_BASE
        if rank == 0 and not (out / TINY_BASE / "config.json").exists():
            from trainer.modeling.tiny import save_tiny_base

            save_tiny_base(out / TINY_BASE, seed=cfg.seed)
        if world > 1:
            dist.barrier()

    resume = latest_checkpoint(out) if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None and cfg.lora_r == 0:  # full fine-tuning: the checkpoint folder is the model
        base = str(resume)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    embedder = TraceEmbedder.from_base(
        base, device=device, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        gradient_checkpointing=cfg.gradient_checkpointing, max_text_tokens=cfg.max_text_tokens,
        max_target_tokens=cfg.max_target_tokens, image_max_pixels=cfg.image_max_pixels or None,
        train_vision=cfg.train_vision)
    embedder.train()
    step_module: nn.Module = TrainStep(embedder)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[local_rank] if device.type == "cuda" else None)

    data = TrainData(cfg.data, cfg.global_batch, cfg.seed, cfg.mbeir_root, rank, world)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * data.steps_per_epoch()))
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)

    step = 0
    if resume is not None:
        if cfg.lora_r > 0:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            adapter = load_peft_weights(str(resume / "adapter"), device=str(device))
            set_peft_model_state_dict(embedder.model, adapter)
        state = torch.load(resume / STATE_FILE, weights_only=False, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data.sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        step = state["step"]

    log: list[dict] = []
    log_file = out / "train_log.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True)
    batches = iter(data)
    while step < total:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        parts = train_step(step_module, embedder, next(batches), cfg)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        dt = time.perf_counter() - t0
        record = {"step": step, **{k: parts[k] for k in ("loss", "ce", "nce", "route")},
                  "lr": scheduler.get_last_lr()[0], "samples_per_s": parts["rows"] / dt,
                  "tokens_per_s": parts["tokens"] * world / dt, "nce_candidates": parts["nce_candidates"],
                  "extra_pass_share": parts["extra_pass_s"] / dt, "skipped": dict(data.decode.skipped)}
        log.append(record)
        if rank == 0:
            with open(log_file, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", ce=f"{parts['ce']:.3f}", nce=f"{parts['nce']:.3f}")
            if step % cfg.log_every == 0 and bar is None:
                print(json.dumps(record), flush=True)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total:
            _save(embedder, optimizer, scheduler, data, step, out / f"checkpoint-{step}", base_ref, rank, world)
    if rank == 0:
        embedder.save(out, base_model=base_ref)
    if bar is not None:
        bar.close()
    return log


def _save(embedder, optimizer, scheduler, data, step, path: Path, base_ref: str, rank: int, world: int) -> None:
    rng = _rng_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rng)
        rng = gathered
    if rank == 0:
        embedder.save(path, base_model=base_ref if base_ref != TINY_BASE else f"../{TINY_BASE}")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "sampler": data.sampler.state_dict(), "rng": rng, "step": step}, path / STATE_FILE)
    if world > 1:
        dist.barrier()


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; ConfigError for an unknown flag or a value out of range."""
    parser = CliParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in config_fields():
        kind = {"int": int, "float": float, "bool": _bool}.get(str(f.type).replace(" | None", ""), str)
        parser.add_argument(f"--{f.name}", type=kind, default=None, help=f"default: {f.default}")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None and k != "debug"}
    cfg = TrainConfig()
    if given.get("model", cfg.model) == "tiny":
        cfg = replace(cfg, **TINY_DEFAULTS)
    cfg = replace(cfg, **given)
    if not cfg.data:
        parser.error("--data is required (an M-BEIR-CoT folder, a glob or a Parquet file)")
    return validate(cfg)


def _bool(text: str) -> bool:
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return value


def check_inputs(cfg: TrainConfig) -> None:
    """Every path check that needs no model, before a model is loaded: data, base model, images, resume,
    and that the output folder can be written."""
    from trainer.training.data import list_shards

    list_shards(cfg.data)
    model = Path(cfg.model).expanduser()
    if cfg.model != "tiny":
        if model.is_dir() and not (model / "config.json").is_file():
            raise ConfigError(f"--model {cfg.model} is a folder without config.json: give a Qwen2-VL-family "
                              "checkpoint folder or a Hub name")
        if not model.exists() and cfg.model.startswith((".", "/", "~")):
            raise ConfigError(f"--model {cfg.model} does not exist: give a Qwen2-VL-family checkpoint folder, "
                              "a Hub name, or tiny")
    if cfg.mbeir_root and "://" not in cfg.mbeir_root and not Path(cfg.mbeir_root).is_dir():
        raise ConfigError(f"--mbeir_root {cfg.mbeir_root} is not a folder: give the M-BEIR root the rows' "
                          "image paths are relative to")
    resume = latest_checkpoint(cfg.output_dir) if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None:
        check_resume(cfg, resume)
    if "://" not in cfg.output_dir:
        writable_folder(cfg.output_dir)


def check_resume(cfg: TrainConfig, resume: Path) -> None:
    """ConfigError unless `resume` is a training checkpoint of the same base model and LoRA rank."""
    if not (resume / STATE_FILE).is_file():
        raise ConfigError(f"--resume {resume} is not a training checkpoint (no {STATE_FILE}): give "
                          "OUTPUT_DIR/checkpoint-N, or --resume auto for the newest one")
    saved = read_checkpoint(resume, flag="--resume")
    if saved.lora_r != cfg.lora_r:
        raise ConfigError(f"--resume {resume} was trained with --lora_r {saved.lora_r}, not {cfg.lora_r}: pass "
                          f"--lora_r {saved.lora_r} to resume it")
    trained_from = "tiny" if saved.base_model == f"../{TINY_BASE}" else saved.base_model
    if saved.base_model != ".":
        same = trained_from == cfg.model or (Path(trained_from).is_dir() and Path(cfg.model).is_dir()
                                             and Path(trained_from).resolve() == Path(cfg.model).resolve())
    else:  # a full fine-tune stores the whole model: compare its architecture with the base asked for
        base = Path(cfg.output_dir) / TINY_BASE if cfg.model == "tiny" else Path(cfg.model)
        same = not (base / "config.json").is_file() or _architecture(base) == _architecture(resume)
        trained_from = f"a model of another architecture ({_architecture(resume)})"
    if not same:
        raise ConfigError(f"--resume {resume} was trained from {trained_from}, not --model {cfg.model}: resume it "
                          "with the --model it was trained from, or start a new --output_dir")
    try:
        sampler = torch.load(resume / STATE_FILE, weights_only=False, map_location="cpu").get("sampler", {})
    except Exception as e:  # noqa: BLE001 - any unreadable state file is the same bad input
        raise ConfigError(f"--resume {resume}: {STATE_FILE} cannot be read ({type(e).__name__}: {e}); the "
                          "checkpoint is damaged: resume from an earlier checkpoint-N") from e
    if sampler.get("batch_size", cfg.global_batch) != cfg.global_batch or sampler.get("seed", cfg.seed) != cfg.seed:
        raise ConfigError(f"--resume {resume} was trained with --global_batch {sampler.get('batch_size')} --seed "
                          f"{sampler.get('seed')}: pass the same values to resume it (a step's rows depend on both)")


def _architecture(folder: Path) -> dict:
    """The config.json fields that fix the shape of a model's weights."""
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    return {"model_type": cfg.get("model_type"), **{k: text.get(k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}}


def summary(log: list[dict], cfg: TrainConfig) -> str:
    """The end-of-training line: steps, last losses, and every row, row group or shard skipped."""
    if not log:
        return f"nothing to train: {cfg.output_dir} is already at its last step"
    last = log[-1]
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(last.get("skipped", {}).items())) or "none"
    return (f"trained to step {last['step']} in {cfg.output_dir}: loss {last['loss']:.4f}; skipped: {skipped}")


def _main(argv: list[str]) -> None:
    cfg = parse_args(argv)
    check_inputs(cfg)
    log = train(cfg)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(summary(log, cfg), flush=True)
    if dist.is_initialized():
        dist.barrier()  # no rank may tear gloo down while another is still inside a collective
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Train; a bad flag, path or input is one line on stderr and exit status 2 (common.cli)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
