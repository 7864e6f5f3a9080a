"""The model's process: `run` is the target of a multiprocessing *spawn* child that loads the embedder, starts the
Scheduler (queue.py) and serves the parent's requests over two one-way pipes (the parent's side: remote.py).
The HTTP front (JSON, image decoding, responses) and the model then hold a GIL each.

    parent -> child   (SUBMIT, key, inputs, mode, want_text) | (CANCEL, key) | (CLOSE,)
    child -> parent   (READY, (dim, the queue's snapshot())) once loaded, or (FAILED, message) and the child exits;
                      then (ANSWERS, [(key, [Result, ...] | error_data(ApiError))], the queue's snapshot())

The scheduler's thread sends answers itself (no extra thread); the main thread reads the parent's messages. The
child ignores SIGINT and SIGTERM (the parent drains, then sends CLOSE) and exits when its pipe from the parent
reaches EOF (the parent is gone), so it never outlives the server.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

from common.errors import ConfigError
from trainer.serving.protocol import ApiError
from trainer.serving.queue import Answers, QueueClosed, QueueFull, Scheduler, Ticket

SUBMIT, CANCEL, CLOSE = "submit", "cancel", "close"
READY, FAILED, ANSWERS = "ready", "failed", "answers"


@dataclass(frozen=True)
class WorkerSpec:
    """What the child needs to load the model and build its scheduler (the serve command's flags)."""

    checkpoint: str
    device: str | None = None
    threads: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 128
    max_queue: int = 1024
    max_wait: float = 0.05  # seconds (--max_batch_wait_ms)


def load(checkpoint: str, device: str | None = None, threads: int | None = None):
    """The embedder of `checkpoint` (a folder or Hub id); ConfigError naming --checkpoint when it cannot be."""
    import torch

    from trainer import TraceEmbedder

    if threads:
        torch.set_num_threads(threads)
    try:
        return TraceEmbedder.from_pretrained(checkpoint, device=device)
    except ConfigError:  # already names --checkpoint
        raise
    except ValueError as err:
        raise ConfigError(f"--checkpoint {checkpoint}: {err}") from None


def error_data(error: Exception) -> tuple:
    """An answer's error as plain data (ApiError's custom __init__ does not survive pickling)."""
    if isinstance(error, ApiError):
        return (error.status, error.message, error.param, error.code)
    return (500, f"the model failed ({type(error).__name__}); retry", None, None)


def error_from(data: tuple) -> ApiError:
    status, message, param, code = data
    return ApiError(status, message, param, code)


class Outbox:
    """The child's only way to the parent: answers from the scheduler's thread (the queue's `answer` callable),
    and the rare answer from the reader thread, one message at a time."""

    def __init__(self, conn: Connection):
        self.conn, self.lock = conn, threading.Lock()
        self.tickets: dict[int, Ticket] = {}  # submitted, not yet answered, by key: what CANCEL names
        self.scheduler: Scheduler | None = None

    def send(self, message: tuple) -> None:
        with self.lock:
            try:
                self.conn.send(message)
            except OSError:  # the parent is gone: the reader sees EOF and ends the process
                pass

    def answer(self, answers: Answers) -> None:
        data = []
        for ticket, outcome in answers:
            self.tickets.pop(ticket.key, None)
            data.append((ticket.key, error_data(outcome) if isinstance(outcome, Exception) else outcome))
        snapshot = self.scheduler.queue.snapshot() if self.scheduler else {}
        self.send((ANSWERS, data, snapshot))


def run(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    """The child's main: load, start the scheduler, READY, then serve the parent's messages until CLOSE (answer
    what is held, exit 0) or EOF (the parent is gone: exit at once)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _thread_lock_for_progress_bars()
    out = Outbox(outbox)
    try:
        embedder = load(spec.checkpoint, spec.device, spec.threads)
    except Exception as err:  # whatever stops the load is the parent's one-line error
        message = str(err) if isinstance(err, ConfigError) else \
            f"--checkpoint {spec.checkpoint}: cannot be loaded ({type(err).__name__}: {err})"
        out.send((FAILED, message))
        return
    out.scheduler = Scheduler(embedder, spec.batch_size, spec.max_new_tokens, spec.max_queue, spec.max_wait,
                              answer=out.answer).start()
    out.send((READY, (embedder.base.config.text_config.hidden_size, out.scheduler.queue.snapshot())))
    _serve(inbox, out, out.scheduler)


def _thread_lock_for_progress_bars() -> None:
    """tqdm (the loading bar) would otherwise create a multiprocessing lock, a semaphore that the resource
    tracker reports as leaked on the server's stderr when this process is killed."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _serve(inbox: Connection, out: Outbox, scheduler: Scheduler) -> None:
    queue = scheduler.queue
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone (killed): no one is left to answer; do not outlive it
        kind = message[0]
        if kind == SUBMIT:
            _, key, inputs, mode, want_text = message
            ticket = Ticket(inputs, mode, want_text, key=key)
            out.tickets[key] = ticket
            try:
                queue.submit(ticket)
            except (QueueFull, QueueClosed):  # the parent's own bound comes first: not seen in practice
                out.answer([(ticket, ApiError(503, "the model process refused the request; retry"))])
        elif kind == CANCEL:
            ticket = out.tickets.pop(message[1], None)
            if ticket is not None:
                queue.cancel(ticket)
        elif kind == CLOSE:
            scheduler.stop()
            return
