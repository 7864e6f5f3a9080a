"""`python -m trainer.train --data DIR --model NAME_OR_PATH|tiny --output_dir CKPT [...]` (also under torchrun).

One optimizer step = global_batch rows of one task family (trainer/training/data.py), split over the ranks and into
forwards of at most micro_batch rows; with --negatives global (default) InfoNCE scores every query of the
global batch against all its candidates through a gradient cache (trainer/training/gradcache.py). Checkpoints hold the
adapter (LoRA, projector, <|emb|> rows), tokenizer, config, and training_state.pt (optimizer, scheduler, sampler position, RNG) for exact resume.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from common.cli import CliParser, run_cli, writable_folder
from common.errors import ConfigError
from common.outdir import check_output_dir, claim_output_dir
from trainer.modeling.checkpoint import ADAPTER_DIR, TRACE_CONFIG
from trainer.training.checkpoint import check_resume, resume_from
from trainer.training.config import TINY_DEFAULTS, TrainConfig, config_fields, validate
from trainer.training.loop import CONFIG_FILE, LOG_FILE, summary, train
from trainer.training.run import TINY_BASE
from trainer.training.telemetry import TENSORBOARD_DIR

PROG = "python -m trainer.train"
COMMAND = "trainer.train"  # the output-folder marker's name (common/outdir.py)
# What a run writes in --output_dir: its records, checkpoints, the tiny base, telemetry, and the trained model
# itself (trainer/modeling/checkpoint.py: the model or adapter, tokenizer, image processor, trace_config.json).
OUTPUTS = (CONFIG_FILE, LOG_FILE, "checkpoint-[0-9]*/*", f"{TINY_BASE}/*", f"{TENSORBOARD_DIR}/*", "wandb/*",
           TRACE_CONFIG, f"{ADAPTER_DIR}/*", "model.safetensors", "model-*-of-*.safetensors",
           "model.safetensors.index.json", "config.json", "generation_config.json", "preprocessor_config.json",
           "processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
FLAG_HELP = {
    "output_dir": "new, empty, or an earlier trainer.train output (marked by .mbeir-cot.json, or holding "
                  f"{CONFIG_FILE}); locked while written; a run resumes from its checkpoints with --resume auto",
    "overwrite": "write into an --output_dir that holds other files: they stay untouched, and one named like a run's "
                 "outputs (config.json, tokenizer files, checkpoint-N/ ...) stops the run",
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; ConfigError for an unknown flag or a value out of range."""
    parser = CliParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in config_fields():
        kind = {"int": int, "float": float, "bool": _bool}.get(str(f.type).replace(" | None", ""), str)
        bare = {"nargs": "?", "const": True} if kind is _bool else {}  # --overwrite alone means true
        parser.add_argument(f"--{f.name}", type=kind, default=None, **bare,
                            help=FLAG_HELP.get(f.name, f"default: {f.default}"))
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
    and that the output folder may be written (common/outdir.py) and can be."""
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
    check_output_dir(cfg.output_dir, command=COMMAND, patterns=OUTPUTS, legacy=(CONFIG_FILE,),
                     overwrite=cfg.overwrite)  # every rank, before anything is written
    if "://" not in cfg.output_dir:
        writable_folder(cfg.output_dir)


def claim_output(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """The hold on --output_dir (common/outdir.py) while the run writes it; under torchrun rank 0 holds it for
    all ranks (only rank 0 writes there)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return claim_output_dir(cfg.output_dir, command=COMMAND, patterns=OUTPUTS, legacy=(CONFIG_FILE,),
                            overwrite=cfg.overwrite)


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
    with claim_output(cfg):
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
