"""`python -m trainer.train --data DIR --model NAME_OR_PATH|tiny --output_dir CKPT [...]` (also under torchrun).

One optimizer step = global_batch rows of one task family (trainer/training/data.py), split over the ranks and into
forwards of at most micro_batch rows; with --negatives global (default) InfoNCE scores every query of the
global batch against all its candidates through a gradient cache (trainer/training/gradcache.py). Checkpoints hold the
adapter (LoRA, projector, <|emb|> rows), tokenizer, config, and training_state.pt (optimizer, scheduler, sampler position, RNG) for exact resume.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from common.cli import CliParser, run_cli, writable_folder
from common.errors import ConfigError
from trainer.training.checkpoint import check_resume, resume_from
from trainer.training.config import TINY_DEFAULTS, TrainConfig, config_fields, validate
from trainer.training.loop import summary, train

PROG = "python -m trainer.train"


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
    if cfg.model != "tiny":
        _check_model(cfg.model)
    if cfg.mbeir_root and "://" not in cfg.mbeir_root and not Path(cfg.mbeir_root).is_dir():
        raise ConfigError(f"--mbeir_root {cfg.mbeir_root} is not a folder: give the M-BEIR root the rows' "
                          "image paths are relative to")
    resume = resume_from(cfg)
    if resume is not None:
        check_resume(cfg, resume)
    if "://" not in cfg.output_dir:
        writable_folder(cfg.output_dir)


def _check_model(name: str) -> None:
    model = Path(name).expanduser()
    if model.is_dir() and not (model / "config.json").is_file():
        raise ConfigError(f"--model {name} is a folder without config.json: give a Qwen2-VL-family "
                          "checkpoint folder or a Hub name")
    if not model.exists() and name.startswith((".", "/", "~")):
        raise ConfigError(f"--model {name} does not exist: give a Qwen2-VL-family checkpoint folder, "
                          "a Hub name, or tiny")


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
