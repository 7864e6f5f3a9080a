"""Server fixtures: a checkpoint of the planned tiny model (mixed routes: tests/trainer/inference/test_engine.py),
servers on 127.0.0.1:0 run by a thread of this process, and a way to hold the scheduler still; the command-line
server (`python -m trainer.serve`, the model in a child process of its own) for the tests of the shipped form."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from tests.trainer.inference.test_engine import MAX_NEW, planned_model
from trainer.serving.app import ServeConfig, bind, build_app, serve
from trainer.serving.protocol import Limits
from trainer.serving.queue import Scheduler

MODEL = "trace-test"
API_KEY = "test-key-not-a-secret"


@pytest.fixture(scope="session")
def planned_checkpoint(tiny_base, tmp_path_factory):
    emb = planned_model(tiny_base)
    config = emb.base.config
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # the planned head is its own
    folder = tmp_path_factory.mktemp("serving") / "ckpt"
    emb.save(folder)
    return folder


@pytest.fixture(scope="session")
def reference(planned_checkpoint):
    from trainer import TraceEmbedder

    return TraceEmbedder.from_pretrained(str(planned_checkpoint), device="cpu")


class ThreadServer:
    """The server (its own model copy, scheduler thread and event loop thread) on a free loopback port."""

    def __init__(self, checkpoint, limits: Limits | None = None, api_key: str | None = None, max_queue: int = 256,
                 batch_size: int = 4):
        from trainer import TraceEmbedder

        embedder = TraceEmbedder.from_pretrained(str(checkpoint), device="cpu")
        self.scheduler = Scheduler(embedder, batch_size, MAX_NEW, max_queue).start()
        self.queue = self.scheduler.queue
        app = build_app(self.scheduler, ServeConfig(MODEL, limits or Limits(), api_key))
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, daemon=True,
                                       args=(serve(app, sock, on_ready=lambda url: ready.set(), stop=self.stop),))
        self.thread.start()
        assert ready.wait(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)

    @contextmanager
    def held(self):
        """The scheduler stops before its next prefill until the block ends; yields an Event set once it waits
        there (it has taken a chunk)."""
        engine = self.scheduler.engine
        admit, gate, waiting = engine._admit, threading.Event(), threading.Event()

        def held_admit(jobs, feed):
            waiting.set()
            gate.wait()
            return admit(jobs, feed)

        engine._admit = held_admit
        try:
            yield waiting
        finally:
            engine._admit = admit
            gate.set()

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        """The queue's snapshot once predicate(snapshot) holds (fails after timeout)."""
        deadline = time.monotonic() + timeout
        while not predicate(snap := self.queue.snapshot()):
            assert time.monotonic() < deadline, snap
            time.sleep(0.01)
        return snap


@pytest.fixture(scope="module")
def server(planned_checkpoint):
    s = ThreadServer(planned_checkpoint)
    yield s
    s.close()


@pytest.fixture(scope="module")
def strict_server(planned_checkpoint):
    """Small limits, a small queue and an API key."""
    limits = Limits(max_inputs=8, max_request_bytes=256 * 1024, max_image_bytes=64 * 1024,
                    max_image_pixels=1000 * 1000, max_text_chars=500)
    s = ThreadServer(planned_checkpoint, limits, api_key=API_KEY, max_queue=8)
    yield s
    s.close()


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class CliServer:
    """`python -m trainer.serve --checkpoint C --port 0 --model_name MODEL *flags` with OMP_NUM_THREADS=1; its
    stderr goes to `log` (read it with .stderr())."""

    def __init__(self, checkpoint, log: Path, *flags: str, env: dict | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), **(env or {})}
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainer.serve", "--checkpoint", str(checkpoint),
                                          "--port", "0", "--model_name", MODEL, *flags],
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.line = self.proc.stdout.readline()
        found = re.search(r" on (http://\S+) ", self.line)
        if not found:
            self.close()
            raise AssertionError(f"the server did not start: {self.line}{self.stderr()}")
        self.url = found.group(1)

    def stderr(self) -> str:
        return self.log.read_text()

    @property
    def model_pid(self) -> int:
        """The pid of the model process: the server's child that multiprocessing spawned (not its resource
        tracker)."""
        pids = [int(p) for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
                for p in (task / "children").read_text().split()]
        found = [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(found) == 1, pids
        return found[0]

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=30) as res:
                return res.status, json.load(res)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        """/health's body once predicate(body) holds (fails after timeout)."""
        deadline = time.monotonic() + timeout
        while not predicate(body := self.health()[1]):
            assert time.monotonic() < deadline, body
            time.sleep(0.01)
        return body

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@contextmanager
def stopped(pid: int):
    """The process `pid` is stopped (SIGSTOP) inside the block: what is sent to it waits in its pipe."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whatever reaps it here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
