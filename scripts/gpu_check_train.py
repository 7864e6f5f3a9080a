"""Training-throughput check: a Qwen2-VL-2B-shaped model with random weights (built from a config, nothing
downloaded), bf16, LoRA r=128 on the language model, the real TRACE step (query CE at target positions +
InfoNCE against candidates) through trainer/training/gradcache.py. For each micro-batch it runs a global batch of 1024
with `--negatives global` (the gradient cache: InfoNCE over all 1024) and, at the same micro-batch, with
`--negatives micro` (plain accumulation) for the overhead ratio. Prints samples/s, tokens/s, peak GPU memory
and model-FLOPs utilisation per configuration.

    python scripts/gpu_check_train.py               # one H100/H200: micro 8 and 32 (32 with gradient checkpointing)
    python scripts/gpu_check_train.py --tiny        # CPU smoke run of the same code

MFU = tokens/s x 4 x N / peak FLOP/s, N = language-model parameters without the embedding table, tokens
counted once per step: only one forward+backward is useful work, the cache's extra forward is overhead. 4·N per
token = forward 2·N + backward through activations 2·N (frozen base weights get no weight gradients; LoRA's
own FLOPs and attention's L^2 term are left out), matching ENVIRONMENT.md's GPU anchor.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace

import torch

from common.cli import CliParser, non_negative_int, positive_int, run_cli
from common.errors import ConfigError
from trainer.modeling.checkpoint import ModelConfig
from trainer.modeling.model import TraceModel
from trainer.modeling.processor import IGNORE, TraceProcessor
from trainer.modeling.tiny import build_config, build_image_processor, build_tokenizer
from trainer.training.config import TrainConfig
from trainer.training.gradcache import Chunk, step_over_parts
from trainer.training.step import TrainStep

_KEYS = itertools.count()
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, vendor datasheets


def qwen2_vl_2b_config(tokenizer):
    """Qwen2-VL-2B-Instruct shapes (its config.json), with the tokenizer's special-token ids."""
    cfg = build_config(tokenizer)
    t = cfg.text_config
    t.vocab_size, t.hidden_size, t.intermediate_size = 151936, 1536, 8960
    t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads = 28, 12, 2
    t.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    t.max_position_embeddings = 32768
    t.max_window_layers = t.num_hidden_layers  # no sliding window, as in the released config
    t.layer_types = ["full_attention"] * t.num_hidden_layers  # the tiny config's list is too short for 28 layers
    v = cfg.vision_config
    v.depth, v.embed_dim, v.num_heads, v.mlp_ratio, v.hidden_size = 32, 1280, 16, 4, 1536
    return cfg


def synthetic_chunk(rows: int, length: int, cand_length: int, target: int, vocab: int, emb_id: int,
                    device) -> Chunk:
    """Random token ids: queries end in a target of `target` tokens closed by <|emb|>; candidates have none."""
    ids = torch.randint(300, vocab, (rows, length), device=device)
    ids[:, -1] = emb_id
    labels = torch.full_like(ids, IGNORE)
    labels[:, -target:] = ids[:, -target:]
    q = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids),
         "labels": labels}
    c_ids = torch.randint(300, vocab, (rows, cand_length), device=device)
    c = {"input_ids": c_ids, "attention_mask": torch.ones_like(c_ids), "mm_token_type_ids": torch.zeros_like(c_ids)}
    return Chunk.of(q, c, [f"cand{next(_KEYS)}" for _ in range(rows)])  # every positive distinct


def run(embedder, opt, cfg: TrainConfig, make, steps: int, warm: int) -> dict:
    """Warm-up steps, then timed optimizer steps of cfg.global_batch rows in micro-batches; make(rows) gives a
    chunk's inputs, drawn once per step so both passes of the cache see the same rows."""
    step_module = TrainStep(embedder)
    starts = range(0, cfg.global_batch, cfg.micro_batch)
    parts = [range(s, min(s + cfg.micro_batch, cfg.global_batch)) for s in starts]
    device, extra = embedder.device, 0.0
    for i in range(steps + warm):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0, extra = time.perf_counter(), 0.0
        chunks = {part: make(len(part)) for part in parts}
        out = step_over_parts(step_module, embedder, parts, chunks.__getitem__, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        extra += out["extra_pass_s"] if i >= warm else 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"dt": dt, "loss": out["loss"], "samples": steps * cfg.global_batch, "extra_share": extra / dt,
            "tokens": steps * sum(ch.tokens for ch in chunks.values()),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
            "candidates": out["nce_candidates"]}


def _main(argv: list[str]) -> None:
    ap = CliParser(prog="python scripts/gpu_check_train.py", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (tests)")
    ap.add_argument("--steps", type=positive_int, default=None, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup_steps", type=non_negative_int, default=None)
    ap.add_argument("--global_batch", type=positive_int, default=None,
                    help="rows per optimizer step (PAPER.md §3: 1024)")
    ap.add_argument("--micro_batches", type=positive_int, nargs="+", default=None,
                    help="rows per forward, one run each")
    ap.add_argument("--checkpoint_above", type=non_negative_int, default=8,
                    help="gradient checkpointing for micro-batches above this (batch 16 without: 102.6 GB)")
    ap.add_argument("--seq", type=positive_int, default=None, help="query tokens incl. target")
    ap.add_argument("--target", type=positive_int, default=64,
                    help="target tokens with CE (reasoning + answer + <|emb|>)")
    ap.add_argument("--cand_seq", type=positive_int, default=None)
    ap.add_argument("--lora_r", type=non_negative_int, default=None)
    args = ap.parse_args(argv)
    tiny = args.tiny
    if not tiny and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU is visible here: this check needs one (or add --tiny for the CPU smoke run)")
    steps = args.steps or 2
    warm = args.warmup_steps if args.warmup_steps is not None else 1
    global_batch = args.global_batch or (8 if tiny else 1024)
    micro_batches = args.micro_batches or ([2, 4] if tiny else [8, 32])
    if any(m > global_batch for m in micro_batches):
        raise ConfigError(f"--micro_batches {micro_batches} has a value above --global_batch {global_batch}")
    args.seq, args.cand_seq = args.seq or (64 if tiny else 1024), args.cand_seq or (32 if tiny else 256)
    r = args.lora_r or (8 if tiny else 128)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer()
    config = build_config(tokenizer) if tiny else qwen2_vl_2b_config(tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    processor = TraceProcessor(tokenizer, build_image_processor())
    embedder = TraceModel.from_model(model, processor, ModelConfig(base_model="random", lora_r=r, lora_alpha=2 * r),
                                     device)
    embedder.train()
    params = [p for p in embedder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    lm = embedder.base.model.language_model
    n_lm = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    vocab = config.text_config.vocab_size
    print(f"device={device} dtype={dtype} LM params (no embeddings)={n_lm / 1e9:.3f}B "
          f"trainable={sum(p.numel() for p in params) / 1e6:.1f}M global_batch={global_batch} seq={args.seq} "
          f"cand_seq={args.cand_seq}", flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    for micro in micro_batches:
        checkpointing = micro > args.checkpoint_above
        if checkpointing:
            embedder.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for negatives in ("global", "micro"):
            cfg = replace(TrainConfig(), global_batch=global_batch, micro_batch=micro, negatives=negatives,
                          temperature=0.05)
            res = run(embedder, opt, cfg,
                      lambda n: synthetic_chunk(n, args.seq, args.cand_seq, args.target, vocab, processor.emb_id,
                                                device), steps, warm)
            tps = res["tokens"] / res["dt"]
            line = (f"micro_batch={micro} negatives={negatives} gradient_checkpointing={checkpointing} "
                    f"nce_candidates={res['candidates']:g} loss={res['loss']:.3f} "
                    f"samples/s={res['samples'] / res['dt']:.2f} tokens/s={tps:.0f} "
                    f"extra_pass_share={res['extra_share']:.3f}")
            if device.type == "cuda":
                line += f" peak_memory_GB={res['peak_gb']:.1f}"
                line += f" MFU={tps * 4 * n_lm / peak:.3f}" if peak else f" gpu={name}"
            else:
                line += f" model_flops_per_s={tps * 4 * n_lm:.3g}"
            print(line, flush=True)
        if checkpointing:
            embedder.base.gradient_checkpointing_disable()
    if peak:
        print(f"gpu={name}; MFU = 4*N*tokens/s / {peak / 1e12:.0f} TFLOP/s, tokens counted once per step")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python scripts/gpu_check_train.py")


if __name__ == "__main__":
    sys.exit(main())
