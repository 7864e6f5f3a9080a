"""Offline tiny mode (`--model tiny`): a Qwen2-VL-architecture model with random weights, a byte-level BPE
tokenizer trained on a built-in corpus, and a small-image Qwen2VLImageProcessorPil, saved as an ordinary
checkpoint folder so it is loaded by exactly the code path used for real checkpoints."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import prompts

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|emb|>"]
TINY_IMAGE_PIXELS = 112 * 112  # images resized to 112x112: 64 patches, 16 image tokens after merging
_WORDS = """a an the of and or with without to in on at by for from is are was were be this that these those
it its which what who where when how why not no yes one two three four five six many few more less same different
red green blue yellow orange purple pink brown black white grey gray gold silver dark light bright pale
circle square triangle star hexagon diamond heart cross oval rectangle ring stripe dot shape shapes object
small large big tiny huge left right top bottom center middle above below next beside inside outside behind
image photo picture scene background foreground caption text document passage page title article news entity
dress shirt skirt jacket coat shoe shoes pants jeans sleeve collar pattern floral striped plain cotton silk
change make replace remove add keep same instead but rather turn into edit edited version more less color colour
question answer what which who named called known famous city country river mountain building animal bird dog cat
describe description target query candidate reference retrieve retrieval find match similar show shows showing
reasoning step first then finally because therefore so the target image is has have had contains containing
visual entity fact knowledge wikipedia encyclopedia identify identified located found born built founded
"""


def corpus() -> list[str]:
    """Deterministic training text: a word list plus every packaged prompt template."""
    lines = [ln for ln in _WORDS.split("\n") if ln.strip()]
    lines += [w.capitalize() for ln in lines for w in ln.split()]
    for name in prompts.available():
        lines += prompts.load(name).text.splitlines()
    lines += resources.files(prompts).joinpath("student_strategies.json").read_text(encoding="utf-8").splitlines()
    return lines


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    return Qwen2Tokenizer(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token=None, bos_token=None,
                          additional_special_tokens=SPECIAL_TOKENS[1:])


def build_config(tokenizer, hidden: int = 128, layers: int = 2, heads: int = 4):
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    quarter = head_dim // 2 // 4
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=4096, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=True, initializer_range=hidden ** -0.5,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]})
    # Weights drawn at 1/sqrt(width), not the checkpoint default 0.02: with 0.02 the residual stream of this
    # random model is its current token's embedding, so every query's last prompt state is the same vector
    # (cosine 0.999) and neither the routing CE nor InfoNCE has a signal to start from.
    vision = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=32 ** -0.5)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                         video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                         vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)


def build_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=TINY_IMAGE_PIXELS, max_pixels=TINY_IMAGE_PIXELS)


def save_tiny_base(out_dir: str | Path, seed: int = 0, **config_kwargs) -> Path:
    """Write a random-weight tiny Qwen2-VL checkpoint folder (model, tokenizer, image processor)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(build_config(tokenizer, **config_kwargs))
    with torch.no_grad():  # unit-norm token rows: the tied LM head can express confident predictions, as a
        emb = model.get_input_embeddings().weight  # pretrained head does (std-0.02 rows cap logits near 2.5)
        emb.normal_(0.0, emb.shape[1] ** -0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    build_image_processor().save_pretrained(out)
    (out / "tiny.json").write_text(json.dumps({"seed": seed, **config_kwargs}))
    return out
