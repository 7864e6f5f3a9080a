"""Evaluation benchmark: candidates/s of `python -m trainer.evaluate` on a synthetic pool in the real M-BEIR
format, with M-BEIR-sized images, the tiny model (or --checkpoint), on the CPU.

    python scripts/bench_eval.py [--candidates 2048] [--repeats 1] [--tiny_layers 2] [--json out.json]

The tree is the embedded sample with CANDIDATES image candidates appended to the mscoco_task0 pool, each its own
RGB JPEG with a short side of 256 (scripts/bench_pipeline.py's photos). Each configuration is a fresh evaluation
(its own cache) of that pool, every process on one thread (OMP_NUM_THREADS=1), run in turn, the order rotated
between repeats, the best kept:
  1 rank, --num_workers 0   data prepared in the model's thread (the old path)
  1 rank, --num_workers 1   reading, decoding and the processor in a worker process
  1 rank, --num_workers 2   two workers (3 processes on this 2-core machine)
  2 ranks, --num_workers 0  torchrun --nproc_per_node 2 (gloo): each rank encodes half of the chunks
Printed per configuration: candidates/s over the pool's encoding (rows / the slowest rank's wall time, from
results.json), the share of that time the model waited for data, the wait and the forward per candidate (the
0-worker run's wait is the data preparation's CPU cost: workers hide it only while they prepare a candidate at
least as fast as the model embeds one; --tiny_layers makes the forward heavier), the command's wall time, the peak RSS of
its whole process tree (ranks and workers, summed: a forked worker's pages shared with its parent count in both)
and its peak PSS (shared pages split: the memory really used), plus the CPU's idle share just before each run
(other work on the machine shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]
from bench_pipeline import TreeSampler, _textures, machine, photo_jpeg  # noqa: E402  the bench trees' photos

PAIR = "mscoco_task0"  # t→i: an image-only pool, so every candidate decodes an M-BEIR-sized JPEG
CONFIGS = {"1 rank, 0 workers": (1, 0), "1 rank, 1 worker": (1, 1), "1 rank, 2 workers": (1, 2),
           "2 ranks, 0 workers": (2, 0)}
BENCH_DIR = "mbeir_images/bench_pool"
TREE_VERSION = 1
TINY_LAYERS = 2  # trainer/modeling/tiny.py's build_config default
FIRST_DID = 1_000_000  # past the sample's own candidate numbers, below UniIR's 10,000,000 per dataset (MBEIR.md)


def make_tree(work_dir: str, candidates: int) -> str:
    """The sample with `candidates` M-BEIR-sized image candidates appended to the mscoco_task0 pool; reused."""
    from pipeline.mbeir import layout
    from pipeline.sample import generate

    root = os.path.join(work_dir, f"eval-v{TREE_VERSION}-{candidates}")
    if os.path.exists(os.path.join(root, ".complete")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    generate(root, seed=0, scale=1)
    os.makedirs(os.path.join(root, BENCH_DIR))
    textures = _textures()
    with open(os.path.join(root, layout.local_pool_file("mscoco", 0)), "a", encoding="utf-8") as pool:
        for n in range(candidates):
            rel = f"{BENCH_DIR}/{n:07d}.jpg"
            with open(os.path.join(root, rel), "wb") as img:
                img.write(photo_jpeg(n, textures))
            pool.write(json.dumps({"did": f"9:{FIRST_DID + n}", "txt": None, "img_path": rel,
                                   "modality": "image", "src_content": None}) + "\n")
    open(os.path.join(root, ".complete"), "w").close()
    return root


def tiny_checkpoint(work_dir: str, layers: int = TINY_LAYERS) -> str:
    """The tiny random-weight model (`layers` decoder layers) as a TRACE checkpoint (lora_r 0: the folder is the
    model)."""
    from trainer.modeling.tiny import save_tiny_base

    path = os.path.join(work_dir, "tiny-trace" if layers == TINY_LAYERS else f"tiny-trace-{layers}-layers")
    if not os.path.exists(os.path.join(path, "trace_config.json")):
        save_tiny_base(path, layers=layers)
        with open(os.path.join(path, "trace_config.json"), "w") as f:
            json.dump({"base_model": ".", "lora_r": 0}, f)
    return path


class PssSampler(threading.Thread):
    """Peak proportional set size of a process tree: pages shared by a forked worker and its parent are split
    between them, not counted in both as the RSS sum counts them."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            pss = 0
            for proc in procs:
                try:
                    pss += proc.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, pss)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_idle(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time idle over the next `seconds` (not the load average, which lags)."""
    return psutil.cpu_times_percent(interval=seconds).idle / 100


def run_config(name: str, root: str, checkpoint: str, out: str, args) -> dict:
    ranks, workers = CONFIGS[name]
    shutil.rmtree(out, ignore_errors=True)
    evaluate = ["-m", "trainer.evaluate", "--mbeir_root", root, "--checkpoint", checkpoint, "--output_dir", out,
                "--pairs", PAIR, "--pool", "local", "--limit", "8", "--mode", "direct", "--device", "cpu",
                "--encode_chunk", str(args.encode_chunk), "--num_workers", str(workers), "--progress", "false"]
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                  str(ranks), "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    idle = cpu_idle()
    t0 = time.perf_counter()
    proc = subprocess.Popen(launch + evaluate, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pss = PssSampler(proc.pid)
    pss.start()
    with TreeSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    pss.done.set()
    pss.join()
    if proc.returncode:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {err[-2000:]}")
    with open(os.path.join(out, "results.json")) as f:
        pool = json.load(f)["pools"][PAIR]
    return {"config": name, "ranks": ranks, "num_workers": workers, "candidates": pool["rows"],
            "encode_seconds": pool["seconds"], "candidates_per_s": round(pool["rows"] / pool["seconds"], 2),
            "data_wait_share": pool["data_wait_share"],
            "forward_ms": round(1000 * pool["model_seconds"] / pool["rows"], 3),
            "wait_ms": round(1000 * pool["data_wait_seconds"] / pool["rows"], 3),
            "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(sampler.peak_rss / 2**20), "peak_pss_mb": round(pss.peak / 2**20),
            "cpu_idle_before": round(idle, 3)}


def table(best: dict[str, dict], cores: int) -> str:
    """One row per configuration. The data preparation's CPU cost per candidate is read from the 0-worker run,
    where the model's thread prepares its own data (its wait is that preparation): workers keep the model fed only
    while they prepare a candidate at least as fast as the model embeds one."""
    base = best[next(iter(CONFIGS))]
    lines = [f"data preparation {base['wait_ms']:.2f} ms/candidate (CPU, the 0-worker run); {cores} cores",
             "configuration | candidates/s | vs 1 rank, 0 workers | model waited for data | wait ms/candidate | "
             "forward ms/candidate | wall s | peak RSS MB | peak PSS MB | CPU idle before"]
    for r in best.values():
        lines.append(f"{r['config']} | {r['candidates_per_s']:.1f} | {r['candidates_per_s'] / base['candidates_per_s']:.2f}x"
                     f" | {100 * r['data_wait_share']:.1f}% | {r['wait_ms']:.2f} | {r['forward_ms']:.2f} | {r['wall_s']:.1f}"
                     f" | {r['peak_rss_mb']} | {r['peak_pss_mb']} | {100 * r['cpu_idle_before']:.0f}%")
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    from common.cli import CliParser, positive_int

    p = CliParser(prog="python scripts/bench_eval.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=positive_int, default=2048, help="M-BEIR-sized image candidates to add")
    p.add_argument("--encode_chunk", type=positive_int, default=128, help="chunk size (2 ranks split the chunks)")
    p.add_argument("--repeats", type=positive_int, default=1, help="runs per configuration; the best is kept")
    p.add_argument("--checkpoint", default=None, help="a TRACE checkpoint (default: the tiny random model)")
    p.add_argument("--tiny_layers", type=positive_int, default=TINY_LAYERS,
                   help="decoder layers of the tiny model: more make its forward heavier than the data preparation")
    p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "bench_eval"))
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    root = make_tree(args.work_dir, args.candidates)
    checkpoint = args.checkpoint or tiny_checkpoint(args.work_dir, args.tiny_layers)
    names, runs = list(CONFIGS), []
    for rep in range(args.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            runs.append(run_config(name, root, checkpoint, os.path.join(args.work_dir, "out"), args))
            print(f"  {name}: {runs[-1]['candidates_per_s']:.1f} candidates/s", flush=True)
    best = {n: max((r for r in runs if r["config"] == n), key=lambda r: r["candidates_per_s"]) for n in names}
    cores = len(os.sched_getaffinity(0))
    print(table(best, cores))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "candidates": args.candidates, "tiny_layers": args.tiny_layers,
                       "best": best, "runs": runs}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/bench_eval.py")


if __name__ == "__main__":
    sys.exit(main())
