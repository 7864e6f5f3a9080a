"""Server fixtures: a checkpoint of the planned tiny model (mixed routes: tests/trainer/inference/test_engine.py),
servers on 127.0.0.1:0 run by a thread of this process, and a way to hold the scheduler still."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from contextlib import contextmanager

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
