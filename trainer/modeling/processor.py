"""Turn (system prompt, text, image[, target]) into Qwen2-VL model inputs without torchvision.

The Qwen processors need torchvision (ENVIRONMENT.md), so this pairs the tokenizer with
Qwen2VLImageProcessorPil and expands each <|image_pad|> itself. The same code serves the tiny model and real
checkpoints (AutoTokenizer + Qwen2VLImageProcessorPil read from the checkpoint folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.modeling.student import EMB_TOKEN

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IGNORE = -100


@dataclass
class Item:
    system: str
    text: str | None
    image: Any | None = None  # PIL image
    target: str | None = None  # assistant text to append (training); None at inference


class TraceProcessor:
    def __init__(self, tokenizer, image_processor, max_text_tokens: int = 480, max_target_tokens: int = 512):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_tokens = max_text_tokens  # LamRA default: text cut at 480 tokens (PAPER.md §3)
        self.max_target_tokens = max_target_tokens
        if EMB_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
        self.emb_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
        self.image_pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.merge = image_processor.merge_size

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cut_text(self, text: str) -> str:
        ids = self._ids(text)
        return text if len(ids) <= self.max_text_tokens else self.tokenizer.decode(ids[: self.max_text_tokens])

    def prompt_ids(self, item: Item, n_image_tokens: int) -> list[int]:
        user = (IMAGE_PLACEHOLDER if item.image is not None else "") + self._cut_text(item.text or "")
        text = (f"<|im_start|>system\n{item.system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n")
        ids = self._ids(text)
        if item.image is not None:
            at = ids.index(self.image_pad_id)
            ids = ids[:at] + [self.image_pad_id] * n_image_tokens + ids[at + 1:]
        return ids

    def target_ids(self, target: str) -> list[int]:
        ids = self._ids(target)
        if not ids or ids[-1] != self.emb_id:
            ids.append(self.emb_id)
        if len(ids) > self.max_target_tokens:
            ids = ids[: self.max_target_tokens - 1] + [self.emb_id]
        return ids

    def __call__(self, items: list[Item], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Batch with dynamic padding. Returns input_ids, attention_mask, mm_token_type_ids, labels (when targets
        are given; -100 outside the target), pixel_values and image_grid_thw (when any image)."""
        images = [it.image for it in items if it.image is not None]
        out: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if images:
            vis = self.image_processor(images=images, return_tensors="pt")
            out["pixel_values"], out["image_grid_thw"] = vis["pixel_values"], vis["image_grid_thw"]
            counts = (vis["image_grid_thw"].prod(-1) // self.merge**2).tolist()
        seqs, labels, k = [], [], 0
        for it in items:
            n = 0
            if it.image is not None:
                n, k = counts[k], k + 1
            ids = self.prompt_ids(it, n)
            lab = [IGNORE] * len(ids)
            if it.target is not None:
                tgt = self.target_ids(it.target)
                ids, lab = ids + tgt, lab + tgt
            seqs.append(ids)
            labels.append(lab)
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        lab_t = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
            sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.tensor(s)
            mask[i, sl] = 1
            lab_t[i, sl] = torch.tensor(lab)
        out.update(input_ids=input_ids, attention_mask=mask,
                   mm_token_type_ids=(input_ids == self.image_pad_id).long() * mask)
        if any(it.target is not None for it in items):
            out["labels"] = lab_t
        return out
