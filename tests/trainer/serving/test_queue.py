"""The request queue's policy, without a model: prefill first (every full chunk pending at once, at most
chunks_per_step a decode step while rows decode), part-full chunks wait (bounded) while the decoder has a full batch
waiting, the --max_queue bound, cancellation, closing, answers."""

import asyncio

import numpy as np
import pytest
import torch

from trainer.modeling.interface import QueryInput
from trainer.serving.queue import QueueClosed, QueueFull, RequestQueue, Ticket


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def ticket(loop, n: int, mode: str = "adaptive") -> Ticket:
    return Ticket([QueryInput(f"q{i}", None, "mscoco", 0) for i in range(n)], mode, False, loop)


def step(queue: RequestQueue, in_decode: int, steps: int) -> list[list]:
    """What the engine's loop takes before one decode step: chunks until [] (or None), its rows joining in_decode."""
    chunks = []
    while chunk := queue.take(in_decode + sum(map(len, chunks)), steps):
        chunks.append(chunk)
    return chunks


def test_while_rows_decode_at_most_chunks_per_step(loop):
    queue = RequestQueue(batch_size=2, max_queue=20, tokenizer=None, max_wait=0, chunks_per_step=2)
    queue.submit(ticket(loop, 7))
    assert len(queue.take(0, 0)) == 2
    assert len(queue.take(1, 0)) == 2  # a second chunk in the same step
    assert queue.take(3, 0) == []  # rows decode and this step had its chunks
    assert [len(c) for c in step(queue, 3, 1)] == [2, 1]  # the next step: the rest, the part-full chunk too
    queue.submit(ticket(loop, 5))
    assert [len(queue.take(0, 2)) for _ in range(3)] == [2, 2, 1]  # nothing decodes (direct rows): no cap
    assert queue.snapshot()["prefill_chunks"] == 7


def test_an_input_behind_many_reasoning_inputs_is_prefilled_within_bounded_steps(loop):
    """A full decode batch, 56 one-input requests pending and a later one: every full chunk goes at once, at most
    chunks_per_step a step (the loop goes back to decoding after each), so the later input is prefilled in the
    ceil(57 / (batch_size * chunks_per_step)) = 8th step, not the 15th of one chunk a step."""
    queue = RequestQueue(batch_size=4, max_queue=100, tokenizer=None, max_wait=0, chunks_per_step=2)
    for _ in range(56):
        queue.submit(ticket(loop, 1))
    easy = ticket(loop, 1)
    queue.submit(easy)
    in_decode, taken = 8, []
    for steps in range(20):
        chunks = step(queue, in_decode, steps)
        assert len(chunks) <= 2  # decoding rows advance every step
        in_decode += sum(map(len, chunks))
        taken += [job for chunk in chunks for job in chunk]
        if easy.jobs[0] in taken:
            break
    assert steps == 7 and len(taken) == 57


def test_a_stream_of_full_chunks_never_holds_up_decoding(loop):
    queue = RequestQueue(batch_size=2, max_queue=1000, tokenizer=None, max_wait=3600, chunks_per_step=3)
    for steps in range(10):
        queue.submit(ticket(loop, 8))  # more than a step may take arrives every step
        assert [len(c) for c in step(queue, 16, steps)] == [2, 2, 2]
    assert queue.snapshot()["in_queue"] == 20


def test_part_full_chunks_wait_only_while_a_full_batch_waits(loop):
    queue = RequestQueue(batch_size=2, max_queue=10, tokenizer=None, max_wait=3600)
    queue.submit(ticket(loop, 1))
    assert queue.take(4, 0) == []  # 2 x batch_size rows decode or wait: let the chunk fill
    queue.submit(ticket(loop, 1))
    assert len(queue.take(4, 0)) == 2  # a full chunk
    queue.submit(ticket(loop, 1))
    assert len(queue.take(3, 1)) == 1  # less than a full batch waits behind the active one
    queue.max_wait = 0
    queue.submit(ticket(loop, 1))
    assert len(queue.take(9, 3)) == 1  # waited long enough


def test_max_queue_cancel_and_close(loop):
    queue = RequestQueue(batch_size=4, max_queue=3, tokenizer=None)
    first = ticket(loop, 2)
    queue.submit(first)
    with pytest.raises(QueueFull):
        queue.submit(ticket(loop, 2))
    queue.cancel(first)
    snap = queue.snapshot()
    assert (snap["waiting"], snap["cancelled_inputs"], snap["rejected_requests"]) == (0, 2, 1)
    second = ticket(loop, 3)
    queue.submit(second)
    assert queue.take(0, 0) == second.jobs  # the cancelled inputs are skipped
    queue.close()
    with pytest.raises(QueueClosed):
        queue.submit(ticket(loop, 1))
    assert queue.take(0, 0) is None


def test_finished_jobs_answer_their_request_in_input_order(loop):
    queue = RequestQueue(batch_size=4, max_queue=8, tokenizer=None)
    t = ticket(loop, 3)
    queue.submit(t)
    jobs = queue.take(0, 0)
    jobs[1].tokens, jobs[1].prompt_tokens = [5, 6], 11
    queue.finish([jobs[2], jobs[1]], torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    loop.run_until_complete(asyncio.sleep(0))
    assert not t.future.done()
    queue.finish([jobs[0]], torch.tensor([[1.0, 0.0]]))
    results = loop.run_until_complete(t.future)
    assert np.allclose([r.embedding for r in results], [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # normalised
    assert (results[1].generated_tokens, results[1].prompt_tokens) == (2, 11)
    assert queue.snapshot()["waiting"] == 0
