"""The model's process: `run` is the target of a multiprocessing *spawn* child that loads the embedder and runs the
Scheduler's loop (queue.py) over the parent's requests, which arrive on one one-way pipe while answers leave on
another (the parent's side: remote.py). The HTTP front (JSON, image decoding, responses) and the model then hold
a GIL each.

    parent -> child   (SUBMIT, key, inputs, mode, want_text) | (CANCEL, key) | (CLOSE,)
    child -> parent   (READY, (dim, the queue's snapshot())) once loaded, or (FAILED, message) and the child
                      exits; then (ANSWERS, [(key, [Result, ...] | error_data(ApiError))], the queue's snapshot())

One thread does it all: the loop reads what the pipe holds each time it asks the queue for work (PipeQueue.take:
at every prefill chunk and decode step; blocking only when it has nothing to do) and sends the answers of each
step. A reader thread would fight the model's thread for the GIL at every message (measured: ~0.2 ms CPU a
request, most of it in the GIL hand-over, against 7 us of its own work). The pipe's capacity (remote.PIPE_BYTES)
holds what arrives during one step; a burst larger than that waits in the parent's send.

The child ignores SIGINT and SIGTERM (the parent drains, then sends CLOSE: the loop answers what it holds and
the child exits 0) and exits at once when its pipe from the parent reaches EOF (the parent is gone), so it never
outlives the server by more than the step in progress.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

from common.errors import ConfigError
from trainer.inference.engine import Job
from trainer.serving.protocol import ApiError
from trainer.serving.queue import MAX_WAIT, Answers, QueueClosed, QueueFull, RequestQueue, Scheduler, Ticket

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
    max_wait: float = MAX_WAIT  # seconds (--max_batch_wait_ms)


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


class PipeQueue(RequestQueue):
    """The RequestQueue of the model process: fed by the parent's messages, read at each take on the loop's own
    thread, and answered on the pipe back (one message for every request a step finished)."""

    def __init__(self, inbox: Connection, outbox: Connection, batch_size: int, max_queue: int, tokenizer,
                 max_wait: float):
        super().__init__(batch_size, max_queue, tokenizer, max_wait, answer=self._answer)
        self.inbox, self.outbox = inbox, outbox
        self.keyed: dict[int, Ticket] = {}  # submitted, not yet answered, by the parent's key: what CANCEL names

    def take(self, in_decode: int, steps: int) -> list[Job] | None:
        """Read what the parent sent (waiting for it only when there is nothing else to do), then take."""
        self._read(wait=False)
        while not self._pending and not in_decode and not self.closed:
            self._read(wait=True)
        return super().take(in_decode, steps)

    def send(self, message: tuple) -> None:
        try:
            self.outbox.send(message)
        except OSError:  # the parent is gone: the next read sees EOF and ends the process
            pass

    def _read(self, wait: bool) -> None:
        try:
            if wait or self.inbox.poll():
                self._handle(self.inbox.recv())
                while self.inbox.poll():
                    self._handle(self.inbox.recv())
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone (killed): no one is left to answer; do not outlive it

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == SUBMIT:
            _, key, inputs, mode, want_text = message
            ticket = Ticket(inputs, mode, want_text, key=key)
            self.keyed[key] = ticket
            try:
                self.submit(ticket)
            except (QueueFull, QueueClosed):  # the parent's own bound comes first: not seen in practice
                self._answer([(ticket, ApiError(503, "the model process refused the request; retry"))])
        elif kind == CANCEL:
            ticket = self.keyed.pop(message[1], None)
            if ticket is not None:
                self.cancel(ticket)
        elif kind == CLOSE:
            self.close()

    def _answer(self, answers: Answers) -> None:
        data = []
        for ticket, outcome in answers:
            self.keyed.pop(ticket.key, None)
            data.append((ticket.key, error_data(outcome) if isinstance(outcome, Exception) else outcome))
        self.send((ANSWERS, data, self.snapshot()))


def run(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    """The child's main: load, READY, then run the scheduler's loop on this thread until CLOSE (answer what is
    held, exit 0) or EOF (the parent is gone: exit at once)."""
    _prepare_process()
    try:
        embedder = load(spec.checkpoint, spec.device, spec.threads)
    except Exception as err:  # whatever stops the load is the parent's one-line error
        message = str(err) if isinstance(err, ConfigError) else \
            f"--checkpoint {spec.checkpoint}: cannot be loaded ({type(err).__name__}: {err})"
        try:
            outbox.send((FAILED, message))
        except OSError:  # the parent is gone already
            pass
        return
    queue = PipeQueue(inbox, outbox, spec.batch_size, spec.max_queue, embedder.processor.tokenizer, spec.max_wait)
    scheduler = Scheduler(embedder, spec.batch_size, spec.max_new_tokens, spec.max_queue, queue=queue)
    queue.send((READY, (embedder.base.config.text_config.hidden_size, queue.snapshot())))
    scheduler.run()


def _prepare_process() -> None:
    """Settings of the model process, before anything is loaded:
    - the tokenizer works on the loop's thread (TOKENIZERS_PARALLELISM=false unless set): its thread pool made the
      loop wait, asleep, for pool threads that the HTTP front and the clients kept off the other cores (bypass96 at
      64 clients on 2 cores: 260 -> 315 queries/s);
    - tqdm (the loading bar) takes a thread lock: its default multiprocessing lock is a semaphore that the resource
      tracker reports as leaked, on the server's stderr, when this process is killed."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent drains, then sends CLOSE
        signal.signal(sig, signal.SIG_IGN)
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
