"""Teacher client throughput against the reference server (its own process): requests/s, CPU s per request,
and the ratio to the ideal (max_in_flight / latency) and to this machine's single-process client ceiling
(latency 0, many in flight), for 1 and 2 worker processes, each with its own TeacherClient.

    .venv/bin/python scripts/bench_teacher.py [--requests 2000] [--json out/bench_teacher.json]

Target: each process reaches >= 80% of min(ideal, ceiling); 2 processes scale near-linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def server(latency_ms: float):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.teacher.reference.server", "--port", "0",
                             "--latency_ms", str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        yield line.strip().rsplit(" ", 1)[-1], proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def worker(a: argparse.Namespace) -> None:
    """One process: build requests, wait for "go" on stdin, run them all, print one JSON line."""
    sys.path.insert(0, ROOT)
    from pipeline.mbeir.records import CandidateRecord, Example, QueryRecord
    from pipeline.teacher.client import TeacherClient
    from pipeline.teacher.config import TeacherConfig
    from pipeline.teacher.prompting import build_cot_request

    def example(i: int) -> Example:
        q = QueryRecord(f"8:{i}", f"is red and has long sleeves, variant {a.tag}-{i}", None, "image,text", None,
                        ("8:1",), (), 7, "cirr", 8, "query/train/mbeir_cirr_train.jsonl", i + 1)
        return Example(q, [CandidateRecord("8:1", "a red long-sleeved shirt", None, "image")],
                       "Retrieve an image that matches the modification.", "image")

    reqs = [build_cot_request(example(i), model="bench", params={"max_tokens": 256}) for i in range(a.requests)]
    cfg = TeacherConfig(a.base_url, "bench", max_in_flight=a.max_in_flight, transport=a.transport,
                        progress_interval_s=3600)
    client = TeacherClient(cfg)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.time(), time.process_time()
    ok = sum(r.ok for r in client.run_many(reqs))
    t1, c1 = time.time(), time.process_time()
    client.close()
    print(json.dumps({"start": t0, "end": t1, "cpu_s": c1 - c0, "ok": ok, "n": len(reqs)}), flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(srv: tuple[str, int], processes: int, requests: int, max_in_flight: int, transport: str) -> dict:
    base_url, server_pid = srv
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--base_url", base_url, "--requests",
                               str(requests), "--max_in_flight", str(max_in_flight), "--transport", transport,
                               "--tag", str(i)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for i in range(processes)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    server_cpu0 = cpu_s(server_pid)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [json.loads(p.stdout.readline()) for p in procs]
    server_cpu = cpu_s(server_pid) - server_cpu0
    for p in procs:
        p.wait(timeout=60)
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    n = sum(o["n"] for o in outs)
    return {"processes": processes, "requests": n, "ok": sum(o["ok"] for o in outs), "wall_s": round(wall, 3),
            "req_per_s": round(n / wall, 1),
            "per_process_req_per_s": [round(o["n"] / (o["end"] - o["start"]), 1) for o in outs],
            "cpu_ms_per_request": round(1000 * sum(o["cpu_s"] for o in outs) / n, 3),
            "server_cpu_ms_per_request": round(1000 * server_cpu / n, 3)}


def _main(argv: list[str]) -> None:
    from common.cli import CliParser, positive_int
    from common.errors import ConfigError

    p = CliParser(prog="python scripts/bench_teacher.py", description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base_url", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    p.add_argument("--requests", type=positive_int, default=2000, help="per process")
    p.add_argument("--latency_ms", type=float, default=100.0)
    p.add_argument("--max_in_flight", type=positive_int, default=64)
    p.add_argument("--ceiling_in_flight", type=positive_int, default=256)
    p.add_argument("--transport", default="direct")
    p.add_argument("--transports", default="direct,aiohttp,httpx", help="compared at 1 process and at the ceiling")
    p.add_argument("--json", default="out/bench_teacher.json")
    a = p.parse_args(argv)
    if a.latency_ms <= 0:
        raise ConfigError(f"--latency_ms {a.latency_ms} is out of range: it must be above 0")
    if a.worker:
        return worker(a)

    rows = []
    transports = a.transports.split(",")
    with server(0.0) as url:
        for t in transports:
            rows.append({"case": f"ceiling {t}", "latency_ms": 0, "max_in_flight": a.ceiling_in_flight,
                         **run(url, 1, a.requests, a.ceiling_in_flight, t)})
    ceiling = {r["case"].split()[1]: r["req_per_s"] for r in rows}
    ideal = a.max_in_flight / (a.latency_ms / 1000.0)
    with server(a.latency_ms) as url:
        for t in transports:
            rows.append({"case": f"1 process {t}", "latency_ms": a.latency_ms, "max_in_flight": a.max_in_flight,
                         **run(url, 1, a.requests, a.max_in_flight, t)})
        rows.append({"case": f"2 processes {a.transport}", "latency_ms": a.latency_ms,
                     "max_in_flight": a.max_in_flight, **run(url, 2, a.requests, a.max_in_flight, a.transport)})
    for r in rows:
        if r["latency_ms"]:
            t = r["case"].split()[-1]
            target = min(ideal, ceiling[t])
            per_process = r["req_per_s"] / r["processes"]
            r.update(ideal_req_per_s=ideal, ratio_to_ideal=round(per_process / ideal, 3),
                     ratio_to_target=round(per_process / target, 3))

    print(f"{'case':<22}{'lat ms':>7}{'in flight':>10}{'req/s':>9}{'cpu ms/req':>11}{'/ideal':>8}{'/target':>8}"
          f"{'server ms/req':>14}")
    for r in rows:
        print(f"{r['case']:<22}{r['latency_ms']:>7g}{r['max_in_flight']:>10}{r['req_per_s']:>9.1f}"
              f"{r['cpu_ms_per_request']:>11.3f}{r.get('ratio_to_ideal', float('nan')):>8.2f}"
              f"{r.get('ratio_to_target', float('nan')):>8.2f}{r['server_cpu_ms_per_request']:>14.3f}")
    out = {"machine_cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "rows": rows}
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.json}")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/bench_teacher.py")


if __name__ == "__main__":
    sys.exit(main())
