"""TraceModel: a Qwen2-VL-family MLLM with the <|emb|> token, which routes by greedy decoding and embeds at the
pre-token (PAPER.md §1, §3): construction (LoRA or full fine-tuning), its checkpoint (trainer/modeling/checkpoint.py)
and the forward pieces that training and inference share. Encoding for users is trainer.inference.api.TraceEmbedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trainer.modeling.checkpoint import (
    ModelConfig,
    checkpoint_folder,
    load_base,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from trainer.modeling.interface import CandidateInput, QueryInput
from trainer.modeling.processor import Item, TraceProcessor
from trainer.modeling.student import EMB_TOKEN, candidate_system_prompt, query_system_prompt

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device else default_device()


class TraceModel(nn.Module):
    def __init__(self, model: nn.Module, processor: TraceProcessor, config: ModelConfig):
        super().__init__()
        self.model = model  # PeftModel (training/loaded checkpoint) or the plain base model
        self.processor = processor
        self.config = config
        self.emb_id = processor.emb_id

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_base(cls, base_model: str, device: torch.device | str | None = None, **overrides) -> Self:
        """A trainable model from a Qwen2-VL-family checkpoint name or path; overrides are ModelConfig fields."""
        cfg = ModelConfig(base_model=str(base_model), **overrides)
        device = _device(device)
        model, processor = load_base(cfg.base_model, cfg, device)
        return cls.from_model(model, processor, cfg, device)

    @classmethod
    def from_model(cls, model: nn.Module, processor: TraceProcessor, cfg: ModelConfig,
                   device: torch.device | str) -> Self:
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
             trainable: bool = False) -> Self:
        """Load a checkpoint written by `save` (trainer/modeling/checkpoint.py), in eval mode."""
        cfg = read_checkpoint(checkpoint_dir)
        device = _device(device)
        model, processor = load_checkpoint(checkpoint_dir, cfg, device, trainable)
        loaded = cls(model, processor, cfg).to(device)
        loaded.eval()
        return loaded

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: torch.device | str | None = None,
                        revision: str | None = None, token: str | None = None) -> Self:
        """A checkpoint ready to encode, from a local folder written by `save` or a Hub model repo id
        ("user/trace-2b", downloaded and cached by huggingface_hub; token defaults to HF_TOKEN)."""
        return cls.load(checkpoint_folder(name_or_path, revision=revision, token=token), device=device)

    def save(self, out_dir: str | Path, base_model: str | None = None) -> None:
        """Write a checkpoint folder (trainer/modeling/checkpoint.py); base_model is what its config names."""
        save_checkpoint(self.model, self.processor, self.config, out_dir, base_model)

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

    # ---- prompts ------------------------------------------------------------------------------------------
    def query_items(self, queries: list[QueryInput], with_target: list[str] | None = None) -> list[Item]:
        return [Item(query_system_prompt(q.dataset, q.task_id), q.text, q.image,
                     with_target[i] if with_target else None) for i, q in enumerate(queries)]

    def candidate_items(self, cands: list[CandidateInput], with_target: bool = False) -> list[Item]:
        return [Item(candidate_system_prompt(c.modality), c.text, c.image, EMB_TOKEN if with_target else None)
                for c in cands]
