"""The shipped server: `python -m trainer.serve` with the model in a process of its own (remote.py, worker.py).
Answers equal in-process encoding across the process boundary; the front's --max_queue bound; a disconnect's
cancel reaches the model process; the model process dying fails what it held and stops the server (exit 1); the
server dying takes the model process with it; a checkpoint that cannot load is one line, exit 2."""

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import openai
import pytest
import torch

from tests.trainer.inference.test_engine import MAX_NEW, _candidates, _queries
from tests.trainer.serving.conftest import MODEL, CliServer, running, stopped
from tests.trainer.serving.test_server import _assert_same, _doc, _item, _post, _vectors
from trainer.modeling.interface import QueryInput
from trainer.serving.cli import PROG
from trainer.serving.protocol import ApiError
from trainer.serving.queue import QueueClosed, QueueFull, Ticket
from trainer.serving.remote import RemoteQueue
from trainer.serving.worker import ANSWERS, CANCEL, CLOSE, SUBMIT, PipeQueue

QUERY = {"text": "Make the square blue.", "dataset": "cirr", "task_id": 7}


@pytest.fixture(scope="module")
def cli_server(planned_checkpoint, tmp_path_factory):
    s = CliServer(planned_checkpoint, tmp_path_factory.mktemp("remote") / "stderr.log", "--batch_size", "4",
                  "--max_new_tokens", str(MAX_NEW), "--max_queue", "16", "--max_inputs", "16")
    yield s
    s.close()
    assert s.proc.returncode == 0, s.stderr()


def test_the_model_process_queue_reads_its_pipe_at_each_take():
    """Without a model: what the parent sent is read when the loop asks for work, in order (a cancel that follows
    its submit drops it before any prefill), and a step's answers leave as one message with the queue's counters."""
    ctx = multiprocessing.get_context("spawn")
    inbox, to_child = ctx.Pipe(duplex=False)
    from_child, outbox = ctx.Pipe(duplex=False)
    queue = PipeQueue(inbox, outbox, batch_size=2, max_queue=8, tokenizer=None, max_wait=0)
    query = QueryInput("q", None, "mscoco", 0)
    to_child.send((SUBMIT, 7, [query] * 3, "adaptive", False))
    to_child.send((SUBMIT, 8, [query], "direct", False))
    to_child.send((CANCEL, 8))
    first = queue.take(0, 0)
    assert [job.ref for job in first] == [(queue.keyed[7], 0), (queue.keyed[7], 1)]
    queue.finish(first, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert not from_child.poll()  # request 7 is not done yet
    rest = queue.take(0, 1)
    queue.finish(rest, torch.tensor([[3.0, 4.0]]))
    kind, answers, snapshot = from_child.recv()
    assert kind == ANSWERS and [key for key, _ in answers] == [7]
    assert np.allclose([r.embedding for r in answers[0][1]], [[1, 0], [0, 1], [0.6, 0.8]])
    assert (snapshot["cancelled_inputs"], snapshot["waiting"], snapshot["prefilled_inputs"]) == (1, 0, 3)
    to_child.send((SUBMIT, 9, [query], "adaptive", False))
    [job] = queue.take(0, 2)
    queue.fail(job, ValueError("broken image"))
    assert from_child.recv()[1] == [(9, (400, "input[0] could not be encoded: broken image", "input[0]", None))]
    to_child.send((CLOSE,))
    assert queue.take(0, 3) is None


def test_the_fronts_queue_bounds_sends_and_rebuilds_answers():
    """Without a child: --max_queue counts inputs sent and not answered or cancelled; a cancel is sent on; an
    error crosses as plain data and is an ApiError again; once the model process is gone, waiting requests get
    500 and new ones are refused with the reason, which /health's snapshot carries."""
    sent = []
    queue, loop = RemoteQueue(max_queue=3, send=sent.append), asyncio.new_event_loop()
    query = QueryInput("q", None, "mscoco", 0)
    first, second = Ticket([query] * 2, "always", True, loop), Ticket([query], "direct", False, loop)
    queue.submit(first)
    queue.submit(second)
    with pytest.raises(QueueFull):
        queue.submit(Ticket([query], "adaptive", False, loop))
    assert sent == [(SUBMIT, first.key, [query] * 2, "always", True), (SUBMIT, second.key, [query], "direct", False)]
    queue.cancel(first)
    assert sent[-1] == (CANCEL, first.key) and queue.waiting == 1
    queue.answered([(first.key, []), (second.key, (400, "bad", "input[0]", "code"))], {"prefill_chunks": 5})
    with pytest.raises(ApiError) as err:
        loop.run_until_complete(second.future)
    assert (err.value.status, err.value.param, err.value.code) == (400, "input[0]", "code")
    assert not first.future.done() and queue.waiting == 0  # the cancelled request is not answered
    third = Ticket([query], "adaptive", False, loop)
    queue.submit(third)
    queue.fail("the model process exited with code -9")
    with pytest.raises(ApiError) as err:
        loop.run_until_complete(third.future)
    assert err.value.status == 500 and "exited with code -9" in err.value.message
    with pytest.raises(QueueClosed, match="exited with code -9"):
        queue.submit(Ticket([query], "adaptive", False, loop))
    snapshot = queue.snapshot()
    assert snapshot["error"] == "the model process exited with code -9" and snapshot["prefill_chunks"] == 5
    assert (snapshot["requests"], snapshot["rejected_requests"], snapshot["waiting"]) == (3, 1, 0)
    loop.close()


def _client(server, cls=openai.OpenAI):
    return cls(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_concurrent_requests_equal_in_process(cli_server, reference):
    """Requests of every mode, with images and documents, in flight together: each answer equals encoding that
    request alone in-process (embeddings, reasoning texts)."""
    qs, modes = _queries(), ("adaptive", "always", "direct")
    requests = [(modes[i % 3], [qs[i]]) for i in range(len(qs))] + [("adaptive", qs[3:6])]
    client = _client(cli_server, openai.AsyncOpenAI)

    async def send(mode, items):
        return await client.embeddings.create(model=MODEL, input=[_item(q) for q in items],
                                              extra_body={"mode": mode, "return_reasoning": True})

    async def run_all():
        docs = client.embeddings.create(model=MODEL, input=[_doc(c) for c in _candidates()],
                                        extra_body={"input_type": "document"})
        return await asyncio.gather(*(send(m, items) for m, items in requests), docs)

    answers = asyncio.run(run_all())
    for (mode, items), res in zip(requests, answers, strict=False):
        ref = reference.encode_queries(items, mode=mode, max_new_tokens=MAX_NEW, batch_size=1)
        _assert_same(_vectors(res.data), ref.embeddings)
        assert [d.reasoning for d in res.data] == ref.texts
    _assert_same(_vectors(answers[-1].data), reference.encode_candidates(_candidates()))
    status, health = cli_server.health()
    assert status == 200 and health["waiting"] == 0 and health["requests"] >= len(requests) + 1
    assert health["prefilled_inputs"] >= len(qs) + 3  # the model process's own counters reach /health


def _raw_request(server, body: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return conn


def test_max_queue_is_the_fronts_and_a_disconnect_cancels_in_the_model_process(cli_server):
    """While the model process is stopped (SIGSTOP) a request of 16 inputs fills --max_queue: the next request
    gets 429 at once. Its client then goes away: the front stops counting it, and the model process, once
    running again, drops its inputs (its counters, which /health shows, count them as cancelled)."""
    body = json.dumps({"model": MODEL, "input": [QUERY] * 16, "mode": "always"}).encode()
    before = cli_server.health()[1].get("cancelled_inputs", 0)
    with stopped(cli_server.model_pid):
        conn = _raw_request(cli_server, body)
        cli_server.wait_for(lambda h: h["waiting"] == 16)
        res = _post(cli_server, {"model": MODEL, "input": [QUERY]}, key=None)
        assert res.status_code == 429 and res.headers["Retry-After"] == "1"
        conn.close()
        cli_server.wait_for(lambda h: h["waiting"] == 0)
    assert len(_client(cli_server).embeddings.create(model=MODEL, input=[QUERY]).data) == 1
    assert cli_server.health()[1]["cancelled_inputs"] > before  # sent with that answer: the cancel came first


def test_requests_larger_than_the_pipe_never_block_the_front(cli_server):
    """While the model process is stopped (SIGSTOP) it reads nothing; requests whose decoded images are several
    times the pipe's capacity still leave the event loop free: /health answers at once, and once the model
    process runs again every request is answered."""
    import base64
    import io

    from PIL import Image

    from trainer.serving.remote import PIPE_BYTES

    buf = io.BytesIO()
    Image.new("RGB", (1500, 1000), (200, 30, 30)).save(buf, format="PNG")  # 4.5 MB of pixels, a few KB of PNG
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert 1500 * 1000 * 3 > 2 * PIPE_BYTES
    body = json.dumps({"model": MODEL, "input": [{"text": "a red card", "image": image}], "mode": "direct",
                       "dataset": "cirr", "task_id": 7}).encode()
    with stopped(cli_server.model_pid):
        conns = [_raw_request(cli_server, body) for _ in range(3)]
        cli_server.wait_for(lambda h: h["waiting"] == 3, timeout=20)
        t = time.monotonic()
        assert cli_server.health()[0] == 200
        assert time.monotonic() - t < 5
    for conn in conns:
        conn.settimeout(60)
        assert conn.recv(64).startswith(b"HTTP/1.1 200")
        conn.close()
    cli_server.wait_for(lambda h: h["waiting"] == 0)


def test_a_model_process_that_dies_fails_its_requests_and_stops_the_server(planned_checkpoint, tmp_path):
    server = CliServer(planned_checkpoint, tmp_path / "stderr.log")
    try:
        answer = {}

        def send():
            try:
                _client(server).embeddings.create(model=MODEL, input=[QUERY] * 4)
            except openai.APIStatusError as err:
                answer["error"] = err

        sender = threading.Thread(target=send)
        with stopped(pid := server.model_pid):
            sender.start()
            server.wait_for(lambda h: h["waiting"] == 4)
            os.kill(pid, signal.SIGKILL)
        sender.join(60)
        error = answer["error"]
        assert error.status_code == 500 and "the model process exited with code -9" in error.message
        assert server.proc.wait(60) == 1
        last = server.stderr().strip().splitlines()[-1]
        assert last.startswith(f"{PROG}: error: the model process exited with code -9"), server.stderr()
    finally:
        server.close()


def test_a_killed_server_leaves_no_model_process(planned_checkpoint, tmp_path):
    server = CliServer(planned_checkpoint, tmp_path / "stderr.log")
    pid = server.model_pid
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 10
    while running(pid):
        assert time.monotonic() < deadline, f"the model process {pid} outlived its server"
        time.sleep(0.05)
    server.close()


def test_a_checkpoint_that_cannot_load_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{")
    res = subprocess.run([sys.executable, "-m", "trainer.serve", "--checkpoint", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"{PROG}: error: --checkpoint {tmp_path}")
