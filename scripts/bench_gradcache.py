"""Memory and speed of the training step with the gradient cache (trainer/training/gradcache.py), tiny model on CPU.

    python scripts/bench_gradcache.py                       # global batch 64 vs 512 at micro-batch 8
    python scripts/bench_gradcache.py --global_batches 64 256 --micro_batch 4 --steps 3

For each global batch G, in a fresh process per configuration (ru_maxrss is a lifetime peak): the synthetic
rows (image + text queries with reasoning targets, text candidates) are built and one step of G = micro_batch
runs first, so the baseline holds the data, the model and autograd's working set; then the measured steps run.
Printed: peak RSS growth over that baseline for `--negatives global` (the cache), `--negatives micro` (plain
accumulation, same micro-batch) and one plain forward over all G rows, the size of the step's embeddings, and
seconds per step (the cost of the cache's extra pass is the global/micro ratio).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

WORDS = "red green blue circle square triangle small large left right image photo dress shirt the a of".split()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_rows(n: int, seed: int = 0) -> list:
    from PIL import Image

    from trainer.modeling.interface import CandidateInput, QueryInput
    from trainer.training.data import Example

    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        img = Image.new("RGB", (112, 112), tuple(rng.randrange(256) for _ in range(3)))
        rows.append(Example(QueryInput(words(12), img, "cirr", 7), f"{words(rng.randrange(4, 24))}<|emb|>",
                            CandidateInput(words(10), None, "text"), "reasoning", f"row{i}", f"cand{i}"))
    return rows


def measure(tiny_base: str, global_batch: int, micro_batch: int, negatives: str, steps: int,
            baseline_micro: int) -> dict:
    """One configuration, in this process; the baseline is one step of baseline_micro rows."""
    import torch

    from trainer.modeling.model import TraceModel
    from trainer.training.config import TINY_DEFAULTS, TrainConfig
    from trainer.training.gradcache import train_step
    from trainer.training.step import TrainStep

    torch.manual_seed(0)
    cfg = replace(TrainConfig(), **{**TINY_DEFAULTS, "micro_batch": micro_batch, "negatives": negatives})
    emb = TraceModel.from_base(tiny_base, device="cpu", lora_r=0, train_vision=True, max_text_tokens=96,
                               max_target_tokens=32).train()
    step = TrainStep(emb)
    rows = synthetic_rows(global_batch)
    train_step(step, emb, rows[:baseline_micro], replace(cfg, micro_batch=baseline_micro))  # the baseline
    emb.zero_grad(set_to_none=True)
    base = rss_mb()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(step, emb, rows, cfg)
        emb.zero_grad(set_to_none=True)
    return {"rss_growth_mb": rss_mb() - base, "s_per_step": (time.perf_counter() - t0) / steps,
            "embeddings_mb": 2 * global_batch * emb.base.config.text_config.hidden_size * 4 / 2**20}


def main(argv: list[str] | None = None) -> int:
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/bench_gradcache.py")


def _main(argv: list[str]) -> None:
    from common.cli import CliParser, positive_int
    from common.errors import ConfigError

    ap = CliParser(prog="python scripts/bench_gradcache.py", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--global_batches", type=positive_int, nargs="+", default=[64, 512])
    ap.add_argument("--micro_batch", type=positive_int, default=8)
    ap.add_argument("--steps", type=positive_int, default=1)
    ap.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)  # internal: tiny_base G negatives micro|plain
    args = ap.parse_args(argv)
    if any(g < args.micro_batch for g in args.global_batches):
        raise ConfigError(f"--global_batches {args.global_batches}: each must be at least --micro_batch "
                          f"{args.micro_batch}")
    if args._one:
        base, g, negatives, kind = args._one
        micro = int(g) if kind == "plain" else args.micro_batch
        print(json.dumps(measure(base, int(g), micro, negatives, args.steps, args.micro_batch)))
        return

    from trainer.modeling.tiny import save_tiny_base

    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_base(tmp)
        print(f"tiny model, CPU, micro_batch={args.micro_batch}, steps={args.steps}; RSS growth over a "
              "one-micro-batch baseline")
        for g in args.global_batches:
            for negatives, kind in (("global", "micro"), ("micro", "micro"), ("global", "plain")):
                out = subprocess.run([sys.executable, __file__, "--micro_batch", str(args.micro_batch), "--steps",
                                      str(args.steps), "--_one", tmp, str(g), negatives, kind],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                label = {"micro": f"--negatives {negatives:6s}", "plain": "one plain forward   "}[kind]
                print(f"global_batch={g:4d} {label} rss_growth_MB={r['rss_growth_mb']:7.1f} "
                      f"embeddings_MB={r['embeddings_mb']:.2f} s_per_step={r['s_per_step']:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
