"""Scale benchmark of the whole pipeline on synthetic real-format M-BEIR trees (issue "Scale and resilience proof").

    python scripts/bench_pipeline.py --sizes 10000,100000 [--dry_run] [--latency_ms 50] [--json out.json]
    python scripts/bench_pipeline.py --reasoning_only --sizes 20000 --latency_ms 100 --max_in_flight 256 \
        [--teacher_base_url http://127.0.0.1:PORT/v1]

Per size: the sample generator writes a tree of about SIZE train queries (400 per scale step), the reference
teacher runs in its own process at a fixed latency (or --teacher_base_url names a server already running), and
`python -m pipeline` runs as a child process. Every image of a bench tree is M-BEIR-sized: an RGB JPEG with a
short side of 256 and photo-like entropy, 20-40 KB (the sample's own images are 64 px and would hide the cost of
reading, checking and encoding images). With --reasoning_only, SIZE counts queries of the reasoning datasets
alone, each with its own text and its own image, and the pipeline reads only those datasets: teacher requests are
about 2 x SIZE (a CoT and a verifier call per query).

Printed: wall time, rows/s, teacher requests and requests/s over the whole run against the ideal
(max_in_flight / latency), CPU seconds of the pipeline's process tree (the teacher is another process, so it is
excluded) per input row, per reasoning row (runs with reasoning rows only) and per direct row (runs with direct
rows only), cores used (CPU seconds / wall), per row marginally between sizes (start-up removed), peak memory of
the pipeline's process tree (RSS of the process and all its children, polled every 0.2 s), and the local
partitions the run used. Unknown flags go to the pipeline (e.g. --check_images none, --partition_queries 0).

The direct-row check (--direct_sizes) runs the full pipeline on the direct datasets alone (no teacher calls),
so its marginal CPU per row is the cost of a direct row from reading to its Parquet shard.
"""

from __future__ import annotations

import argparse
import io
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
from PIL import Image, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES_PER_SCALE = 400  # pipeline.sample: 40 train queries per dataset per scale step, 10 datasets
REASONING_PER_SCALE = 160  # of which the 4 reasoning datasets (pipeline.routing.PAPER_REASONING_DATASETS)
# M-BEIR's images (MBEIR.md): RGB JPEGs, short side 256, mostly 4:3, 20-40 KB.
IMAGE_SHORT, IMAGE_LONG, IMAGE_QUALITY, TEXTURES = 256, 341, 85, 32
BENCH_IMAGE_DIR = "mbeir_images/bench_queries"
TREE_VERSION = 2  # bump when the bench trees change, so old trees under --work_dir are not reused
POLL_S = 0.2
PARTITION_LINE = re.compile(r"^partition \d+/(\d+):", re.M)  # printed by pipeline.run per local partition
# Targets of the issue: memory must not grow with input; read/join/route must stay cheap.
MAX_MEMORY_GROWTH = 0.25  # peak RSS growth from the smallest to the largest size (50k to 200k dry queries)
MAX_CPU_MS_PER_ROW = 1.0  # marginal CPU per direct row
MIN_RPS_VS_CURATOR = 1.5  # the whole run's teacher req/s against Curator's call-only req/s, same server


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
    """`python -m pipeline.teacher.reference.server` in its own process."""

    def __init__(self, latency_ms: float):
        self.latency_ms = latency_ms

    def __enter__(self) -> Teacher:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.teacher.reference.server", "--port", "0",
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


def _reasoning_datasets() -> list[str]:
    sys.path.insert(0, ROOT)
    from pipeline.routing import PAPER_REASONING_DATASETS

    return sorted(PAPER_REASONING_DATASETS)


def _direct_datasets() -> list[str]:
    sys.path.insert(0, ROOT)
    from pipeline.mbeir.layout import DATASET_TASKS
    from pipeline.routing import PAPER_REASONING_DATASETS

    return sorted(d for d in DATASET_TASKS if d not in PAPER_REASONING_DATASETS)


def _textures() -> list[Image.Image]:
    """Photo-like backgrounds: a smooth random colour field plus grain (the grain sets the JPEG size)."""
    import numpy as np

    out = []
    for seed in range(TEXTURES):
        rng = np.random.default_rng(seed)
        field = Image.fromarray(rng.integers(0, 256, (IMAGE_SHORT // 16, IMAGE_LONG // 16 + 4, 3), dtype=np.uint8))
        field = field.resize((IMAGE_LONG + 64, IMAGE_SHORT), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 12 + seed % 8 * 2.5, (IMAGE_SHORT, IMAGE_LONG + 64, 3))
        pixels = np.clip(np.asarray(field, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6)))
    return out


def photo_jpeg(index: int, textures: list[Image.Image]) -> bytes:
    """The index-th bench photo: distinct bytes per index, landscape or portrait, short side 256."""
    texture = textures[index % len(textures)]
    x = (index // len(textures)) % 64
    img = texture.crop((x, 0, x + IMAGE_LONG, IMAGE_SHORT))
    if index % 3 == 2:
        img = img.transpose(Image.Transpose.ROTATE_90)
    mark = Image.new("RGB", (12, 12), ((index * 37) % 256, (index // 256 * 53) % 256, (index // 65536 * 91) % 256))
    img.paste(mark, (8 + index % 97, 8 + (index // 97) % 97))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=IMAGE_QUALITY)
    return buf.getvalue()


def _mbeir_sized_images(root: str, textures: list[Image.Image]) -> int:
    """Replace every image of the tree with an M-BEIR-sized photo (a distinct one per file)."""
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "mbeir_images")) for f in fs)
    for i, path in enumerate(paths):
        with open(path, "wb") as f:
            f.write(photo_jpeg(i, textures))
    return len(paths)


def _distinct_reasoning_queries(root: str, textures: list[Image.Image], first_image: int) -> int:
    """Give every train query of the reasoning datasets its own text and its own image, so each makes its own
    teacher requests (the sample repeats query content) and its own answers (none is a duplicate answer)."""
    from pipeline.mbeir import layout
    from pipeline.routing import PAPER_REASONING_DATASETS

    n = first_image
    for dataset in sorted(PAPER_REASONING_DATASETS):
        rel = layout.query_file("train", dataset)
        folder = os.path.join(root, BENCH_IMAGE_DIR, dataset)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for i, row in enumerate(rows):
            row["query_txt"] = f"{row['query_txt'] or ''} (bench query {i})".strip()
            if row["query_img_path"]:
                name = f"{BENCH_IMAGE_DIR}/{dataset}/q{i:07d}.jpg"
                with open(os.path.join(root, name), "wb") as img:
                    img.write(photo_jpeg(n, textures))
                n += 1
                row["query_img_path"] = name
        with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return n - first_image


def make_tree(work_dir: str, size: int, reasoning_only: bool = False) -> tuple[str, int]:
    """(root, train queries) of a generated tree of at least `size` train queries (reasoning queries with
    `reasoning_only`), its images M-BEIR-sized; reused when present."""
    sys.path.insert(0, ROOT)
    from pipeline.sample import generate

    per_scale = REASONING_PER_SCALE if reasoning_only else QUERIES_PER_SCALE
    scale = max(1, math.ceil(size / per_scale))
    root = os.path.join(work_dir, f"mbeir-v{TREE_VERSION}-scale{scale}{'-reasoning' if reasoning_only else ''}")
    if not os.path.exists(os.path.join(root, ".complete")):
        shutil.rmtree(root, ignore_errors=True)
        t = time.monotonic()
        generate(root, seed=0, scale=scale)
        textures = _textures()
        images = _mbeir_sized_images(root, textures)
        if reasoning_only:
            images += _distinct_reasoning_queries(root, textures, images)
        open(os.path.join(root, ".complete"), "w").close()
        print(f"  generated {scale * QUERIES_PER_SCALE} queries, {images} M-BEIR-sized images in "
              f"{time.monotonic() - t:.1f} s", flush=True)
    return root, scale * per_scale


def run_once(root: str, out: str, args, extra: list[str], base_url: str | None) -> dict:
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-bench")}
    cmd = [sys.executable, "-m", "pipeline", "--mbeir_root", root, "--output_dir", out,
           "--max_in_flight", str(args.max_in_flight), "--temp_location", os.path.join(out + "-tmp"), *extra]
    if base_url is None:
        cmd.append("--dry_run")
    else:
        cmd += ["--teacher_base_url", base_url, "--teacher_model", args.teacher_model]
    shutil.rmtree(out, ignore_errors=True)
    log_path = out + ".log"
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
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


class ExternalTeacher:
    """--teacher_base_url: a server already running (its CPU is not ours to measure)."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def __enter__(self) -> ExternalTeacher:
        return self

    def cpu_s(self) -> float | None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


def curator(args, base_url: str) -> dict:
    """Curator's call-only figure against the same server, just before our run (bench-peers/curator_vs.sh)."""
    done = subprocess.run(["bash", args.curator, base_url, str(args.curator_requests)], capture_output=True,
                          text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{args.curator} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _per_row_ms(cpu_s: float, rows: int, other_rows: int) -> float | None:
    """CPU ms per row of one route, for a run that has rows of that route only (start-up included)."""
    return 1000 * cpu_s / rows if rows and not other_rows else None


def measure(size: int, args, extra: list[str], mode: str) -> dict:
    """mode: "full", "dry_run", or "direct" (full run over the direct datasets only)."""
    reasoning_only = args.reasoning_only and mode != "direct"
    root, n = make_tree(args.work_dir, size, reasoning_only)
    out = os.path.join(args.work_dir, f"out-{n}-{mode}{'-reasoning' if reasoning_only else ''}")
    if reasoning_only:
        extra = [*extra, "--datasets", ",".join(_reasoning_datasets())]
    if mode == "dry_run":
        r = run_once(root, out, args, extra, None)
    else:
        if mode == "direct":
            extra = [*extra, "--datasets", ",".join(_direct_datasets())]
        server = ExternalTeacher(args.teacher_base_url) if args.teacher_base_url else Teacher(args.latency_ms)
        with server as teacher:
            peer = curator(args, teacher.base_url) if args.curator and mode == "full" else None
            start = teacher.cpu_s()
            r = run_once(root, out, args, extra, teacher.base_url)
            r["teacher_server_cpu_s"] = None if start is None else teacher.cpu_s() - start
            if peer is not None:
                r["curator"] = peer
    stats = r.pop("stats")
    requests = stats.get("teacher", {}).get("requests", 0)
    ideal = args.max_in_flight / (args.latency_ms / 1000.0)
    direct, reasoning = stats["routed"].get("direct", 0), stats["routed"].get("reasoning", 0)
    return {"size": n, "mode": mode, "reasoning_only": reasoning_only, "input": stats["input"],
            "direct": direct, "reasoning": reasoning,
            **r, "rows_per_s": stats["input"] / r["wall_s"], "cpu_ms_per_row": 1000 * r["cpu_s"] / stats["input"],
            "cpu_ms_per_reasoning_row": _per_row_ms(r["cpu_s"], reasoning, direct),
            "cpu_ms_per_direct_row": _per_row_ms(r["cpu_s"], direct, reasoning),
            "cores_used": r["cpu_s"] / r["wall_s"],
            "teacher_requests": requests, "teacher_rps": requests / r["wall_s"], "teacher_ideal_rps": ideal,
            "accepted": sum(stats["accepted"].values())}


def _marginal_ms(a: dict, b: dict) -> float:
    return 1000 * (b["cpu_s"] - a["cpu_s"]) / (b["input"] - a["input"])


def verdicts(results: list[dict], direct: list[dict]) -> dict:
    """Target checks: CPU per direct row, marginally between the direct-only runs; memory growth from the
    smallest to the largest size run (make bench-pipeline: 50k to 200k dry queries). The marginal CPU per
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
        lo, hi = by_size[0], by_size[-1]
        if hi["size"] > lo["size"]:
            growth = hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1
            out["memory_growth"] = {"value": growth, "between": [lo["size"], hi["size"]],
                                    "target": MAX_MEMORY_GROWTH, "pass": growth < MAX_MEMORY_GROWTH}
    return out


def report(r: dict, args) -> dict:
    per_route = "".join(f", {r[k]:.2f} ms per {name} row" for k, name in
                        (("cpu_ms_per_reasoning_row", "reasoning"), ("cpu_ms_per_direct_row", "direct"))
                        if r[k] is not None)
    print(f"  input {r['input']}  wall {r['wall_s']:.1f} s  {r['rows_per_s']:.0f} rows/s  "
          f"cpu {r['cpu_s']:.1f} s ({r['cpu_ms_per_row']:.2f} ms/row{per_route}, incl. start-up)  "
          f"cores used {r['cores_used']:.2f}  peak RSS {r['peak_rss_mib']:.0f} MiB  partitions {r['partitions']}",
          flush=True)
    if r["teacher_requests"]:
        server = ("an external server" if r["teacher_server_cpu_s"] is None
                  else f"the server used {r['teacher_server_cpu_s']:.1f} s CPU")
        print(f"  teacher {r['teacher_requests']} requests, {r['teacher_rps']:.0f} req/s over the whole run "
              f"(ideal {r['teacher_ideal_rps']:.0f} = {args.max_in_flight} in flight / "
              f"{args.latency_ms:.0f} ms); {server}", flush=True)
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
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/bench_pipeline.py")


def _main(argv: list[str]) -> int:
    from common.cli import CliParser, positive_int

    p = CliParser(prog="python scripts/bench_pipeline.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default="10000,100000", help="comma-separated train query counts")
    p.add_argument("--dry_run", action="store_true", help="no teacher: read, join, route and plan only")
    p.add_argument("--latency_ms", type=float, default=50.0, help="reference teacher latency per call")
    p.add_argument("--max_in_flight", type=positive_int, default=64)
    p.add_argument("--reasoning_only", action="store_true",
                   help="SIZE reasoning queries, each with its own text and image (teacher requests ~ 2 x SIZE); "
                        "the direct-row check still runs on the direct datasets")
    p.add_argument("--teacher_base_url", default=None,
                   help="an OpenAI-compatible server already running (e.g. shared/bench-peers/fake_teacher.py "
                        "--tagged) instead of starting the reference teacher; --latency_ms should say its latency")
    p.add_argument("--teacher_model", default="reference-teacher", help="model name sent to the teacher")
    p.add_argument("--curator", default=None,
                   help="path of bench-peers/curator_vs.sh: before each full run, Curator sends "
                        "--curator_requests prompts to the same server; the ratio is a target check")
    p.add_argument("--curator_requests", type=positive_int, default=3000)
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
    for r in results:
        if "curator" in r:
            ratio = r["teacher_rps"] / r["curator"]["req_per_s"]
            checks[f"teacher_rps_vs_curator_{r['size']}"] = {
                "value": ratio, "between": [r["teacher_rps"], r["curator"]["req_per_s"]],
                "target": MIN_RPS_VS_CURATOR, "pass": ratio >= MIN_RPS_VS_CURATOR}
    for name, c in checks.items():
        sign = ">=" if name.startswith("teacher_rps_vs") else "<"
        target = f"(target {sign} {c['target']}) {'PASS' if c['pass'] else 'FAIL'}" if "target" in c else "(no target)"
        a, b = (f"{v:.0f}" if isinstance(v, float) else str(v) for v in c["between"])
        print(f"{name}: {c['value']:.3f} between {a} and {b} {target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {**vars(args), "pipeline_args": extra}, "results": results, "direct": direct,
                       "checks": checks, "machine": machine()},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
