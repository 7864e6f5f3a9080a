"""Scale benchmark of the whole pipeline on synthetic real-format M-BEIR trees (issue "Scale and resilience proof").

    python scripts/bench_pipeline.py --sizes 10000,100000 [--dry_run] [--latency_ms 50] [--json out.json]

Per size: the sample generator writes a tree of about SIZE train queries (400 per scale step), the reference
teacher runs in its own process at a fixed latency, and `python -m pipeline` runs as a child process. Printed:
wall time, rows/s, teacher requests/s against the ideal (max_in_flight / latency), CPU seconds of the pipeline's
process tree (the teacher is another process, so it is excluded) per input row and per row marginally between
sizes (start-up removed), peak memory of the pipeline's process tree (RSS of the process and all its children,
polled every 0.2 s), and the local partitions the run used. Unknown flags go to the pipeline (e.g.
--check_images none, --partition_queries 0).

The direct-row check (--direct_sizes) runs the full pipeline on the direct datasets alone (no teacher calls),
so its marginal CPU per row is the cost of a direct row from reading to its Parquet shard.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES_PER_SCALE = 400  # pipeline.sample: 40 train queries per dataset per scale step, 10 datasets
POLL_S = 0.2
PARTITION_LINE = re.compile(r"^partition \d+/(\d+):", re.M)  # printed by pipeline.run per local partition
# Targets of the issue: memory must not grow with input; read/join/route must stay cheap.
MAX_MEMORY_GROWTH = 0.25  # peak RSS growth from 100k to 1M rows
MAX_CPU_MS_PER_ROW = 1.0  # marginal CPU per direct row


class TreeSampler:
    """Polls a process tree: peak summed RSS, and the last CPU times seen per process (children included)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    t = proc.cpu_times()
                    self.cpu[proc.pid] = t.user + t.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._sample()

    def __enter__(self) -> TreeSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Teacher:
    """`python -m pipeline.teacher.reference_server` in its own process."""

    def __init__(self, latency_ms: float):
        self.latency_ms = latency_ms

    def __enter__(self) -> Teacher:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.teacher.reference_server", "--port", "0",
             "--latency_ms", str(self.latency_ms)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.kill()
            raise RuntimeError(f"reference teacher did not start: {line!r}")
        self.base_url = line.rsplit("listening on ", 1)[1].strip()
        return self

    def cpu_s(self) -> float:
        """CPU seconds the teacher server has used so far (it is not part of the pipeline's figures)."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _direct_datasets() -> list[str]:
    sys.path.insert(0, ROOT)
    from pipeline.mbeir.layout import DATASET_TASKS
    from pipeline.routing import PAPER_REASONING_DATASETS

    return sorted(d for d in DATASET_TASKS if d not in PAPER_REASONING_DATASETS)


def make_tree(work_dir: str, size: int) -> tuple[str, int]:
    """(root, train queries) of a generated tree of at least `size` train queries; reused when present."""
    sys.path.insert(0, ROOT)
    from pipeline.sample import generate

    scale = max(1, math.ceil(size / QUERIES_PER_SCALE))
    root = os.path.join(work_dir, f"mbeir-scale{scale}")
    if not os.path.exists(os.path.join(root, ".complete")):
        shutil.rmtree(root, ignore_errors=True)
        t = time.monotonic()
        generate(root, seed=0, scale=scale)
        open(os.path.join(root, ".complete"), "w").close()
        print(f"  generated {scale * QUERIES_PER_SCALE} queries in {time.monotonic() - t:.1f} s", flush=True)
    return root, scale * QUERIES_PER_SCALE


def run_once(root: str, out: str, args, extra: list[str], base_url: str | None) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "--mbeir_root", root, "--output_dir", out,
           "--max_in_flight", str(args.max_in_flight), "--temp_location", os.path.join(out + "-tmp"), *extra]
    if base_url is None:
        cmd.append("--dry_run")
    else:
        cmd += ["--teacher_base_url", base_url, "--teacher_model", "reference-teacher"]
    shutil.rmtree(out, ignore_errors=True)
    log_path = out + ".log"
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path) as f:
            raise RuntimeError(f"pipeline failed ({proc.returncode}); log {log_path}:\n{f.read()[-3000:]}")
    # wait4's rusage covers the pipeline and every descendant it waited for; the sampler catches the rest.
    cpu = max(usage.ru_utime + usage.ru_stime, sum(sampler.cpu.values()))
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    with open(log_path) as f:
        partitions = max((int(m.group(1)) for m in PARTITION_LINE.finditer(f.read())), default=1)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": sampler.peak_rss / 2**20, "partitions": partitions,
            "stats": stats}


def measure(size: int, args, extra: list[str], mode: str) -> dict:
    """mode: "full", "dry_run", or "direct" (full run over the direct datasets only)."""
    root, n = make_tree(args.work_dir, size)
    out = os.path.join(args.work_dir, f"out-{n}-{mode}")
    if mode == "dry_run":
        r = run_once(root, out, args, extra, None)
    else:
        if mode == "direct":
            extra = [*extra, "--datasets", ",".join(_direct_datasets())]
        with Teacher(args.latency_ms) as teacher:
            start = teacher.cpu_s()
            r = run_once(root, out, args, extra, teacher.base_url)
            r["teacher_server_cpu_s"] = teacher.cpu_s() - start
    stats = r.pop("stats")
    requests = stats.get("teacher", {}).get("requests", 0)
    ideal = args.max_in_flight / (args.latency_ms / 1000.0)
    return {"size": n, "mode": mode, "input": stats["input"],
            "direct": stats["routed"].get("direct", 0), "reasoning": stats["routed"].get("reasoning", 0),
            **r, "rows_per_s": stats["input"] / r["wall_s"], "cpu_ms_per_row": 1000 * r["cpu_s"] / stats["input"],
            "teacher_requests": requests, "teacher_rps": requests / r["wall_s"], "teacher_ideal_rps": ideal,
            "accepted": sum(stats["accepted"].values())}


def _marginal_ms(a: dict, b: dict) -> float:
    return 1000 * (b["cpu_s"] - a["cpu_s"]) / (b["input"] - a["input"])


def verdicts(results: list[dict], direct: list[dict]) -> dict:
    """Target checks: CPU per direct row, marginally between the direct-only runs; memory growth from 100k to
    1M (or, when 1M was not run, between the two largest sizes run, reported as such). The marginal CPU per
    row of the mixed runs is reported without a target (reasoning rows also build teacher requests)."""
    out = {}
    direct = sorted(direct, key=lambda r: r["size"])
    if len(direct) >= 2:
        a, b = direct[0], direct[-1]
        value = _marginal_ms(a, b)
        out["cpu_ms_per_direct_row"] = {"value": value, "between": [a["size"], b["size"]],
                                        "target": MAX_CPU_MS_PER_ROW, "pass": value < MAX_CPU_MS_PER_ROW}
    by_size = sorted(results, key=lambda r: r["size"])
    if len(by_size) >= 2:
        a, b = by_size[0], by_size[-1]
        out["marginal_cpu_ms_per_row"] = {"value": _marginal_ms(a, b), "between": [a["size"], b["size"]]}
        lo = next((r for r in by_size if r["size"] >= 100_000), by_size[-2])
        hi = by_size[-1] if by_size[-1] is not lo else None
        if hi is not None:
            growth = hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1
            out["memory_growth"] = {"value": growth, "between": [lo["size"], hi["size"]],
                                    "target": MAX_MEMORY_GROWTH, "pass": growth < MAX_MEMORY_GROWTH}
    return out


def report(r: dict, args) -> dict:
    print(f"  input {r['input']}  wall {r['wall_s']:.1f} s  {r['rows_per_s']:.0f} rows/s  "
          f"cpu {r['cpu_s']:.1f} s ({r['cpu_ms_per_row']:.2f} ms/row incl. start-up)  "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB  partitions {r['partitions']}", flush=True)
    if r["teacher_requests"]:
        print(f"  teacher {r['teacher_requests']} requests, {r['teacher_rps']:.0f} req/s over the whole run "
              f"(ideal {r['teacher_ideal_rps']:.0f} = {args.max_in_flight} in flight / "
              f"{args.latency_ms:.0f} ms); the server used {r['teacher_server_cpu_s']:.1f} s CPU", flush=True)
    return r


def machine() -> dict:
    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average": os.getloadavg()}


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 10000,100000") from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be at least 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from pipeline.mbeir.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/bench_pipeline.py")


def _main(argv: list[str]) -> int:
    from pipeline.mbeir.cli import CliParser, positive_int

    p = CliParser(prog="python scripts/bench_pipeline.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default="10000,100000", help="comma-separated train query counts")
    p.add_argument("--dry_run", action="store_true", help="no teacher: read, join, route and plan only")
    p.add_argument("--latency_ms", type=float, default=50.0, help="reference teacher latency per call")
    p.add_argument("--max_in_flight", type=positive_int, default=64)
    p.add_argument("--direct_sizes", type=_sizes, default="10000,50000",
                   help="tree sizes of the direct-row CPU check (full runs over the direct datasets); '' = skip")
    p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "bench_pipeline"))
    p.add_argument("--json", default=None, help="also write the results here")
    args, extra = p.parse_known_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    results, direct = [], []
    mode = "dry_run" if args.dry_run else "full"
    for size in args.sizes:
        print(f"size {size} ({mode}) ...", flush=True)
        results.append(report(measure(size, args, extra, mode), args))
    for size in args.direct_sizes:
        print(f"size {size} (direct datasets only: {', '.join(_direct_datasets())}) ...", flush=True)
        direct.append(report(measure(size, args, extra, "direct"), args))
    checks = verdicts(results, direct)
    for name, c in checks.items():
        target = f"(target < {c['target']}) {'PASS' if c['pass'] else 'FAIL'}" if "target" in c else "(no target)"
        print(f"{name}: {c['value']:.3f} between {c['between'][0]} and {c['between'][1]} {target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {**vars(args), "pipeline_args": extra}, "results": results, "direct": direct,
                       "checks": checks, "machine": machine()},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
