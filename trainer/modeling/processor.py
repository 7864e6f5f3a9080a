"""Turn (system prompt, text, image[, target]) into Qwen2-VL model inputs without torchvision.

The Qwen processors need torchvision (ENVIRONMENT.md), so this pairs the tokenizer with
Qwen2VLImageProcessorPil and writes each image's <|image_pad|> run itself. The same code serves the tiny model
and real checkpoints (AutoTokenizer + Qwen2VLImageProcessorPil read from the checkpoint folder).

User text is text: a sequence is built from pieces, the template's control tokens as ids and everything else
(the template's plain text joined with the query, candidate, target text and prompt values around it) as text
runs that are tokenized so they can never produce a control token id (`text_ids`). Runs split where the
template's control tokens are, exactly as the tokenizer splits a whole rendered string, so ordinary text gets
the ids it always had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from trainer.modeling.student import EMB_TOKEN, SystemPrompt

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"
IGNORE = -100

Piece = str | list[int]  # text (adjacent pieces join into one run), or ids the template writes


@dataclass
class Item:
    system: str | SystemPrompt  # a plain str is the caller's own template: its control tokens are real
    text: str | None
    image: Any | None = None  # PIL image
    target: str | None = None  # assistant text to append (training); None at inference. One trailing
    # <|emb|> is the template's; any other control token string in it is text


def _plain_rgb(image: Any) -> bool:
    return getattr(image, "mode", None) == "RGB" and "transparency" not in getattr(image, "info", {})


def _runs(pieces: list[Piece]) -> list[Piece]:
    """Adjacent text pieces joined, empty ones dropped."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        elif p:
            out.append(p)
    return out


MAX_TEXT_TOKENS = 480  # PAPER.md §3: LamRA default, text cut at 480 tokens
MAX_TARGET_TOKENS = 512  # the student target (reasoning + answer + <|emb|>), cut at this many tokens


class TraceProcessor:
    def __init__(self, tokenizer, image_processor, max_text_tokens: int = MAX_TEXT_TOKENS,
                 max_target_tokens: int = MAX_TARGET_TOKENS):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_tokens = max_text_tokens
        self.max_target_tokens = max_target_tokens
        if EMB_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
        # every added token, special or not (Qwen2.5's <tool_call> is not): none may come from text
        self.control = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
        self.control_ids = frozenset(self.control.values())
        longest_first = sorted(self.control, key=len, reverse=True)
        self._control_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self._templates: dict[str, list[Piece]] = {}
        self.emb_id = self.control[EMB_TOKEN]
        self.image_pad_id = self.control[IMAGE_PAD]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.merge = image_processor.merge_size

    # ---- text ---------------------------------------------------------------------------------------------
    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids as plain text: never a control token id, whatever the text holds. Special
        tokens are split by the tokenizer itself (`split_special_tokens`); a text that still yields an
        added token's id (a non-special added token) is tokenized without the added vocabulary."""
        if not texts:
            return []
        batch = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [ids if self.control_ids.isdisjoint(ids) else self._plain_ids(text)
                for text, ids in zip(texts, batch, strict=True)]

    def _plain_ids(self, text: str) -> list[int]:
        """The tokenizer's own pipeline (normalizer, pre-tokenizer, model) with no added token matched."""
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pre = backend.pre_tokenizer
        words = [w for w, _ in pre.pre_tokenize_str(text)] if pre is not None else [text]
        return [t.id for w in words for t in backend.model.tokenize(w)]

    def template(self, text: str) -> list[Piece]:
        """A template string as pieces: its control tokens as ids, the text between them as text."""
        if text not in self._templates:
            parts = self._control_re.split(text)  # odd indices: the control tokens matched
            self._templates[text] = [[self.control[p]] if i % 2 else p for i, p in enumerate(parts)]
        return self._templates[text]

    def encode(self, sequences: list[list[Piece]]) -> list[list[int]]:
        """Ids of each sequence of pieces; the distinct text runs of all sequences (a batch's system prompts
        repeat) go through one `text_ids` call."""
        runs = [_runs(seq) for seq in sequences]
        texts = list(dict.fromkeys(r for seq in runs for r in seq if isinstance(r, str)))
        ids = dict(zip(texts, self.text_ids(texts), strict=True))
        return [[i for r in seq for i in (ids[r] if isinstance(r, str) else r)] for seq in runs]

    def cut_texts(self, texts: list[str]) -> list[str]:
        """Each text cut to max_text_tokens tokens."""
        cut = self.max_text_tokens
        return [text if len(ids) <= cut else self.tokenizer.decode(ids[:cut])
                for text, ids in zip(texts, self.text_ids(texts), strict=True)]

    # ---- sequences ----------------------------------------------------------------------------------------
    def _system(self, system: str | SystemPrompt) -> list[Piece]:
        if isinstance(system, str):
            return self.template(system)
        return [p for i, part in enumerate(system.parts) for p in ([part] if i % 2 else self.template(part))]

    def prompt_pieces(self, item: Item, text: str, n_image_tokens: int) -> list[Piece]:
        """The chat frame, as the tokenizer would split the whole string
        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{image}{text}<|im_end|>\\n
        <|im_start|>assistant\\n (one string); {image} is <|vision_start|>, n_image_tokens <|image_pad|>,
        <|vision_end|>, or nothing."""
        vision = []
        if item.image is not None:
            vision = [self.control["<|vision_start|>"], *[self.image_pad_id] * n_image_tokens,
                      self.control["<|vision_end|>"]]
        return [*self.template(f"{IM_START}system\n"), *self._system(item.system),
                *self.template(f"{IM_END}\n{IM_START}user\n"), vision, text,
                *self.template(f"{IM_END}\n{IM_START}assistant\n")]

    def prompt_ids(self, items: list[Item], n_image_tokens: list[int]) -> list[list[int]]:
        texts = self.cut_texts([it.text or "" for it in items])
        return self.encode([self.prompt_pieces(it, text, n)
                            for it, text, n in zip(items, texts, n_image_tokens, strict=True)])

    def target_ids(self, targets: list[str]) -> list[list[int]]:
        """Each target's text, cut to max_target_tokens - 1 tokens, then the template's <|emb|>."""
        bodies = [t[: -len(EMB_TOKEN)] if t.endswith(EMB_TOKEN) else t for t in targets]
        return [ids[: self.max_target_tokens - 1] + [self.emb_id] for ids in self.text_ids(bodies)]

    def _vision(self, items: list[Item]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """pixel_values and image_grid_thw of the items' images, and each item's image token count."""
        images = [it.image for it in items if it.image is not None]
        if not images:
            return {}, [0] * len(items)
        # RGB without a transparency key is what the image processor's RGB conversion returns unchanged (as a
        # copy: a tenth of its time per image); the gate gives every loaded image that form.
        plain = {"do_convert_rgb": False} if all(_plain_rgb(im) for im in images) else {}
        vis = self.image_processor(images=images, return_tensors="pt", **plain)
        per_image = iter((vis["image_grid_thw"].prod(-1) // self.merge**2).tolist())
        counts = [next(per_image) if it.image is not None else 0 for it in items]
        return {"pixel_values": vis["pixel_values"], "image_grid_thw": vis["image_grid_thw"]}, counts

    def __call__(self, items: list[Item], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Batch with dynamic padding. Returns input_ids, attention_mask, mm_token_type_ids, labels (when targets
        are given; -100 outside the target), pixel_values and image_grid_thw (when any image)."""
        out, counts = self._vision(items)
        seqs = self.prompt_ids(items, counts)
        labels = [[IGNORE] * len(s) for s in seqs]
        with_target = [i for i, it in enumerate(items) if it.target is not None]
        for i, tgt in zip(with_target, self.target_ids([items[i].target for i in with_target]), strict=True):
            seqs[i], labels[i] = seqs[i] + tgt, labels[i] + tgt
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
        if with_target:
            out["labels"] = lab_t
        return out
