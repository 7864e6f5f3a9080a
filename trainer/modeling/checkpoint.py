"""The TRACE checkpoint folder: its config (ModelConfig, the paper's model numbers), how it is found (a local folder
or a Hub model repo), read, checked, written and loaded.

    trace_config.json         ModelConfig; base_model is the Qwen2-VL-family model the weights start from
                              ("." when the folder holds the whole model, a relative path is relative to the folder)
    adapter/                  lora_r > 0: LoRA on the language model, the vision merger, the <|emb|> rows (PEFT)
    *.safetensors             lora_r == 0: the whole fine-tuned model
    tokenizer and image processor files
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from common.errors import ConfigError
from trainer.modeling.config_check import Range, checked_fields, first_line, read_json_object
from trainer.modeling.processor import MAX_TARGET_TOKENS, MAX_TEXT_TOKENS, TraceProcessor

TRACE_CONFIG = "trace_config.json"
ADAPTER_DIR = "adapter"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass
class ModelConfig:
    base_model: str  # name or path of the Qwen2-VL / Qwen2.5-VL checkpoint
    lora_r: int = 128  # PAPER.md §3: LoRA r=128; 0 = no LoRA, fully fine-tune the language model (tiny mode)
    lora_alpha: int = 256  # PAPER.md §3: alpha=256
    lora_dropout: float = 0.05  # LamRA default
    gradient_checkpointing: bool = False
    max_text_tokens: int = MAX_TEXT_TOKENS
    max_target_tokens: int = MAX_TARGET_TOKENS
    image_max_pixels: int | None = None  # None: keep the checkpoint's image processor setting
    train_vision: bool = False  # PAPER.md §3 freezes the vision encoder; True only for the random tiny model


# What a trace_config.json value may be beyond its type (read_config checks both, for every field).
CONFIG_RANGES: dict[str, Range] = {
    "base_model": (lambda v: bool(v.strip()), "a model name or path, not empty"),
    "lora_r": (lambda v: v >= 0, "0 (full fine-tuning) or more"),
    "lora_alpha": (lambda v: v > 0, "above 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_text_tokens": (lambda v: v >= 1, "at least 1"),
    "max_target_tokens": (lambda v: v >= 1, "at least 1"),
    "image_max_pixels": (lambda v: v >= 1, "at least 1, or null (the image processor's own setting)"),
}


def checkpoint_folder(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> Path:
    """A local checkpoint folder as it is, or a Hub model repo downloaded (cached) by huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if not _REPO_ID.fullmatch(str(name_or_path)):
            raise ValueError(f"{str(name_or_path)!r} is neither a checkpoint folder nor a Hub model id (user/name)")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            path = Path(snapshot_download(str(name_or_path), revision=revision, token=token))
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise ValueError(f"{name_or_path!r} is not a local folder, and the Hub has no such model repo"
                             f"{f' at revision {revision!r}' if revision else ''} ({type(err).__name__})") from None
    if not (path / TRACE_CONFIG).is_file():
        raise ValueError(f"{path} is not a TRACE checkpoint: it has no {TRACE_CONFIG}")
    return path


def read_checkpoint(checkpoint_dir: str | Path, flag: str = "--checkpoint") -> ModelConfig:
    """The ModelConfig of a folder written by save_checkpoint; ConfigError (naming `flag`) when the folder is
    missing, is not a TRACE checkpoint, or lacks its weights or a base model stored beside it."""
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise ConfigError(f"{flag} {ckpt} is not a folder: give a checkpoint folder written by trainer.train")
    if not (ckpt / TRACE_CONFIG).is_file():
        inner = sorted(ckpt.glob(f"checkpoint-*/{TRACE_CONFIG}"))
        hint = f" (it holds {inner[-1].parent.name}/)" if inner else ""
        raise ConfigError(f"{flag} {ckpt} is not a TRACE checkpoint: no {TRACE_CONFIG}{hint}; give the "
                          "--output_dir of trainer.train or one of its checkpoint-N folders")
    cfg = read_config(ckpt, flag)
    _check_complete(ckpt, cfg, flag)
    return cfg


def read_config(checkpoint_dir: str | Path, flag: str = "--checkpoint") -> ModelConfig:
    """The folder's trace_config.json, every field's type and range checked; ConfigError naming the file and the
    field (for a folder that has no such file too)."""
    where = f"{flag} {checkpoint_dir}: {TRACE_CONFIG} is not a checkpoint config"
    data = read_json_object(Path(checkpoint_dir) / TRACE_CONFIG, where)
    return ModelConfig(**checked_fields(data, ModelConfig, where, CONFIG_RANGES))


def _check_complete(ckpt: Path, cfg: ModelConfig, flag: str) -> None:
    """ConfigError unless the folder holds the weights its config says and the base model it names."""
    if cfg.lora_r > 0 and not (ckpt / ADAPTER_DIR / "adapter_config.json").is_file():
        raise ConfigError(f"{flag} {ckpt} is incomplete: no {ADAPTER_DIR}/adapter_config.json (the LoRA weights)")
    if cfg.lora_r == 0 and not (any(ckpt.glob("*.safetensors")) or any(ckpt.glob("pytorch_model*.bin"))):
        raise ConfigError(f"{flag} {ckpt} is incomplete: no model weights (*.safetensors) beside {TRACE_CONFIG}")
    base = cfg.base_model
    if base.startswith((".", "/", "~")) and not (ckpt / base).expanduser().is_dir():
        raise ConfigError(f"{flag} {ckpt} was trained from the base model at {base!r} (relative to the "
                          f"checkpoint), which is gone: put it back at {ckpt / base}")


def load_base(path: str, cfg: ModelConfig, device: torch.device,
              tokenizer_path: str | None = None) -> tuple[nn.Module, TraceProcessor]:
    """(Qwen2-VL-family model, its TraceProcessor) from a checkpoint folder or Hub name; a model that cannot be
    loaded (files missing or cut, a Hub name not reachable) is a one-line ConfigError."""
    from safetensors import SafetensorError

    try:
        return _load_parts(path, cfg, device, tokenizer_path)
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"cannot load the model at {path}: {first_line(e)}; give a complete Qwen2-VL-family "
                          "checkpoint folder or a reachable Hub name") from e


def _load_parts(path: str, cfg: ModelConfig, device: torch.device, tokenizer_path: str | None):
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    kwargs = {"max_pixels": cfg.image_max_pixels} if cfg.image_max_pixels else {}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 on GPU
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    processor = TraceProcessor(tokenizer, image_processor, cfg.max_text_tokens, cfg.max_target_tokens)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:  # real Qwen checkpoints already have spare rows for an added token
        model.resize_token_embeddings(len(tokenizer))
    return model, processor


def load_checkpoint(checkpoint_dir: str | Path, cfg: ModelConfig, device: torch.device,
                    trainable: bool = False) -> tuple[nn.Module, TraceProcessor]:
    """(model, processor) of a folder written by save_checkpoint whose config `cfg` read_checkpoint has read:
    base model + LoRA adapter + tokenizer, or (lora_r == 0) the fully fine-tuned model stored in the folder."""
    ckpt = Path(checkpoint_dir)
    base = cfg.base_model
    if not Path(base).is_absolute() and (ckpt / base).exists():
        base = str(ckpt / base)
    model, processor = load_base(base, cfg, device, tokenizer_path=str(ckpt))
    if cfg.lora_r > 0:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(ckpt / ADAPTER_DIR), is_trainable=trainable)
    else:
        model.requires_grad_(trainable)
    return model, processor


def save_checkpoint(model: nn.Module, processor: TraceProcessor, config: ModelConfig, out_dir: str | Path,
                    base_model: str | None = None) -> None:
    """Write the adapter (LoRA + merger + <|emb|> rows) or, with lora_r == 0, the whole model (base_model
    becomes "."), plus tokenizer, image processor and trace_config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = asdict(config)
    if config.lora_r > 0:
        model.save_pretrained(out / ADAPTER_DIR)
        if base_model is not None:
            cfg["base_model"] = base_model
    else:
        model.save_pretrained(out)
        cfg["base_model"] = "."
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / TRACE_CONFIG).write_text(json.dumps(cfg, indent=2))
