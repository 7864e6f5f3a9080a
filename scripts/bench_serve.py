"""Serving throughput: `python -m trainer.serve` (its own process) answering C concurrent openai clients (one query
per request by default) against the same queries encoded in-process by one encode_queries call at the same batch
size, on the workloads of `trainer.bench --mix bypass96|bypass38` (built by trainer/benchmark/mix.py). Reports per
mix and C: queries/s, the ratio to in-process, p50/p99 request latency, the lowest cosine between a served and an
in-process embedding; then one easy request's p50 latency (--easy_per_request queries routed direct, one request
at a time) while clients keep reasoning queries in flight, against the same on an idle server; and, for every
measurement, the CPU each side spent (the server's HTTP front, its model process, the client, in-process) and how
busy the machine's CPUs were with work not ours.

    .venv/bin/python scripts/bench_serve.py [--checkpoint out/trace-tiny] [--mbeir_root out/mbeir-sample]
        [--queries 1000] [--clients 1 8 64] [--repeats 2] [--json out/bench/serve.json]

The checkpoint and sample are `make train`'s. Targets: >= 0.85x in-process at 64 clients on both mixes; the easy
query's p50 under load within 2x its p50 on an idle server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CliParser, non_negative_int, positive_int, run_cli  # noqa: E402
from common.errors import ConfigError  # noqa: E402

MODEL = "bench"
PROG = "python scripts/bench_serve.py"
_TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu_seconds(path: str) -> float:
    """utime + stime of a /proc/.../stat file."""
    return sum(int(x) for x in Path(path).read_text().rsplit(")", 1)[1].split()[11:13]) / _TICK


def children(pid: int) -> list[int]:
    """The processes `pid` started (the server's: its model process, multiprocessing's resource tracker), the
    model process first."""
    kids = [int(k) for task in Path(f"/proc/{pid}/task").iterdir() for k in (task / "children").read_text().split()]
    return sorted(kids, key=lambda k: b"spawn_main" not in Path(f"/proc/{k}/cmdline").read_bytes())


class CpuMeter:
    """CPU seconds over a `with` block: the whole machine's busy time (/proc/stat), each named group of processes'
    (threads included) and its first process's main thread's (the server's event loop), and "others": the
    machine's minus ours, what other work took from the cores meanwhile. Rates in cores are the seconds over the
    wall time."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids, self.result = pids, {}

    def _read(self) -> dict[str, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        out = {"wall": time.perf_counter(), "machine": (sum(fields) - fields[3] - fields[4]) / _TICK}
        for name, group in self.pids.items():
            out[name] = sum(_cpu_seconds(f"/proc/{pid}/stat") for pid in group)
            out[f"{name}_main_thread"] = _cpu_seconds(f"/proc/{group[0]}/task/{group[0]}/stat")
        return out

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        spent = {k: end[k] - self.start[k] for k in end}
        wall = spent.pop("wall")
        others = spent["machine"] - sum(spent[name] for name in self.pids)
        self.result = {"seconds": {k: round(v, 3) for k, v in spent.items()},
                       "cores_others": round(max(0.0, others) / wall, 2),
                       "cores_machine": round(spent["machine"] / wall, 2)}


def payload(query) -> dict:
    """A QueryInput as the request item the server takes (its image as a PNG data URL: the same pixels)."""
    item = {"text": query.text, "dataset": query.dataset, "task_id": query.task_id}
    if query.image is not None:
        buf = io.BytesIO()
        query.image.save(buf, format="PNG")
        item["image"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {k: v for k, v in item.items() if v is not None}


@contextmanager
def server(a: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """The server's URL and pid; its model runs in a child process (see children)."""
    cmd = [sys.executable, "-m", "trainer.serve", "--checkpoint", a.checkpoint, "--port", "0", "--model_name",
           MODEL, "--batch_size", str(a.batch_size), "--max_new_tokens", str(a.max_new_tokens),
           "--max_queue", str(max(4096, a.queries)), "--threads", str(a.threads)]
    if a.max_batch_wait_ms is not None:
        cmd += ["--max_batch_wait_ms", str(a.max_batch_wait_ms)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        found = re.search(r" on (http://\S+) ", proc.stdout.readline())
        if not found:
            raise ConfigError(f"the server did not start (exit {proc.wait()}); run {' '.join(cmd[1:])} to see why")
        yield found.group(1), proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


TRANSPORTS = ("aiohttp", "httpx")  # the openai client's two: DefaultAioHttpClient, or its default httpx2


def _client(url: str, transport: str):
    import openai

    http = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600, http_client=http)


async def drive(url: str, items: list[dict], clients: int, per_request: int, transport: str) -> dict:
    """Every item sent, per_request a request, by `clients` tasks that each send their next request as soon as
    the last is answered: wall seconds, each request's latency, the embeddings in item order."""
    client = _client(url, transport)
    batches = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    order = iter(range(len(batches)))
    latency, vectors = [0.0] * len(batches), [None] * len(batches)

    async def worker() -> None:
        for i in order:
            t0 = time.perf_counter()
            res = await client.embeddings.create(model=MODEL, input=batches[i])
            latency[i] = time.perf_counter() - t0
            vectors[i] = [d.embedding for d in res.data]

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    seconds = time.perf_counter() - t0
    await client.close()
    return {"seconds": seconds, "latency": latency, "embeddings": [v for batch in vectors for v in batch]}


async def easy_latency(url: str, easy: list[dict], load: list[dict], load_clients: int, transport: str,
                       per_request: int = 1) -> dict:
    """Latencies of the easy queries, per_request a request, sent one request at a time while `load_clients`
    tasks keep sending reasoning queries (0: an idle server)."""
    client, stop = _client(url, transport), asyncio.Event()

    async def loader(start: int) -> int:
        k = start
        while not stop.is_set():
            await client.embeddings.create(model=MODEL, input=[load[k % len(load)]])
            k += 1
        return k - start

    tasks = [asyncio.create_task(loader(i * 7)) for i in range(load_clients)]
    await asyncio.sleep(1.0 if load_clients else 0)  # the decode batch fills
    latency = []
    for i in range(0, len(easy) - per_request + 1, per_request):
        t0 = time.perf_counter()
        await client.embeddings.create(model=MODEL, input=easy[i:i + per_request])
        latency.append(time.perf_counter() - t0)
    stop.set()
    sent = sum(await asyncio.gather(*tasks))
    await client.close()
    return {"load_clients": load_clients, "p50_ms": round(1000 * percentile(latency, 0.5), 2),
            "p99_ms": round(1000 * percentile(latency, 0.99), 2), "reasoning_queries_sent": sent}


def min_cosine(served: list, reference) -> float:
    import torch

    got = torch.nn.functional.normalize(torch.tensor(served, dtype=torch.float32), dim=-1)
    return round(float((got * reference).sum(-1).min()), 6)


def health(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=60) as res:
        return json.load(res)


@dataclass
class Workload:
    queries: list  # QueryInput
    items: list[dict]  # the same queries as request items
    reference: object  # EncodeResult of one in-process adaptive run: embeddings and routes


def _ms(values: Sequence[float], q: float) -> float | None:
    return round(1000 * percentile(values, q), 2) if values else None


def served_run(url: str, pids: dict[str, list[int]], w: Workload, clients: int, a: argparse.Namespace) -> dict:
    """One served run of the workload; with one query a request, latencies also split by the query's route."""
    before = health(url)
    with CpuMeter(pids) as cpu:
        r = asyncio.run(drive(url, w.items, clients, a.per_request, a.transport))
    after = health(url)
    n, spent = len(w.items), cpu.result["seconds"]
    out = {"qps": round(n / r["seconds"], 2), "p50_ms": _ms(r["latency"], 0.5), "p99_ms": _ms(r["latency"], 0.99),
           "min_cosine": min_cosine(r["embeddings"], w.reference.embeddings), "cpu": cpu.result,
           "server_cpu_ms_per_query": round(1000 * spent["server"] / n, 3),
           "server_loop_cpu_ms_per_query": round(1000 * spent["server_main_thread"] / n, 3),
           "model_cpu_ms_per_query": round(1000 * spent["model"] / n, 3),
           "client_cpu_ms_per_query": round(1000 * spent["client"] / n, 3),
           "mean_prefill_chunk": round((after["prefilled_inputs"] - before["prefilled_inputs"])
                                       / max(1, after["prefill_chunks"] - before["prefill_chunks"]), 2)}
    if a.per_request == 1:
        for route, flag in (("direct", False), ("reasoning", True)):
            lat = [t for t, f in zip(r["latency"], w.reference.reasoned, strict=True) if f == flag]
            out[f"{route}_p50_ms"], out[f"{route}_p99_ms"] = _ms(lat, 0.5), _ms(lat, 0.99)
    return out


def in_process_run(embedder, queries, a: argparse.Namespace) -> dict:
    from trainer.benchmark import mix

    with CpuMeter({"client": [os.getpid()]}) as cpu:
        run, _ = mix.run_mode(embedder, queries, "adaptive", a.batch_size, a.max_new_tokens)
    return {**run, "cpu": cpu.result, "cpu_ms_per_query": round(1000 * run["cpu_seconds"] / len(queries), 3)}


def _keep_best(best: dict, key: str, run: dict) -> None:
    if key not in best or run["qps"] > best[key]["qps"]:
        best[key] = run


def bench_mixes(a: argparse.Namespace, embedder, workloads: dict[str, Workload], url: str,
                pids: dict[str, list[int]]) -> dict:
    """Per mix: the in-process run and the served run at each C, best of a.repeats rounds (a round runs them
    all, in-process first), so drift of the shared machine hits both alike."""
    out = {}
    for name, w in workloads.items():
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            _keep_best(best, "in_process", in_process_run(embedder, w.queries, a))
            for c in a.clients:
                _keep_best(best, f"c{c}", served_run(url, pids, w, c, a))
        for c in a.clients:
            best[f"c{c}"]["ratio_to_in_process"] = round(best[f"c{c}"]["qps"] / best["in_process"]["qps"], 3)
        out[name] = {"share_reasoned": round(sum(w.reference.reasoned) / len(w.queries), 4), **best}
    return out


def bench_easy(a: argparse.Namespace, workloads: dict[str, Workload], url: str) -> dict:
    """Easy: queries adaptive encodes without reasoning; the load: queries that reason (both from the mixes)."""
    routed = [(item, reasoned) for w in workloads.values()
              for item, reasoned in zip(w.items, w.reference.reasoned, strict=True)]
    easy = [item for item, reasoned in routed if not reasoned][:a.easy_queries * a.easy_per_request]
    load = [item for item, reasoned in routed if reasoned]
    idle = asyncio.run(easy_latency(url, easy, load, 0, a.transport, a.easy_per_request))
    loaded = [asyncio.run(easy_latency(url, easy, load, n, a.transport, a.easy_per_request))
              for n in a.load_clients]
    return {"idle": idle, "loaded": loaded, "ratio_to_idle": [round(r["p50_ms"] / idle["p50_ms"], 3) for r in loaded]}


def _row(name: str, m: dict, key: str) -> str:
    r, base = m[key], m["in_process"]
    split = " | ".join(f"{r.get(k) or '-'}" for k in ("direct_p50_ms", "direct_p99_ms", "reasoning_p50_ms",
                                                       "reasoning_p99_ms"))
    return " | ".join([
        name, f"{100 * m['share_reasoned']:.1f}", key[1:], f"{r['qps']:.1f}", f"{base['qps']:.1f}",
        f"{r['ratio_to_in_process']:.3f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", split,
        f"{r['min_cosine']:.5f}", f"{r['mean_prefill_chunk']:.1f}",
        f"{r['server_cpu_ms_per_query']:.2f} ({r['server_loop_cpu_ms_per_query']:.2f}) / "
        f"{r['model_cpu_ms_per_query']:.2f} / {r['client_cpu_ms_per_query']:.2f} / {base['cpu_ms_per_query']:.2f}",
        f"{r['cpu']['cores_others']:.2f} ({base['cpu']['cores_others']:.2f})"])


def table(result: dict) -> str:
    wait = "the server's default" if result["max_batch_wait_ms"] is None else result["max_batch_wait_ms"]
    lines = [f"batch {result['batch_size']}, {result['queries']} queries a mix, {result['per_request']} a request, "
             f"torch threads {result['threads']}, max_batch_wait_ms {wait}, openai client on {result['transport']}",
             "mix | reasoned % | clients | q/s | in-process q/s | x in-process | p50 ms | p99 ms | direct p50 | p99 | "
             "reasoning p50 | p99 | min cos | chunk | CPU ms/query: server front (its event loop) / model process / "
             "client / in-process | "
             "cores used by others: served run (in-process run)"]
    for name, m in result["mixes"].items():
        lines += [_row(name, m, key) for key in m if key.startswith("c")]
    easy = result["easy"]
    loaded = "; ".join(f"{r['load_clients']} reasoning clients {r['p50_ms']} ms ({x}x idle)"
                       for r, x in zip(easy["loaded"], easy["ratio_to_idle"], strict=True))
    lines.append(f"easy request ({result['easy_per_request']} a request) p50: idle {easy['idle']['p50_ms']} ms; "
                 f"{loaded}")
    return "\n".join(lines)


def parser() -> CliParser:
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="out/trace-tiny")
    p.add_argument("--mbeir_root", default="out/mbeir-sample")
    p.add_argument("--mixes", nargs="+", default=["bypass96", "bypass38"])
    p.add_argument("--queries", type=positive_int, default=1000)
    p.add_argument("--clients", type=positive_int, nargs="+", default=[1, 8, 64])
    p.add_argument("--per_request", type=positive_int, default=1, help="queries in one request")
    p.add_argument("--transport", choices=TRANSPORTS, default="aiohttp", help="the openai client's HTTP transport")
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--batch_size", type=positive_int, default=8)
    p.add_argument("--max_new_tokens", type=non_negative_int, default=128)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads, server and in-process alike")
    p.add_argument("--max_batch_wait_ms", type=non_negative_int, default=None,
                   help="the server's flag (default: the server's default)")
    p.add_argument("--easy_queries", type=positive_int, default=100, help="easy requests sent")
    p.add_argument("--easy_per_request", type=positive_int, default=1, help="easy queries in one request")
    p.add_argument("--load_clients", type=positive_int, nargs="+", default=[8, 64])
    p.add_argument("--json", default=None, help="write the result here too")
    return p


def _main(argv: Sequence[str]) -> dict:
    a = parser().parse_args(list(argv))
    from trainer.benchmark import mix

    try:
        parts = {name: mix.parse_mix(name) for name in a.mixes}
    except ValueError as err:
        raise ConfigError(f"--mixes: {err}") from None
    for flag, path in (("--checkpoint", a.checkpoint), ("--mbeir_root", a.mbeir_root)):
        if not Path(path).is_dir():
            raise ConfigError(f"{flag} {path} is not a folder: run `make train` first, or point {flag} elsewhere")
    import torch

    from trainer import TraceEmbedder

    torch.set_num_threads(a.threads)
    embedder = TraceEmbedder.from_pretrained(a.checkpoint, device="cpu")
    workloads = {}
    for name in a.mixes:
        queries, _ = mix.workload(Path(a.mbeir_root), parts[name], a.queries)
        ref = embedder.encode_queries(queries, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
        workloads[name] = Workload(queries, [payload(q) for q in queries], ref)
    result = {k: getattr(a, k) for k in ("queries", "per_request", "batch_size", "max_new_tokens", "threads",
                                         "max_batch_wait_ms", "transport", "easy_per_request")}
    with server(a) as (url, pid):
        asyncio.run(drive(url, next(iter(workloads.values())).items[:64], 8, 1, a.transport))  # warm-up
        pids = {"client": [os.getpid()], "server": [pid], "model": children(pid)}
        result["mixes"] = bench_mixes(a, embedder, workloads, url, pids)
        result["easy"] = bench_easy(a, workloads, url)
    print(table(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
