import logging
import socket
import time

import pytest

from pipeline.teacher.client import TeacherClient
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.journal import load_journal
from pipeline.teacher.outputs import result_from_record
from pipeline.teacher.prompting import build_cot_request, build_judge_request, build_verifier_request
from pipeline.teacher.reference.server import ReferenceServer

from .conftest import make_example

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}


def _client(srv, **kw):
    return TeacherClient(TeacherConfig(srv.base_url, "gpt-4o-mini", **{**FAST, **kw}))


def _cot(i=0, **params):
    ex = make_example(query_txt=f"is red, variant {i}", query_img=None, target_img=None)
    return build_cot_request(ex, model="gpt-4o-mini", params={"max_tokens": 300, **params})


@pytest.mark.parametrize("transport", ["direct", "aiohttp", "httpx"])
def test_well_formed_answers_are_parsed_and_counted(transport):
    ex = make_example(dataset="oven", task_id=6, query_txt="What is this building?", query_img=None,
                      target_img=None, target_txt="Eiffel Tower. A lattice tower in Paris.", cand_modality="text")
    with ReferenceServer() as srv, _client(srv, transport=transport) as client:
        futs = [client.submit(r) for r in (
            build_cot_request(ex, model="gpt-4o-mini", params={}),
            build_judge_request(ex, model="gpt-4o-mini", params={}),
            build_verifier_request(ex, "r", "Eiffel Tower in Paris", model="gpt-4o-mini", params={}))]
        cot, judge, ver = (f.result(timeout=10) for f in futs)
    assert cot.ok and cot.parsed[1].startswith("Eiffel Tower") and cot.attempts == 1 and not cot.from_journal
    assert judge.parsed["label"] == "complex" and ver.parsed["decision"] == "consistent"
    stats = client.stats()
    assert stats["requests"] == stats["ok"] == stats["calls"] == 3 and stats["failures"] == 0
    assert stats["prompt_tokens"] == cot.prompt_tokens + judge.prompt_tokens + ver.prompt_tokens > 0
    assert stats["cost_usd"] > 0


@pytest.mark.parametrize("fault,code", [("500", "server_error"), ("429", "rate_limited"), ("400", "bad_request")])
def test_faults_are_retried_then_reported(fault, code):
    with ReferenceServer(forced=[fault], retry_after_s=0.01) as srv, _client(srv, max_retries=2) as client:
        first = client.submit(_cot(0)).result(timeout=10)
    retried = fault != "400"
    assert first.ok == retried and first.attempts == (2 if retried else 1)
    if not retried:
        assert first.error == code and "400" in first.detail
    with ReferenceServer(forced=[fault] * 3, retry_after_s=0.01) as srv, _client(srv, max_retries=2) as client:
        last = client.submit(_cot(0)).result(timeout=10)
    assert not last.ok and last.error == code and last.attempts == (3 if retried else 1)
    assert srv.stats()["calls"] == last.attempts


def test_hang_ends_as_timeout_then_recovers():
    with ReferenceServer(forced=["hang", "hang"], hang_s=5) as srv, _client(srv, timeout_s=0.6,
                                                                            max_retries=1) as client:
        failed = client.submit(_cot(0)).result(timeout=10)
        ok = client.submit(_cot(1)).result(timeout=10)
    assert not failed.ok and failed.error == "timeout" and failed.attempts == 2
    assert ok.ok and ok.attempts == 1


def test_connection_refused_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TeacherConfig(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, **FAST)
    with TeacherClient(cfg) as client:
        r = client.submit(_cot(0)).result(timeout=10)
    assert not r.ok and r.error == "connection" and r.attempts == 2


def test_reasks_are_bounded_and_counted():
    with ReferenceServer(pmalformed=1.0) as srv, _client(srv, max_reasks=2) as client:
        r = client.submit(_cot(0, seed=7)).result(timeout=10)
        j = client.submit(build_judge_request(make_example(query_img=None), model="m", params={})).result(10)
    assert not r.ok and r.error == "malformed_output" and r.attempts == 3
    assert not j.ok and j.error == "malformed_output" and j.attempts == 3
    assert client.stats()["reasks"] == 4 and srv.stats()["malformed"] == 6
    assert r.prompt_tokens > 0  # malformed calls were paid for and are counted


def test_reask_recovers_from_one_malformed_answer():
    with ReferenceServer(forced=["malformed"]) as srv, _client(srv, max_reasks=2) as client:
        r = client.submit(_cot(0)).result(timeout=10)
    assert r.ok and r.attempts == 2 and client.stats()["reasks"] == 1


def test_a_429_pauses_every_request_until_retry_after():
    pause = 0.6
    with ReferenceServer(forced=["429"], retry_after_s=pause) as srv, _client(srv) as client:
        first = client.submit(_cot(0))
        while client.stats()["rate_limit_pauses"] == 0:  # the 429 has reached the client; now others come
            time.sleep(0.005)
        others = [client.submit(_cot(i)) for i in range(1, 6)]
        results = [f.result(timeout=10) for f in [first, *others]]
        arrivals = srv.arrivals
    assert all(r.ok for r in results) and results[0].attempts == 2
    t429 = arrivals[0][0]
    assert arrivals[0][1] == "429"
    assert all(t - t429 >= pause - 0.05 for t, _ in arrivals[1:])
    assert client.stats()["rate_limit_pauses"] == 1


def test_rpm_bucket_spaces_requests():
    with ReferenceServer() as srv, _client(srv, rpm=1200) as client:  # 20/s, burst of 20
        t0 = time.monotonic()
        results = [f.result(timeout=10) for f in [client.submit(_cot(i)) for i in range(30)]]
        elapsed = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert elapsed >= 0.4  # the 10 beyond the burst need 0.5 s at 20/s


def test_same_key_in_flight_is_called_once():
    with ReferenceServer(latency_ms=100) as srv, _client(srv) as client:
        a, b = client.submit(_cot(0)), client.submit(_cot(0))
        assert a.result(timeout=10).ok and b.result(timeout=10) is a.result()
    assert srv.stats()["calls"] == 1 and client.stats()["deduped"] == 1


def test_unknown_transport_is_a_clear_error():
    with pytest.raises(ValueError, match="transport"):
        TeacherClient(TeacherConfig("http://127.0.0.1:1/v1", "m", transport="curl"))


def test_missing_key_for_a_remote_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TEACHER_KEY_FOR_TEST", raising=False)
    with pytest.raises(ValueError, match="TEACHER_KEY_FOR_TEST"):
        TeacherClient(TeacherConfig("https://api.example.com/v1", "m", api_key_env="TEACHER_KEY_FOR_TEST"))


def test_api_key_never_reaches_journal_or_logs(tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-MARKER-9f8e7d"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with ReferenceServer(forced=["500", "429", "400", "malformed"], retry_after_s=0.01) as srv:
        with _client(srv, journal_dir=str(tmp_path / "journal"), progress_interval_s=0) as client:
            results = [client.submit(_cot(i)).result(timeout=10) for i in range(4)]
    assert any(r.ok for r in results) and any(not r.ok for r in results)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert secret not in p.read_text()
    assert caplog.records and secret not in caplog.text
    assert all(secret not in repr(r) for r in results)


def test_ok_results_are_journaled_and_reload_as_results(tmp_path):
    journal = str(tmp_path / "j")
    with ReferenceServer(forced=["ok", "400"]) as srv, _client(srv, journal_dir=journal) as client:
        ok, bad = (client.submit(_cot(i)).result(timeout=10) for i in range(2))
    assert ok.ok and not bad.ok
    records = load_journal(journal)
    assert list(records) == [ok.key]  # failures are not journaled: a rerun retries them
    again = result_from_record(records[ok.key])
    assert again.from_journal and again.parsed == ok.parsed and again.prompt_tokens == ok.prompt_tokens


def test_submit_blocks_at_max_pending_then_drains():
    with ReferenceServer(latency_ms=50) as srv, _client(srv, max_pending=4, max_in_flight=2) as client:
        t0 = time.monotonic()
        futures = [client.submit(_cot(i)) for i in range(8)]
        submitted = time.monotonic() - t0
        assert all(f.result(timeout=10).ok for f in futures)
    assert submitted >= 0.09  # the last 4 waited for 2 rounds of 2 in flight at 50 ms
    assert srv.stats()["calls"] == 8


def test_run_many_returns_results_in_request_order():
    with ReferenceServer(forced=["ok", "400", "ok"]) as srv, _client(srv, max_in_flight=1) as client:
        reqs = [_cot(i) for i in range(3)]
        results = client.run_many(reqs)
    assert [r.key for r in results] == [r.key for r in reqs]
    assert [r.ok for r in results] == [True, False, True]


def test_api_key_from_secret_manager_when_the_variable_is_unset(monkeypatch):
    import sys
    import types

    from pipeline.teacher.config import TeacherConfig

    asked = []

    class FakeClient:
        def access_secret_version(self, name):
            asked.append(name)
            return types.SimpleNamespace(payload=types.SimpleNamespace(data=b"sk-from-secret\n"))

    google = types.ModuleType("google")
    cloud = types.ModuleType("google.cloud")
    secretmanager = types.ModuleType("google.cloud.secretmanager")
    secretmanager.SecretManagerServiceClient = FakeClient
    cloud.secretmanager = secretmanager
    google.cloud = cloud
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.cloud", cloud)
    monkeypatch.setitem(sys.modules, "google.cloud.secretmanager", secretmanager)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = TeacherConfig(base_url="https://api.example.com/v1", model="m",
                           api_key_secret="projects/p/secrets/teacher")
    assert config.resolve_api_key() == "sk-from-secret"
    assert asked == ["projects/p/secrets/teacher/versions/latest"]


def test_the_direct_transport_sends_the_headers_and_body_the_openai_client_sends(monkeypatch):
    import http.server
    import json
    import threading

    seen: list[tuple[dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server hook's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
            answer = json.dumps({"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "choices": [{
                "message": {"content": "<reasoning>" + "a red shape on grey. " * 4 + "</reasoning>"
                                       "<answer>a red circle</answer>"}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    monkeypatch.setenv("OPENAI_ORG_ID", "org-test")
    monkeypatch.setenv("MBEIR_TEST_KEY", "sk-test")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for transport in ("aiohttp", "direct"):
            config = TeacherConfig(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", transport=transport,
                                   api_key_env="MBEIR_TEST_KEY", **FAST)
            with TeacherClient(config) as client:
                assert client.submit(_cot()).result(timeout=10).ok
    finally:
        server.shutdown()
    (openai_headers, openai_body), (direct_headers, direct_body) = seen
    assert json.loads(direct_body) == json.loads(openai_body)
    for name in ("authorization", "openai-organization", "user-agent", "content-type", "accept"):
        assert direct_headers.get(name) == openai_headers.get(name) is not None, name
