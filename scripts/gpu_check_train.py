"""Training-throughput check: a Qwen2-VL-2B-shaped model with random weights (built from a config, nothing
downloaded), bf16, LoRA r=128 on the language model, the real TRACE step (query CE at target positions +
InfoNCE against candidates). Prints samples/s, tokens/s, peak GPU memory and model-FLOPs utilisation.

    python scripts/gpu_check_train.py               # one H100/H200, a few hundred steps, < 5 minutes
    python scripts/gpu_check_train.py --tiny        # CPU smoke run of the same code

MFU = tokens/s x 4 x N / peak FLOP/s, N = language-model parameters without the embedding table. 4·N per
token = forward 2·N + backward through activations 2·N (frozen base weights get no weight gradients; LoRA's
own FLOPs and attention's L^2 term are left out), matching ENVIRONMENT.md's GPU anchor.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pipeline.mbeir.cli import CliParser, non_negative_int, positive_int, run_cli
from pipeline.mbeir.errors import ConfigError
from trainer.loss import info_nce
from trainer.model import ModelConfig, TraceEmbedder
from trainer.processor import IGNORE, TraceProcessor
from trainer.tiny import build_config, build_image_processor, build_tokenizer
from trainer.train import TrainStep

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


def synthetic_batch(batch: int, length: int, target: int, vocab: int, emb_id: int, device, with_labels: bool):
    ids = torch.randint(300, vocab, (batch, length), device=device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}
    if with_labels:
        ids[:, -1] = emb_id
        labels = torch.full_like(ids, IGNORE)
        labels[:, -target:] = ids[:, -target:]
        out["labels"] = labels
    return out


def _main(argv: list[str]) -> None:
    ap = CliParser(prog="python scripts/gpu_check_train.py", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (tests)")
    ap.add_argument("--steps", type=positive_int, default=None)
    ap.add_argument("--warmup_steps", type=non_negative_int, default=None)
    ap.add_argument("--batch", type=positive_int, default=None, help="queries (and candidates) per step")
    ap.add_argument("--seq", type=positive_int, default=None, help="query tokens incl. target")
    ap.add_argument("--target", type=positive_int, default=64, help="target tokens with CE (reasoning + answer + <|emb|>)")
    ap.add_argument("--cand_seq", type=positive_int, default=None)
    ap.add_argument("--lora_r", type=non_negative_int, default=None)
    ap.add_argument("--gradient_checkpointing", action="store_true")
    args = ap.parse_args(argv)
    tiny = args.tiny
    if not tiny and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU is visible here: this check needs one (or add --tiny for the CPU smoke run)")
    steps = args.steps or (5 if tiny else 300)
    warm = args.warmup_steps if args.warmup_steps is not None else (1 if tiny else 10)
    batch, seq = args.batch or (2 if tiny else 8), args.seq or (64 if tiny else 1024)
    cand_seq, r = args.cand_seq or (32 if tiny else 256), args.lora_r or (8 if tiny else 128)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer()
    config = build_config(tokenizer) if tiny else qwen2_vl_2b_config(tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    processor = TraceProcessor(tokenizer, build_image_processor())
    cfg = ModelConfig(base_model="random", lora_r=r, lora_alpha=2 * r,
                      gradient_checkpointing=args.gradient_checkpointing)
    embedder = TraceEmbedder.from_model(model, processor, cfg, device)
    embedder.train()
    step = TrainStep(embedder)
    params = [p for p in embedder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    lm = embedder.base.model.language_model
    n_lm = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    vocab = config.text_config.vocab_size
    print(f"device={device} dtype={dtype} LM params (no embeddings)={n_lm / 1e9:.3f}B "
          f"trainable={sum(p.numel() for p in params) / 1e6:.1f}M batch={batch} seq={seq} cand_seq={cand_seq}")
    tokens, t0 = 0, None
    for i in range(steps + warm):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0, tokens = time.perf_counter(), 0
        q = synthetic_batch(batch, seq, args.target, vocab, processor.emb_id, device, True)
        c = synthetic_batch(batch, cand_seq, 0, vocab, processor.emb_id, device, False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            q_emb, c_emb, ce, _ = step(q, c)
            loss = ce + info_nce(q_emb, c_emb, 0.05)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch * (seq + cand_seq)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = tokens / dt
    print(f"steps={steps} time={dt:.1f}s loss={float(loss.detach()):.3f}")
    print(f"samples/s={steps * batch / dt:.2f} tokens/s={tps:.0f}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        print(f"gpu={name} peak_memory_GB={torch.cuda.max_memory_allocated() / 1e9:.1f}")
        if peak:
            print(f"MFU={tps * 4 * n_lm / peak:.3f} (4*N*tokens/s / {peak / 1e12:.0f} TFLOP/s)")
    else:
        print(f"model_flops_per_s={tps * 4 * n_lm:.3g} (4*N*tokens/s; no GPU peak to compare)")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python scripts/gpu_check_train.py")


if __name__ == "__main__":
    sys.exit(main())
