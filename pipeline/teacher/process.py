"""The teacher client in a process of its own, so a local run's calls use a second core.

A TeacherClient shares its process with the graph: its event loop thread and the thread that runs Beam's
bundles take turns on one interpreter lock, so on a busy graph thread the loop cannot keep its requests in
flight, and the calls (JSON, HTTP, image bytes into data URLs) use the same core as the graph. ProcessClient
is a protocol.Teacher as TeacherClient is (submit, flush, close, closed) and runs the real client,
the image encoding and the journal writer in a child process (`python -m pipeline.teacher.process`, so it
imports only the client, not Beam). Requests go to it as they are (deferred image references, a few KB) and
TeacherResults come back in batches over a pipe.

Lifetime: the child ends with the client's close(); if the pipeline process dies first (a crash, SIGKILL),
the child sees its pipe close, makes the answers it already has durable in the journal and exits at once, as
the in-process client would have died with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from common.redact import redact
from pipeline.teacher.client import TeacherClient
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.outputs import TeacherResult
from pipeline.teacher.prompting import ImageLoader, TeacherRequest
from pipeline.teacher.protocol import encode_images

log = logging.getLogger(__name__)
SUBMIT, FLUSH, CLOSE, READY = "submit", "flush", "close", "ready"
CHILD_GONE = "the teacher process exited before answering (see its error above in the log)"


class ProcessClient:
    """Thread-safe front of a TeacherClient in a child process. submit() returns a concurrent.futures.Future
    that always resolves to a TeacherResult (a failed one if the child dies)."""

    def __init__(self, config: TeacherConfig):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "pipeline.teacher.process"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env)
        self._send_conn = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._recv_conn = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._lock = threading.Lock()  # guards _waiting and _closed
        self._waiting: dict[int, tuple[concurrent.futures.Future, TeacherRequest | None]] = {}
        self._ids = itertools.count()
        self._closed = False
        # Messages go out on a thread of their own, in batches: a caller never waits for a full pipe (the graph
        # thread goes on with the rules while the child catches up) and the child reads many per wake-up.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send, name="teacher-process-sender", daemon=True)
        self._sender.start()
        self._reader = threading.Thread(target=self._read, name="teacher-process-reader", daemon=True)
        self._reader.start()
        level = logging.getLogger("pipeline").getEffectiveLevel()
        problem = self._ask(READY, (config, level)).result()
        if problem:
            self.close()
            raise RuntimeError(f"the teacher process could not start its client: {problem}")

    def _ask(self, op: str, payload: Any = None, request: TeacherRequest | None = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        rid = next(self._ids)
        with self._lock:
            self._waiting[rid] = (future, request)
        self._outbox.put((op, rid, payload))
        return future

    def _send(self) -> None:
        """Sender thread: everything queued so far as one message, until the CLOSE message is sent."""
        while True:
            batch = [self._outbox.get()]
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send_conn.send(batch)
            except OSError:  # the child is gone; the reader fails everything that waits
                return
            except Exception:  # noqa: BLE001 - one message that cannot be pickled: send the rest one by one
                for message in batch:
                    try:
                        self._send_conn.send([message])
                    except OSError:
                        return
                    except Exception as e:  # noqa: BLE001 - it fails its caller alone
                        log.exception("could not send a message to the teacher process")
                        self._fail([message[1]], redact(f"{type(e).__name__}: {e}")[:500])
            if any(op == CLOSE for op, _, _ in batch):
                return

    def _fail(self, rids: list[int], detail: str) -> None:
        with self._lock:
            failed = [self._waiting.pop(rid) for rid in rids if rid in self._waiting]
        for future, request in failed:
            future.set_result(None if request is None else TeacherResult(
                key=request.key, ok=False, error="internal", detail=detail, model=request.model,
                kind=request.kind))

    def submit(self, request: TeacherRequest, image_loader: ImageLoader | None = None) -> concurrent.futures.Future:
        """Ask for one request; `image_loader` encodes its deferred images in the child, just before the call."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ProcessClient is closed")
        return self._ask(SUBMIT, (request, image_loader), request)

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Make every answer received so far durable in the journal now."""
        if not self._closed:
            self._ask(FLUSH).result()

    def close(self) -> None:
        """Wait for every submitted request, then close the child's client (journal flushed) and the child."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = [f for f, request in self._waiting.values() if request is not None]
        concurrent.futures.wait(pending)
        self._ask(CLOSE).result()
        self._sender.join()
        self._send_conn.close()
        self._reap()
        self._reader.join()

    def _reap(self, timeout_s: float = 60.0) -> None:
        """Wait for the child to exit (killed after `timeout_s`) and log the CPU it used."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self._proc.pid, os.WNOHANG)
            if pid:
                self._proc.returncode = os.waitstatus_to_exitcode(status)
                # (not its ru_maxrss: that counts the parent's pages shared at the fork before the exec)
                log.info("teacher process: %.1f s CPU", usage.ru_utime + usage.ru_stime)
                return
            if time.monotonic() > deadline:
                self._proc.kill()
                deadline = float("inf")
            time.sleep(0.02)

    def _read(self) -> None:
        try:
            while True:
                for rid, value in self._recv_conn.recv():
                    with self._lock:
                        future, _ = self._waiting.pop(rid)
                    future.set_result(value)
        except (EOFError, OSError):
            pass
        with self._lock:
            self._closed = True
            rids = list(self._waiting)
        self._fail(rids, CHILD_GONE)
        self._recv_conn.close()


class _Server:
    """Child: every message is handled on the client's loop thread, so one thread reads the pipe, encodes the
    images, makes the calls and sends the results (no interpreter-lock hand-offs per request)."""

    def __init__(self, client: TeacherClient, recv: Connection, send: Connection):
        self.client, self.recv, self.send = client, recv, send
        self.outbox: list[tuple[int, Any]] = []
        self.close_id: int | None = None
        self.closing = threading.Event()
        # Images are encoded only once a call slot is free: queued requests stay a few KB each.
        self.slots = asyncio.Semaphore(client.config.max_in_flight)

    def on_readable(self) -> None:
        try:
            while self.recv.poll():
                for message in self.recv.recv():
                    self._handle(*message)
        except (EOFError, OSError):  # the pipeline process is gone: keep what was answered, stop now
            self.client.flush()
            os._exit(0)

    def _handle(self, op: str, rid: int, payload: Any) -> None:
        if op == SUBMIT:
            task = self.client.loop.create_task(self._answer(*payload))
            task.add_done_callback(lambda t, rid=rid: self._reply(rid, t.result()))
        elif op == FLUSH:
            self.client.flush()
            self._reply(rid, None)
        elif op == CLOSE:
            self.client.loop.remove_reader(self.recv.fileno())
            self.close_id = rid
            self.closing.set()

    async def _answer(self, request: TeacherRequest, loader) -> TeacherResult:
        async with self.slots:
            sent = encode_images(request, loader) if loader is not None else request
            if isinstance(sent, TeacherResult):
                return sent
            return await self.client.answer(sent)

    def _reply(self, rid: int, value: Any) -> None:
        self.outbox.append((rid, value))
        if len(self.outbox) == 1:  # one message for everything that is ready in this turn of the loop
            self.client.loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        batch, self.outbox = self.outbox, []
        self.send.send(batch)


def serve(recv: Connection, send: Connection) -> None:
    """Child: start the client the first message configures, answer on its loop until the parent closes it
    (or goes away)."""
    try:
        [(op, rid, (config, level))] = recv.recv()
    except (EOFError, OSError):
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        client = TeacherClient(config)
    except Exception as e:  # noqa: BLE001 - any set-up error goes back to the parent as text
        send.send([(rid, redact(f"{type(e).__name__}: {e}"))])
        return
    server = _Server(client, recv, send)
    client.loop.call_soon_threadsafe(client.loop.add_reader, recv.fileno(), server.on_readable)
    send.send([(rid, "")])  # before any result: the parent submits only after this answer
    server.closing.wait()
    client.close()
    send.send([(server.close_id, None)])


def main() -> None:
    recv = Connection(os.dup(sys.stdin.fileno()), writable=False)
    send = Connection(os.dup(sys.stdout.fileno()), readable=False)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the pipe
    serve(recv, send)


if __name__ == "__main__":
    main()
