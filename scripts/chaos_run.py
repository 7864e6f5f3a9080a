"""Chaos run: a faulty teacher, the pipeline SIGKILLed at random moments and restarted, then compared with an
undisturbed run against a clean teacher.

    python scripts/chaos_run.py --mbeir_root ROOT --work_dir DIR [--limit 20] [--kills 3] [--seed 0]

The reference teacher runs in its own process (`python scripts/chaos_run.py teacher ...`, which adds a /stats
route) with 10% 429s, 5% 500s, 2% hangs past the client timeout and 5% malformed outputs. `python -m pipeline`
runs as a child process group; once this attempt has journaled something, it is killed with SIGKILL after a
random delay, and restarted, `--kills` times; the last attempt runs to the end. Checked: data/ files are
byte-identical to the undisturbed run's, rejects/ and failed/ hold the same rows, stats.json agrees (teacher
usage aside), the counts identity holds, and the teacher's well-formed answers beyond the undisturbed run's stay
within the promised bound: per kill, max_in_flight plus the well-formed answers that arrived in the journal's
last flush interval (plus `--slack_s` for the flush's own write time). Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fault mix.
FAULTS = {"p429": 0.10, "p500": 0.05, "phang": 0.02, "pmalformed": 0.05}
HANG_S = 30.0  # far past the client's timeout below
CLIENT_TIMEOUT_S = 3.0  # short, so a hang costs one retry, not minutes
RETRY_AFTER_S = 0.2


def serve_teacher(argv: list[str]) -> None:
    """The reference teacher plus GET /stats ({calls, outcomes..., arrivals: [[monotonic_s, outcome], ...]})."""
    from aiohttp import web

    sys.path.insert(0, ROOT)
    from pipeline.teacher.reference.server import ReferenceServer

    p = argparse.ArgumentParser()
    p.add_argument("--latency_ms", type=float, default=100.0)
    p.add_argument("--clean", action="store_true", help="no faults")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    def add_stats(app, state):
        async def stats(_request):
            return web.json_response({**state.stats(), "arrivals": state.arrivals})

        app.router.add_get("/stats", stats)

    faults = {} if a.clean else FAULTS
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with ReferenceServer(setup_app=add_stats, latency_ms=a.latency_ms, seed=a.seed, hang_s=HANG_S,
                         retry_after_s=RETRY_AFTER_S, **faults) as server:
        print(f"listening on {server.base_url}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


class Teacher:
    """The teacher above in its own process."""

    def __init__(self, latency_ms: float, clean: bool = False, seed: int = 0):
        self.args = ["--latency_ms", str(latency_ms), "--seed", str(seed)] + (["--clean"] if clean else [])

    def __enter__(self) -> Teacher:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "teacher", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.proc.kill()
            raise RuntimeError(f"teacher did not start: {line!r}")
        self.base_url = line.split("listening on ", 1)[1].strip()
        return self

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10) as r:
            return json.load(r)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class ChaosResult:
    kills: list[float] = field(default_factory=list)  # time.monotonic() of each SIGKILL
    attempts: int = 0
    returncode: int | None = None
    log: str = ""


def pipeline_args(root: str, out: str, base_url: str, limit: int, max_in_flight: int, flush_interval_s: float,
                  extra: Sequence[str] = ()) -> list[str]:
    return ["--mbeir_root", root, "--output_dir", out, "--limit", str(limit), "--teacher_base_url", base_url,
            "--teacher_model", "reference-teacher", "--max_in_flight", str(max_in_flight),
            "--flush_interval_s", str(flush_interval_s), "--teacher_timeout_s", str(CLIENT_TIMEOUT_S),
            "--temp_location", out + "-tmp", *extra]


def _segments(out: str) -> int:
    return len(glob.glob(os.path.join(out, "journal", "journal-*.jsonl")))


def run_with_kills(args: list[str], out: str, kills: int, rng: random.Random, max_delay_s: float,
                   timeout_s: float = 600.0) -> ChaosResult:
    """Run `python -m pipeline ARGS`; SIGKILL it `kills` times at random moments after it journaled something;
    restart each time; let the last attempt finish."""
    result = ChaosResult()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while True:
        result.attempts += 1
        before = _segments(out)
        log_path = f"{out}.attempt{result.attempts}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout_s
            if len(result.kills) < kills:
                while proc.poll() is None and _segments(out) <= before and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, max_delay_s))
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    result.kills.append(time.monotonic())
                    proc.wait()
                    continue
            try:
                result.returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                result.returncode = proc.wait()
        with open(log_path) as f:
            result.log = f.read()
        return result


def _parquet_rows(out: str, folder: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(glob.glob(os.path.join(out, folder, "*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _files(out: str, folder: str) -> dict[str, bytes]:
    files = {}
    for path in sorted(glob.glob(os.path.join(out, folder, "*.parquet"))):
        with open(path, "rb") as f:
            files[os.path.relpath(path, out)] = f.read()
    return files


def _stats(out: str) -> dict:
    with open(os.path.join(out, "stats.json")) as f:
        return json.load(f)


# Usage columns: billed tokens summed over a request's calls, so a re-ask after a malformed answer (a fault of
# the chaos teacher, absent from the clean run) legitimately raises them; every other column must match.
USAGE_COLUMNS = ("prompt_tokens", "completion_tokens")


def compare(out: str, reference: str) -> tuple[list[str], dict]:
    """(differences, facts) between two output folders: data rows (bytes when no re-ask changed usage),
    reject and failure rows, stats.json without teacher usage."""
    problems = []
    a, b = _parquet_rows(out, "data"), _parquet_rows(reference, "data")
    facts = {"data_bytes_identical": _files(out, "data") == _files(reference, "data"), "rows": len(a),
             "rows_differing_only_in_usage": 0}
    if not facts["data_bytes_identical"]:
        by_id = {r["id"]: r for r in b}
        ids = {r["id"] for r in a} ^ set(by_id)
        if ids or len(a) != len(b):
            problems.append(f"data/ differs: {len(a)} vs {len(b)} rows, ids in one only: {sorted(ids)[:5]}")
        for row in a:
            other = by_id.get(row["id"], {})
            if row == other:
                continue
            diff = sorted(k for k in row if row[k] != other.get(k))
            if set(diff) <= set(USAGE_COLUMNS):
                facts["rows_differing_only_in_usage"] += 1
            else:
                problems.append(f"data row {row['id']} differs in {diff}")
    for folder in ("rejects", "failed"):
        if _parquet_rows(out, folder) != _parquet_rows(reference, folder):
            problems.append(f"{folder}/ rows differ")
    sa, sb = (_stats(d) for d in (out, reference))
    for d in (sa, sb):
        d.pop("teacher", None)
        for per in d.get("per_dataset", {}).values():
            per.pop("teacher", None)
    if sa != sb:
        problems.append(f"stats.json differs: {json.dumps(sa, sort_keys=True)[:400]} vs "
                        f"{json.dumps(sb, sort_keys=True)[:400]}")
    return problems, facts


def spend_bound(kills: list[float], arrivals: list, max_in_flight: int, flush_interval_s: float,
                slack_s: float) -> int:
    """Per kill: max_in_flight plus the well-formed answers that arrived in the last flush interval."""
    ok_times = [t for t, outcome in arrivals if outcome == "ok"]
    window = flush_interval_s + slack_s
    return sum(max_in_flight + sum(1 for t in ok_times if k - window <= t <= k) for k in kills)


def check_identity(out: str) -> str | None:
    sys.path.insert(0, ROOT)
    from pipeline.stats import check_identity as identity

    return identity(_stats(out), dry_run=False)


def undisturbed(root: str, out: str, limit: int, latency_ms: float, max_in_flight: int, flush_interval_s: float,
                extra: Sequence[str] = ()) -> int:
    """The reference run: the same flags against a clean teacher, never killed. Returns its teacher calls."""
    with Teacher(latency_ms, clean=True) as teacher:
        args = pipeline_args(root, out, teacher.base_url, limit, max_in_flight, flush_interval_s, extra)
        result = run_with_kills(args, out, 0, random.Random(0), 0.0)
        calls = teacher.stats()["ok"]
    if result.returncode != 0:
        raise RuntimeError(f"undisturbed run failed:\n{result.log[-3000:]}")
    return calls


def chaos(root: str, work_dir: str, limit: int, kills: int, seed: int, latency_ms: float, max_in_flight: int,
          flush_interval_s: float, max_delay_s: float, slack_s: float,
          reference: tuple[str, int] | None = None, extra: Sequence[str] = ()) -> dict:
    """The chaos run, compared with `reference` (output folder, teacher calls) of an undisturbed run with the
    same --limit and `extra` pipeline flags, or with one made first. Returns a report whose `problems` is empty
    when every check passes."""
    shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(work_dir)
    chaos_out = os.path.join(work_dir, "chaos")
    report: dict = {"limit": limit, "kills_asked": kills, "seed": seed, "latency_ms": latency_ms,
                    "max_in_flight": max_in_flight, "flush_interval_s": flush_interval_s, "faults": FAULTS,
                    "pipeline_args": list(extra)}
    if reference is None:
        t = time.monotonic()
        clean_out = os.path.join(work_dir, "clean")
        reference = clean_out, undisturbed(root, clean_out, limit, latency_ms, max_in_flight, flush_interval_s,
                                           extra)
        report["clean_wall_s"] = time.monotonic() - t
    clean_out, clean_calls = reference
    with Teacher(latency_ms, seed=seed) as teacher:
        args = pipeline_args(root, chaos_out, teacher.base_url, limit, max_in_flight, flush_interval_s, extra)
        t = time.monotonic()
        result = run_with_kills(args, chaos_out, kills, random.Random(seed), max_delay_s)
        report["chaos_wall_s"] = time.monotonic() - t
        chaos_stats = teacher.stats()
    problems = []
    if result.returncode != 0:
        problems.append(f"final attempt exited {result.returncode}:\n{result.log[-3000:]}")
    else:
        diffs, facts = compare(chaos_out, clean_out)
        problems += diffs
        report |= facts
        identity = check_identity(chaos_out)
        if identity:
            problems.append(identity)
    extra = chaos_stats["ok"] - clean_calls
    bound = spend_bound(result.kills, chaos_stats["arrivals"], max_in_flight, flush_interval_s, slack_s)
    if extra > bound:
        problems.append(f"{extra} extra well-formed answers paid for, more than the bound {bound}")
    report |= {"kills": len(result.kills), "attempts": result.attempts, "clean_calls": clean_calls,
               "chaos_calls": chaos_stats["calls"],
               "chaos_outcomes": {k: chaos_stats[k] for k in ("ok", "429", "500", "hang", "malformed")},
               "extra_ok_answers": extra, "extra_bound": bound, "problems": problems}
    return report


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/chaos_run.py")


def _main(argv: list[str]) -> int:
    from common.cli import CliParser, non_negative_int, positive_int

    if argv[:1] == ["teacher"]:
        serve_teacher(argv[1:])
        return 0
    p = CliParser(prog="python scripts/chaos_run.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mbeir_root", default=None, help="default: a generated sample (scale 1) in the work dir")
    p.add_argument("--work_dir", default="/tmp/chaos_run")
    p.add_argument("--limit", type=positive_int, default=20, help="query lines per file (10 datasets)")
    p.add_argument("--kills", type=non_negative_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency_ms", type=float, default=200.0)
    p.add_argument("--max_in_flight", type=positive_int, default=4)
    p.add_argument("--flush_interval_s", type=float, default=0.5)
    p.add_argument("--max_delay_s", type=float, default=2.0, help="kill at most this long after the first segment")
    p.add_argument("--slack_s", type=float, default=1.0, help="added to the flush interval for the bound")
    p.add_argument("--partition_queries", type=non_negative_int, default=60,
                   help="the pipeline's local partitions (200 queries: 4 partitions, so kills land in several)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    root = a.mbeir_root
    if root is not None and not os.path.isdir(root):
        from common.errors import ConfigError

        raise ConfigError(f"--mbeir_root {root} is not a folder: give an M-BEIR root, or leave it out for the sample")
    if root is None:
        from pipeline.sample import generate

        root = os.path.join(a.work_dir + "-sample")
        if not os.path.exists(os.path.join(root, "query")):
            generate(root, seed=0, scale=1)
    report = chaos(root, a.work_dir, a.limit, a.kills, a.seed, a.latency_ms, a.max_in_flight, a.flush_interval_s,
                   a.max_delay_s, a.slack_s, extra=["--partition_queries", str(a.partition_queries)])
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    print("PASS" if not report["problems"] else "FAIL")
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
