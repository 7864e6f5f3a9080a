"""Serve a TRACE checkpoint as an OpenAI-compatible embeddings endpoint.

    python -m trainer.serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--api_key_env TRACE_API_KEY]

CKPT is a checkpoint folder or a Hub model id, as TraceEmbedder.from_pretrained takes. The server prints one
line `serving NAME on URL` when it listens; SIGTERM answers what is in flight, then exits 0. The model runs in a
process of its own (remote.py, worker.py); if that process dies, the requests it held get 500 and the server
exits 1 with one line saying so (a supervisor restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from common.cli import CliParser, int_at_least, non_negative_int, positive_int, run_cli
from common.errors import ConfigError
from trainer.serving.protocol import Limits

if TYPE_CHECKING:
    import socket

    from aiohttp import web

    from trainer.serving.remote import ModelProcess

PROG = "python -m trainer.serve"


def parser() -> CliParser:
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub model id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="0: any free port")
    p.add_argument("--model_name", default=None, help="the `model` clients send (default: --checkpoint)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is one)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="rows per prefill chunk and decode batch")
    p.add_argument("--max_new_tokens", type=non_negative_int, default=128)
    p.add_argument("--max_queue", type=positive_int, default=1024,
                   help="inputs accepted and not yet answered; past it a request gets 429 (also bounds the KV held)")
    p.add_argument("--max_batch_wait_ms", type=non_negative_int, default=50,  # queue.MAX_WAIT (that module imports torch)
                   help="while the decoder has a full batch waiting, how long inputs may wait for a full prefill chunk "
                        "(default 50: fuller chunks, throughput on reasoning-heavy loads; 0: prefilled at the next "
                        "step, a lone easy query first even when the server is overloaded)")
    for f in fields(Limits):
        p.add_argument(f"--{f.name}", type=positive_int, default=f.default, help=f.metadata["help"])
    p.add_argument("--api_key_env", default=None,
                   help="name of the environment variable holding the API key clients must send as Bearer")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--shutdown_timeout", type=int_at_least(1), default=60,
                   help="seconds SIGTERM waits for requests in flight")
    return p


def check(a: argparse.Namespace) -> str | None:
    """The API key (None without --api_key_env); ConfigError for a flag this machine or the others rule out."""
    if a.port > 65535:
        raise ConfigError(f"--port {a.port} is not a port: give 0..65535")
    if a.max_inputs > a.max_queue:
        raise ConfigError(f"--max_inputs {a.max_inputs} is over --max_queue {a.max_queue}: no request that "
                          "large could ever be queued; lower --max_inputs or raise --max_queue")
    if a.device:
        from trainer.benchmark.evaluate import check_device

        check_device(a.device)
    if a.api_key_env is None:
        return None
    key = os.environ.get(a.api_key_env, "").strip()
    if not key:
        raise ConfigError(f"--api_key_env {a.api_key_env}: that environment variable is not set or empty; "
                          "export the key in it, or leave the flag out to serve without a key")
    return key


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    api_key = check(a)
    from trainer.serving.app import ServeConfig, bind, build_app
    from trainer.serving.remote import ModelProcess
    from trainer.serving.worker import WorkerSpec

    try:
        sock = bind(a.host, a.port)
    except OSError as err:
        raise ConfigError(f"--host {a.host} --port {a.port}: cannot listen there ({err.strerror or err}); "
                          "choose another port (0: any free one) or host") from None
    spec = WorkerSpec(a.checkpoint, a.device, a.threads, a.batch_size, a.max_new_tokens, a.max_queue,
                      a.max_batch_wait_ms / 1000)
    model = ModelProcess(spec).start()  # the model in a process of its own: ConfigError if it cannot load
    limits = Limits(**{f.name: getattr(a, f.name) for f in fields(Limits)})
    config = ServeConfig(a.model_name or a.checkpoint, limits, api_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(url: str) -> None:
        print(f"serving {config.model_name} on {url} (batch {a.batch_size}, max_queue {a.max_queue}"
              f"{', API key required' if api_key else ''})", flush=True)

    asyncio.run(_serve(model, build_app(model, config), sock, a.shutdown_timeout, ready))
    if model.queue.failure:
        print(f"{PROG}: error: {model.queue.failure}; the server stopped (restart it)", file=sys.stderr, flush=True)
        return 1
    print("stopped", flush=True)
    return 0


async def _serve(model: ModelProcess, app: web.Application, sock: socket.socket, shutdown_timeout: int,
                 ready: Callable[[str], None]) -> None:
    """serve() until SIGTERM/SIGINT, or until the model process exits unexpectedly."""
    from trainer.serving.app import serve

    stop, loop = asyncio.Event(), asyncio.get_running_loop()

    def stop_soon(reason: str) -> None:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop has ended already
            pass

    model.on_failure(stop_soon)
    await serve(app, sock, shutdown_timeout=shutdown_timeout, on_ready=ready, stop=stop)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
