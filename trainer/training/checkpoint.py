"""Training checkpoints: OUTPUT_DIR/checkpoint-N is a model checkpoint (trainer/modeling/checkpoint.py) plus
training_state.pt (optimizer, scheduler, sampler position, every rank's random state, step) for exact resume.
Saving one, resuming from one, and checking that one can be resumed with the flags given.

training_state.pt holds tensors, dicts, lists, numbers and strings only (the random states too,
trainer/training/rng.py) and is read with torch.load(weights_only=True): a checkpoint from elsewhere cannot run
code on resume, and a state that would need pickle (an older version's, or a crafted one) is refused, never run.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from common.errors import ConfigError
from trainer.modeling.checkpoint import ADAPTER_DIR, read_checkpoint
from trainer.modeling.config_check import first_line
from trainer.training.config import TrainConfig
from trainer.training.ranks import barrier, gather_objects
from trainer.training.rng import generator_states, restore_generators
from trainer.training.run import TINY_BASE, Run

STATE_FILE = "training_state.pt"
STATE_KEYS = ("optimizer", "scheduler", "sampler", "rng", "step")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE_FILE).exists()]
    return max(found)[1] if found else None


def resume_from(cfg: TrainConfig) -> Path | None:
    """The checkpoint --resume names: the newest one in output_dir for "auto", none for ""."""
    return latest_checkpoint(cfg.output_dir) if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)


def save(run: Run, path: Path) -> None:
    """Write checkpoint-N (rank 0) with every rank's random state; every rank returns once it is written."""
    rng = generator_states()
    if run.ranks.world > 1:
        rng = gather_objects(rng)
    if run.ranks.main:
        run.embedder.save(path, base_model=run.base_ref if run.base_ref != TINY_BASE else f"../{TINY_BASE}")
        torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                    "sampler": run.data.sampler.state_dict(), "rng": rng, "step": run.step}, path / STATE_FILE)
    barrier()


def load_state(checkpoint: Path) -> dict:
    """checkpoint/training_state.pt, read without running code (torch.load with weights_only=True); ConfigError
    when it would need pickle (an older version's numpy/Python random states, or a crafted file), or is damaged."""
    where = f"--resume {checkpoint}: {STATE_FILE}"
    try:
        state = torch.load(checkpoint / STATE_FILE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{where} was written by an older version or elsewhere and is not loaded (it would "
                          "need pickle); resume from a checkpoint written by this version or start fresh") from e
    except Exception as e:  # noqa: BLE001 - any unreadable state file is the same bad input
        raise ConfigError(f"{where} cannot be read ({type(e).__name__}: {first_line(e)}); the checkpoint is "
                          "damaged: resume from an earlier checkpoint-N") from e
    if not isinstance(state, dict):
        raise ConfigError(f"{where} holds a {type(state).__name__}, not a training state; the checkpoint is "
                          "damaged: resume from an earlier checkpoint-N")
    return state


def resume(run: Run, path: Path) -> None:
    """Bring a freshly set-up run to the checkpoint's step: adapter weights (a full fine-tune was loaded from the
    checkpoint already), optimizer, scheduler, sampler position and this rank's random state."""
    if run.cfg.lora_r > 0:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        adapter = load_peft_weights(str(path / ADAPTER_DIR), device=str(run.ranks.device))
        set_peft_model_state_dict(run.embedder.model, adapter)
    state = load_state(path)
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ConfigError(f"--resume {path}: {STATE_FILE} lacks {', '.join(missing)}; it was not written by "
                          "trainer.train: resume from a checkpoint-N it wrote, or start fresh")
    try:
        _apply(run, state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--resume {path}: {STATE_FILE} does not fit this run ({type(e).__name__}: "
                          f"{first_line(e)}); resume from a checkpoint this version wrote with the same flags, "
                          "or start fresh") from e


def _apply(run: Run, state: dict) -> None:
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.data.sampler.load_state_dict(state["sampler"])
    rng = state["rng"]
    restore_generators(rng[run.ranks.rank] if isinstance(rng, list) else rng)
    run.step = int(state["step"])


def check_resume(cfg: TrainConfig, resume: Path) -> None:
    """ConfigError unless `resume` is a training checkpoint of the same base model and LoRA rank, whose state
    loads without pickle."""
    if not (resume / STATE_FILE).is_file():
        raise ConfigError(f"--resume {resume} is not a training checkpoint (no {STATE_FILE}): give "
                          "OUTPUT_DIR/checkpoint-N, or --resume auto for the newest one")
    saved = read_checkpoint(resume, flag="--resume")
    if saved.lora_r != cfg.lora_r:
        raise ConfigError(f"--resume {resume} was trained with --lora_r {saved.lora_r}, not {cfg.lora_r}: pass "
                          f"--lora_r {saved.lora_r} to resume it")
    _check_same_base(cfg, resume, saved.base_model)
    sampler = load_state(resume).get("sampler", {})
    if not isinstance(sampler, dict):
        raise ConfigError(f"--resume {resume}: {STATE_FILE} holds no sampler position; the checkpoint is damaged: "
                          "resume from an earlier checkpoint-N")
    if sampler.get("batch_size", cfg.global_batch) != cfg.global_batch or sampler.get("seed", cfg.seed) != cfg.seed:
        raise ConfigError(f"--resume {resume} was trained with --global_batch {sampler.get('batch_size')} --seed "
                          f"{sampler.get('seed')}: pass the same values to resume it (a step's rows depend on both)")


def _check_same_base(cfg: TrainConfig, resume: Path, saved_base: str) -> None:
    """ConfigError unless the checkpoint was trained from --model (a full fine-tune, which stores the whole model:
    from a model of the same architecture)."""
    trained_from = "tiny" if saved_base == f"../{TINY_BASE}" else saved_base
    if saved_base != ".":
        same = trained_from == cfg.model or (Path(trained_from).is_dir() and Path(cfg.model).is_dir()
                                             and Path(trained_from).resolve() == Path(cfg.model).resolve())
    else:
        base = Path(cfg.output_dir) / TINY_BASE if cfg.model == "tiny" else Path(cfg.model)
        same = not (base / "config.json").is_file() or _architecture(base) == _architecture(resume)
        trained_from = f"a model of another architecture ({_architecture(resume)})"
    if not same:
        raise ConfigError(f"--resume {resume} was trained from {trained_from}, not --model {cfg.model}: resume it "
                          "with the --model it was trained from, or start a new --output_dir")


def _architecture(folder: Path) -> dict:
    """The config.json fields that fix the shape of a model's weights."""
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    return {"model_type": cfg.get("model_type"), **{k: text.get(k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}}
