"""The HTTP front's side of the model process (worker.py): `ModelProcess` has the interface app.py uses of the
in-thread Scheduler (`.queue` with submit/cancel/waiting/max_queue/snapshot, `.start()`, `.stop(timeout)`), with
the model in a spawned child so that request parsing, image decoding and response building never wait for the
model's GIL.

The front owns the --max_queue decision (its `waiting`: inputs sent and not yet answered or cancelled) and the
request counters; the child's queue statistics (prefill chunks, cancelled inputs, in_queue ...) arrive with each
answer. A sender thread writes the requests to the child's pipe, in order, so the event loop never blocks on a
pipe the child empties only between steps (a request with large images is megabytes of pixels); a reader thread
resolves the tickets' futures, one wake-up of the event loop per message. If the child
exits unexpectedly, every waiting request gets a 500, new ones a 503, /health says so, and `on_failure`'s
callbacks run (the command line stops the server and exits 1).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import multiprocessing
import queue
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection

from common.errors import ConfigError
from trainer.serving import worker
from trainer.serving.protocol import ApiError
from trainer.serving.queue import QueueClosed, QueueFull, Ticket, resolve

log = logging.getLogger("trainer.serve")
# What may wait in a pipe: the model process reads between steps, so the sender thread waits only when a step's
# worth of requests is over this (Linux's default is 64 KiB; raised where the system allows).
PIPE_BYTES = 1 << 20


class RemoteQueue:
    """The queue as the event loop sees it; each request crosses to the model process as one message."""

    def __init__(self, max_queue: int, send: Callable[[tuple], None]):
        self.max_queue, self._send = max_queue, send
        self._lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}  # sent, not yet answered
        self._keys = itertools.count()
        self.waiting = 0
        self.closed = False
        self.failure: str | None = None  # why the model process is gone, once it is
        self.stats: Counter = Counter()
        self.remote: dict = {}  # the model process's last queue snapshot

    def submit(self, ticket: Ticket) -> None:
        """Send a request's inputs; QueueFull past max_queue waiting inputs, QueueClosed once draining or once
        the model process is gone (with the reason)."""
        n = len(ticket.jobs)
        with self._lock:
            if self.failure or self.closed:
                raise QueueClosed(self.failure or "")
            if self.waiting + n > self.max_queue:
                self.stats["rejected_requests"] += 1
                raise QueueFull
            ticket.key = next(self._keys)
            self._tickets[ticket.key] = ticket
            self.waiting += n
            self.stats["requests"] += 1
            self.stats["inputs"] += n
        self._send((worker.SUBMIT, ticket.key, [job.item for job in ticket.jobs], ticket.mode, ticket.want_text))

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: the request stops counting here, and its inputs leave the model's queue."""
        with self._lock:
            if self._tickets.pop(ticket.key, None) is None:
                return
            self.waiting -= len(ticket.jobs)
        self._send((worker.CANCEL, ticket.key))

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def snapshot(self) -> dict:
        with self._lock:
            own = {"waiting": self.waiting, "max_queue": self.max_queue, **self.stats}
            return {**self.remote, **own, **({"error": self.failure} if self.failure else {})}

    def answered(self, answers: list[tuple[int, object]], snapshot: dict) -> None:
        """The model process's answers (reader thread): results, or an error as worker.error_data."""
        done = []
        with self._lock:
            self.remote = snapshot
            for key, outcome in answers:
                ticket = self._tickets.pop(key, None)
                if ticket is not None:  # else cancelled meanwhile
                    self.waiting -= len(ticket.jobs)
                    done.append((ticket, worker.error_from(outcome) if isinstance(outcome, tuple) else outcome))
        resolve(done)

    def fail(self, reason: str) -> None:
        """The model process is gone: every waiting request fails with a 500 naming `reason`."""
        with self._lock:
            self.failure = reason
            tickets = list(self._tickets.values())
            self._tickets.clear()
            self.waiting = 0
        resolve([(t, ApiError(500, f"{reason}; the server is stopping, retry once it is back")) for t in tickets])


class ModelProcess:
    """The model, its Scheduler and its queue in a spawned child process; see the module docstring."""

    def __init__(self, spec: worker.WorkerSpec):
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent; CUDA-safe
        self._inbox_child, self._inbox = ctx.Pipe(duplex=False)  # parent -> child (child reads)
        self._outbox, self._outbox_child = ctx.Pipe(duplex=False)  # child -> parent (parent reads)
        for conn in (self._inbox, self._outbox):
            _widen(conn)
        self._process = ctx.Process(target=worker.run, args=(spec, self._inbox_child, self._outbox_child),
                                    name="trace-model", daemon=True)
        self._failure_lock = threading.Lock()
        self._outgoing: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._write, name="trace-model-sender", daemon=True)
        self._reader = threading.Thread(target=self._read, name="trace-model-reader", daemon=True)
        self._callbacks: list[Callable[[str], None]] = []
        self._stopping = False
        self.spec, self.dim = spec, 0
        self.queue = RemoteQueue(spec.max_queue, self._send)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> ModelProcess:
        """Spawn the child and wait until the model is loaded; ConfigError (naming --checkpoint) if it cannot
        be."""
        self._process.start()
        self._inbox_child.close()  # the child's ends live in the child only: EOF on either side means gone
        self._outbox_child.close()
        try:
            kind, detail = self._outbox.recv()
        except (EOFError, OSError):
            self._process.join()
            raise ConfigError(f"--checkpoint {self.spec.checkpoint}: the model process exited with code "
                              f"{self._process.exitcode} while loading it") from None
        if kind == worker.FAILED:
            self._process.join()
            raise ConfigError(detail)
        self.dim, self.queue.remote = detail
        self._sender.start()
        self._reader.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """No new requests; the child answers what it holds, then exits."""
        self.queue.close()
        self._stopping = True
        self._send((worker.CLOSE,))
        self._reader.join(timeout)
        self._process.join(5 if timeout is None else timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call callback(reason), from another thread, when the child exits unexpectedly (now, if it has)."""
        with self._failure_lock:
            reason = self.queue.failure
            if reason is None:
                self._callbacks.append(callback)
        if reason is not None:
            callback(reason)

    def _send(self, message: tuple) -> None:
        """Queue a message for the child (any thread, never blocks); the sender thread writes them in order."""
        self._outgoing.put(message)

    def _write(self) -> None:
        while True:
            message = self._outgoing.get()
            try:
                self._inbox.send(message)
            except OSError:  # the child is gone: the reader fails what it held
                return
            if message[0] == worker.CLOSE:
                return

    def _read(self) -> None:
        while True:
            try:
                kind, answers, snapshot = self._outbox.recv()
            except (EOFError, OSError):
                break
            if kind == worker.ANSWERS:
                self.queue.answered(answers, snapshot)
        self._process.join(10)
        code = self._process.exitcode
        if self._stopping and code == 0:
            return
        reason = f"the model process exited with code {code}"
        log.error("%s", reason)
        with self._failure_lock:
            self.queue.fail(reason)
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(reason)


def _widen(conn: Connection) -> None:
    """Raise a pipe's capacity to PIPE_BYTES where Linux allows it (F_SETPIPE_SZ); keep it otherwise."""
    try:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass
