"""TraceEmbedder: a Qwen2-VL-family MLLM that routes by greedy decoding and embeds at the pre-token
(PAPER.md §1, §3). Implements trainer.modeling.interface.Embedder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from trainer.inference.api import candidate_inputs, checkpoint_folder, query_inputs
from trainer.inference.engine import QueryEngine, encode_candidates
from trainer.modeling.interface import CandidateInput, EncodeResult, QueryInput
from trainer.modeling.processor import Item, TraceProcessor
from trainer.modeling.student import EMB_TOKEN, candidate_system_prompt, query_system_prompt

TRACE_CONFIG = "trace_config.json"
ADAPTER_DIR = "adapter"
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class ModelConfig:
    base_model: str  # name or path of the Qwen2-VL / Qwen2.5-VL checkpoint
    lora_r: int = 128  # PAPER.md §3: LoRA r=128; 0 = no LoRA, fully fine-tune the language model (tiny mode)
    lora_alpha: int = 256  # PAPER.md §3: alpha=256
    lora_dropout: float = 0.05  # LamRA default
    gradient_checkpointing: bool = False
    max_text_tokens: int = 480  # PAPER.md §3: LamRA default, text cut at 480 tokens
    max_target_tokens: int = 512
    image_max_pixels: int | None = None  # None: keep the checkpoint's image processor setting
    train_vision: bool = False  # PAPER.md §3 freezes the vision encoder; True only for the random tiny model


def read_checkpoint(checkpoint_dir: str | Path, flag: str = "--checkpoint") -> ModelConfig:
    """The ModelConfig of a folder written by TraceEmbedder.save; ConfigError (naming `flag`) when the folder
    is missing, is not a TRACE checkpoint, or lacks its weights or a base model stored beside it."""
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise ConfigError(f"{flag} {ckpt} is not a folder: give a checkpoint folder written by trainer.train")
    if not (ckpt / TRACE_CONFIG).is_file():
        inner = sorted(ckpt.glob(f"checkpoint-*/{TRACE_CONFIG}"))
        hint = f" (it holds {inner[-1].parent.name}/)" if inner else ""
        raise ConfigError(f"{flag} {ckpt} is not a TRACE checkpoint: no {TRACE_CONFIG}{hint}; give the "
                          "--output_dir of trainer.train or one of its checkpoint-N folders")
    try:
        cfg = ModelConfig(**json.loads((ckpt / TRACE_CONFIG).read_text()))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{flag} {ckpt}: {TRACE_CONFIG} is not a checkpoint config ({e})") from e
    if cfg.lora_r > 0 and not (ckpt / ADAPTER_DIR / "adapter_config.json").is_file():
        raise ConfigError(f"{flag} {ckpt} is incomplete: no {ADAPTER_DIR}/adapter_config.json (the LoRA weights)")
    if cfg.lora_r == 0 and not (any(ckpt.glob("*.safetensors")) or any(ckpt.glob("pytorch_model*.bin"))):
        raise ConfigError(f"{flag} {ckpt} is incomplete: no model weights (*.safetensors) beside {TRACE_CONFIG}")
    base = cfg.base_model
    if base.startswith((".", "/", "~")) and not (ckpt / base).expanduser().is_dir():
        raise ConfigError(f"{flag} {ckpt} was trained from the base model at {base!r} (relative to the "
                          f"checkpoint), which is gone: put it back at {ckpt / base}")
    return cfg


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_parts(path: str, cfg: ModelConfig, device: torch.device, tokenizer_path: str | None = None):
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


def _load_checked(path: str, cfg: ModelConfig, device: torch.device, tokenizer_path: str | None = None):
    """_load_parts, with a model that cannot be loaded (files missing or cut, a Hub name not reachable) as a
    one-line ConfigError."""
    from safetensors import SafetensorError

    try:
        return _load_parts(path, cfg, device, tokenizer_path)
    except (OSError, SafetensorError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot load the model at {path}: {why}; give a complete Qwen2-VL-family checkpoint "
                          "folder or a reachable Hub name") from e


class TraceEmbedder(nn.Module):
    def __init__(self, model: nn.Module, processor: TraceProcessor, config: ModelConfig):
        super().__init__()
        self.model = model  # PeftModel (training/loaded checkpoint) or the plain base model
        self.processor = processor
        self.config = config
        self.emb_id = processor.emb_id

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_base(cls, base_model: str, device: torch.device | str | None = None, **overrides) -> TraceEmbedder:
        """A trainable embedder from a Qwen2-VL-family checkpoint name or path."""
        cfg = ModelConfig(base_model=str(base_model), **overrides)
        device = torch.device(device) if device else default_device()
        model, processor = _load_checked(cfg.base_model, cfg, device)
        return cls.from_model(model, processor, cfg, device)

    @classmethod
    def from_model(cls, model: nn.Module, processor: TraceProcessor, cfg: ModelConfig,
                   device: torch.device | str) -> TraceEmbedder:
        """Vision encoder frozen, projector (merger) trained (PAPER.md §3). lora_r > 0: LoRA on the language
        model plus the <|emb|> rows. lora_r == 0: the whole language model and its head are trained — for the
        random-weight tiny model, where a low-rank update of random weights cannot learn routing."""
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=LANGUAGE_LORA_TARGETS, modules_to_save=["visual.merger"],
                              trainable_token_indices={"embed_tokens": [processor.emb_id]})
            model = get_peft_model(model, lora)
        else:
            for name, p in model.named_parameters():
                if cfg.train_vision or not name.startswith("model.visual.") or name.startswith("model.visual.merger."):
                    p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            model.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            model.get_base_model().config.use_cache = False
        return cls(model, processor, cfg).to(device)

    @classmethod
    def load(cls, checkpoint_dir: str | Path, device: torch.device | str | None = None,
             trainable: bool = False) -> TraceEmbedder:
        """Load a checkpoint written by `save`: base model + LoRA adapter + tokenizer, or (lora_r == 0) the
        fully fine-tuned model stored in the checkpoint folder itself."""
        ckpt = Path(checkpoint_dir)
        cfg = read_checkpoint(ckpt)
        base = cfg.base_model
        if not Path(base).is_absolute() and (ckpt / base).exists():
            base = str(ckpt / base)
        device = torch.device(device) if device else default_device()
        model, processor = _load_checked(base, cfg, device, tokenizer_path=str(ckpt))
        if cfg.lora_r > 0:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(ckpt / ADAPTER_DIR), is_trainable=trainable)
        else:
            model.requires_grad_(trainable)
        emb = cls(model, processor, cfg).to(device)
        emb.eval()
        return emb

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: torch.device | str | None = None,
                        revision: str | None = None, token: str | None = None) -> TraceEmbedder:
        """A checkpoint ready to encode, from a local folder written by `save` or a Hub model repo id
        ("user/trace-2b", downloaded and cached by huggingface_hub; token defaults to HF_TOKEN)."""
        return cls.load(checkpoint_folder(name_or_path, revision=revision, token=token), device=device)

    def save(self, out_dir: str | Path, base_model: str | None = None) -> None:
        """Write the adapter (LoRA + merger + <|emb|> rows) or, with lora_r == 0, the whole model (base_model
        becomes "."), plus tokenizer, image processor and trace_config.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        if self.config.lora_r > 0:
            self.model.save_pretrained(out / ADAPTER_DIR)
            if base_model is not None:
                cfg["base_model"] = base_model
        else:
            self.model.save_pretrained(out)
            cfg["base_model"] = "."
        self.processor.tokenizer.save_pretrained(out)
        self.processor.image_processor.save_pretrained(out)
        (out / TRACE_CONFIG).write_text(json.dumps(cfg, indent=2))

    # ---- forward pieces -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def base(self) -> nn.Module:
        """The ...ForConditionalGeneration module (LoRA layers are injected in place)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def lm_head(self) -> nn.Module:
        return self.base.lm_head

    def positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """3-D M-RoPE position ids (3, B, L) that respect padding on either side."""
        pos, _ = self.base.model.get_rope_index(
            input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])
        return pos

    def hidden(self, batch: dict[str, torch.Tensor], use_cache: bool = False):
        """Last-layer hidden states (B, L, D) — only the last layer, no logits."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.base.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=self.positions(batch), pixel_values=batch.get("pixel_values"),
            image_grid_thw=batch.get("image_grid_thw"), use_cache=use_cache)
        return out

    @staticmethod
    def pre_token_index(input_ids: torch.Tensor, emb_id: int) -> torch.Tensor:
        """Index of the token just before the last <|emb|> in each row (pre-token pooling, PAPER.md §1)."""
        is_emb = input_ids == emb_id
        if not bool(is_emb.any(-1).all()):
            raise ValueError("every training sequence must contain <|emb|>")
        width = input_ids.shape[1]
        last = width - 1 - is_emb.flip(-1).int().argmax(-1)
        return last - 1

    def embed_sequences(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised embeddings (B, D) at the pre-token, hidden states (B, L, D)) for batches that already
        contain <|emb|> (training)."""
        h = self.hidden(batch).last_hidden_state
        idx = self.pre_token_index(batch["input_ids"].to(h.device), self.emb_id)
        e = h[torch.arange(h.shape[0], device=h.device), idx]
        return F.normalize(e.float(), dim=-1), h

    # ---- inference (trainer.modeling.interface.Embedder) -----------------------------------------------------------
    def query_items(self, queries: list[QueryInput], with_target: list[str] | None = None) -> list[Item]:
        return [Item(query_system_prompt(q.dataset, q.task_id), q.text, q.image,
                     with_target[i] if with_target else None) for i, q in enumerate(queries)]

    def candidate_items(self, cands: list[CandidateInput], with_target: bool = False) -> list[Item]:
        return [Item(candidate_system_prompt(c.modality), c.text, c.image, EMB_TOKEN if with_target else None)
                for c in cands]

    def encode_candidates(self, candidates: Sequence[CandidateInput | dict], batch_size: int = 32) -> torch.Tensor:
        """(n, d) L2-normalised candidate embeddings, in input order (trainer/inference/engine.py). Candidates are
        CandidateInput or dicts {"text", "image" (PIL image, path or None), "modality"}."""
        return encode_candidates(self, candidate_inputs(candidates), batch_size)

    def encode_queries(self, queries: Sequence[QueryInput | dict], mode: str = "adaptive", max_new_tokens: int = 128,
                       batch_size: int = 8) -> EncodeResult:
        """Route, then batch (trainer/inference/engine.py). Queries are QueryInput or dicts {"text", "image"
        (PIL image, path or None), "dataset", "task_id"}."""
        engine = QueryEngine(self, mode, max_new_tokens, batch_size)
        return engine.run(query_inputs(queries))
