"""The server through the openai client: text, images, documents, mixed routes and concurrent requests equal
in-process encoding; limits, auth and disconnects answered without harming other requests."""

import asyncio
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import openai
import pytest
import torch

from tests.trainer.inference.test_engine import MAX_NEW, PLAN, _candidates, _queries
from tests.trainer.serving.conftest import API_KEY, MODEL, data_url
from tests.trainer.serving.test_protocol import b64, png_header


def _item(q) -> dict:
    item = {"text": q.text, "dataset": q.dataset, "task_id": q.task_id}
    return {**item, "image": data_url(q.image)} if q.image is not None else item


def _doc(c) -> dict:
    return {k: v for k, v in (("text", c.text), ("image", c.image and data_url(c.image))) if v is not None}


def _client(server, key: str = "unused", cls=openai.OpenAI):
    return cls(base_url=server.url + "/v1", api_key=key, max_retries=0)


def _vectors(data) -> torch.Tensor:
    return torch.tensor(np.array([d.embedding for d in data], dtype=np.float32))


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert float((got * want).sum(-1).min()) >= 0.9999


def test_queries_with_text_and_images_equal_in_process(server, reference):
    qs = _queries()
    res = _client(server).embeddings.create(model=MODEL, input=[_item(q) for q in qs],
                                            extra_body={"return_reasoning": True})
    ref = reference.encode_queries(qs, max_new_tokens=MAX_NEW, batch_size=1)
    _assert_same(_vectors(res.data), ref.embeddings)  # the client asked for base64 and decoded it
    assert [d.generated_tokens for d in res.data] == ref.generated_tokens == PLAN
    assert [d.reasoned for d in res.data] == ref.reasoned and [d.reasoning for d in res.data] == ref.texts
    assert res.usage.total_tokens == res.usage.prompt_tokens + sum(PLAN) and res.model == MODEL


def test_strings_documents_and_float_encoding(server, reference):
    client = _client(server)
    res = client.embeddings.create(model=MODEL, input=["A dog.", "Two cats on a bed."], encoding_format="float",
                                   extra_body={"dataset": "mscoco", "task_id": 0, "mode": "direct"})
    ref = reference.encode_queries([{"text": t, "dataset": "mscoco", "task_id": 0} for t in ("A dog.",
                                    "Two cats on a bed.")], mode="direct")
    _assert_same(_vectors(res.data), ref.embeddings)
    assert isinstance(res.data[0].embedding, list) and not any(d.reasoned for d in res.data)
    docs = client.embeddings.create(model=MODEL, input=[_doc(c) for c in _candidates()],
                                    extra_body={"input_type": "document"})
    _assert_same(_vectors(docs.data), reference.encode_candidates(_candidates()))
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_concurrent_requests_share_batches_and_equal_in_process(server, reference):
    """Nine requests of every mode and documents, queued while the scheduler is held, then run together: decode
    steps hold rows of several requests, and every answer equals encoding that request alone in-process."""
    qs, modes = _queries(), ("adaptive", "always", "direct")
    requests = [(modes[i % 3], [qs[i]]) for i in range(len(qs))] + [("adaptive", qs[3:6])]
    client = _client(server, cls=openai.AsyncOpenAI)

    async def send(mode, items):
        return await client.embeddings.create(model=MODEL, input=[_item(q) for q in items],
                                              extra_body={"mode": mode, "return_reasoning": True})

    async def docs():
        return await client.embeddings.create(model=MODEL, input=[_doc(c) for c in _candidates()],
                                              extra_body={"input_type": "document"})

    async def run_all():
        return await asyncio.gather(*(send(m, items) for m, items in requests), docs())

    steps = []
    hook = server.scheduler.engine.emb.base.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: steps.append(kwargs["input_ids"].shape[0]) if kwargs.get("cache") else None,
        with_kwargs=True)
    try:
        with server.held():
            loop = asyncio.new_event_loop()
            task = loop.create_task(run_all())
            loop.run_until_complete(asyncio.sleep(0))
            while server.queue.snapshot()["waiting"] < len(qs) + 3 + 3:
                loop.run_until_complete(asyncio.sleep(0.01))
        answers = loop.run_until_complete(task)
        loop.close()
    finally:
        hook.remove()
    assert max(steps) == 4  # a full decode batch: reasoning rows of different requests
    for (mode, items), res in zip(requests, answers, strict=False):
        ref = reference.encode_queries(items, mode=mode, max_new_tokens=MAX_NEW, batch_size=1)
        _assert_same(_vectors(res.data), ref.embeddings)
        assert [d.reasoning for d in res.data] == ref.texts
    _assert_same(_vectors(answers[-1].data), reference.encode_candidates(_candidates()))


@dataclass
class Reply:
    status_code: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def _http(server, path: str, raw: bytes | None = None, key: str | None = API_KEY) -> Reply:
    """GET (raw None) or POST raw bytes as JSON, with stdlib only."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(server.url + path, data=raw, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as res:
            return Reply(res.status, dict(res.headers), res.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


def _post(server, body, key: str | None = API_KEY) -> Reply:
    return _http(server, "/v1/embeddings", json.dumps(body).encode(), key)


QUERY = {"text": "x", "dataset": "cirr", "task_id": 7}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": MODEL, "input": [QUERY] * 9}, 400, "input"),
    ({"model": MODEL, "input": [{**QUERY, "image": b64(png_header(30_000, 30_000))}]}, 400, "input[0].image"),
    ({"model": MODEL, "input": [{**QUERY, "image": b64(png_header(2000, 1000))}]}, 400, "input[0].image"),
    ({"model": MODEL, "input": [{**QUERY, "image": "data:image/png;base64,not base64"}]}, 400, "input[0].image"),
    ({"model": MODEL, "input": [{**QUERY, "image": b64(b"\0" * 70_000)}]}, 400, "input[0].image"),
    ({"model": MODEL, "input": [{**QUERY, "text": "x" * 501}]}, 400, "input[0].text"),
    ({"model": MODEL, "input": [{**QUERY, "task_id": 99}]}, 400, "input[0]"),
    ({"model": MODEL, "input": "x", "mode": "sometimes"}, 400, "mode"),
    ({"model": "gpt-4", "input": "x"}, 404, "model"),
    ({"model": MODEL, "input": [QUERY] * 20_000}, 413, None),
])
def test_each_limit_and_malformed_field_has_its_status(strict_server, body, status, param):
    res = _post(strict_server, body)
    assert res.status_code == status
    error = res.json()["error"]
    assert error["param"] == param and error["message"]
    assert _post(strict_server, {"model": MODEL, "input": [QUERY]}).status_code == 200


def test_bodies_that_are_not_json_and_unknown_routes(strict_server):
    for raw in (b"{", b'{"model": NaN}', b"\xff\xfe", b"[" * 100_000):
        res = _http(strict_server, "/v1/embeddings", raw)
        assert res.status_code == 400 and "not valid JSON" in res.json()["error"]["message"]
    assert _http(strict_server, "/v1/nothing").status_code == 404
    res = _http(strict_server, "/v1/embeddings")
    assert res.status_code == 405 and res.json()["error"]["message"]
    assert _http(strict_server, "/health", key=None).json()["status"] == "ok"


def test_api_key(strict_server):
    with pytest.raises(openai.AuthenticationError):
        _client(strict_server, key="wrong").embeddings.create(model=MODEL, input=[QUERY])
    assert _post(strict_server, {"model": MODEL, "input": [QUERY]}, key=None).status_code == 401
    assert len(_client(strict_server, key=API_KEY).embeddings.create(model=MODEL, input=[QUERY]).data) == 1
    assert _http(strict_server, "/health", key=None).status_code == 200  # no key needed


def test_a_full_queue_answers_429_with_retry_after(strict_server):
    client = _client(strict_server, key=API_KEY, cls=openai.AsyncOpenAI)
    loop = asyncio.new_event_loop()
    with strict_server.held():
        first = loop.create_task(client.embeddings.create(model=MODEL, input=[QUERY] * 8))
        while strict_server.queue.snapshot()["waiting"] < 8:
            loop.run_until_complete(asyncio.sleep(0.01))
        res = _post(strict_server, {"model": MODEL, "input": [QUERY]})
        assert res.status_code == 429 and res.headers["Retry-After"] == "1"
        assert res.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(loop.run_until_complete(first).data) == 8
    loop.close()
    assert _post(strict_server, {"model": MODEL, "input": [QUERY]}).status_code == 200


def test_a_client_that_disconnects_cancels_its_waiting_inputs(server, reference):
    body = json.dumps({"model": MODEL, "input": list("abcdef"), "dataset": "cirr", "task_id": 7}).encode()
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    before = server.queue.snapshot().get("cancelled_inputs", 0)
    with server.held() as taken:
        conn = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        conn.sendall(request)
        assert taken.wait(30)  # the first chunk (4 of 6) is in the scheduler's hands, 2 wait in the queue
        server.wait_for(lambda s: s["waiting"] == 6)
        conn.close()
        snap = server.wait_for(lambda s: s.get("cancelled_inputs", 0) == before + 6)
        assert snap["waiting"] == 0
    server.wait_for(lambda s: s["in_queue"] == 0)
    res = _client(server).embeddings.create(model=MODEL, input=[_item(_queries()[1])])
    _assert_same(_vectors(res.data), reference.encode_queries(_queries()[1:2], max_new_tokens=MAX_NEW).embeddings)


def test_health_counts_requests(server):
    health = _http(server, "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["waiting"] == 0
    assert health["requests"] >= 1 and health["max_queue"] == 256


def test_many_one_query_requests_at_once(server, reference):
    """32 one-query requests in flight together from one async client: all answered, all equal in-process."""
    client = _client(server, cls=openai.AsyncOpenAI)
    qs = _queries() * 4

    async def run_all():
        return await asyncio.gather(*(client.embeddings.create(model=MODEL, input=[_item(q)]) for q in qs))

    answers = asyncio.run(run_all())
    ref = reference.encode_queries(qs, max_new_tokens=MAX_NEW, batch_size=4)
    _assert_same(torch.cat([_vectors(a.data) for a in answers]), ref.embeddings)
    assert [a.data[0].generated_tokens for a in answers] == ref.generated_tokens
