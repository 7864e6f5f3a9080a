import json
import os

import openai
import pytest

from pipeline.teacher.batch import BatchJobs
from pipeline.teacher.budget import Budget
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.cost import BATCH_DISCOUNT, PriceTable
from pipeline.teacher.journal import load_journal
from pipeline.teacher.outputs import result_from_record
from pipeline.teacher.pending import pending_line
from pipeline.teacher.prompting import build_cot_request, build_judge_request, build_verifier_request
from pipeline.teacher.reference.server import ReferenceServer

from .conftest import make_example

MODEL = "gpt-4o-mini"


def _requests(n: int, model: str = MODEL) -> list:
    out = []
    for i in range(n):
        ex = make_example(query_txt=f"is red and has {i} long sleeves", query_img=None, target_img=None,
                          target_txt=f"A red shirt number {i} with long sleeves")
        build = (build_cot_request, build_judge_request)[i % 2]
        out.append(build(ex, model=model, params={"max_tokens": 300}))
    return out


def _verifier(model: str = MODEL):
    ex = make_example(query_img=None, target_img=None, target_txt="A red shirt with long sleeves")
    return build_verifier_request(ex, "r", "A red shirt with long sleeves", model=model, params={"max_tokens": 80})


def _write_pending(folder, reqs, files: int = 2) -> str:
    os.makedirs(folder, exist_ok=True)
    for k in range(files):
        with open(os.path.join(folder, f"part-{k}.jsonl"), "w") as f:
            f.writelines(pending_line(r) + "\n" for r in reqs[k::files])
    return os.path.join(folder, "*.jsonl")


@pytest.fixture
def env(tmp_path):
    servers = []

    def make(max_requests: int = 50_000, max_bytes: int = 200 * 1024 * 1024, **server_config):
        srv = ReferenceServer(**server_config).start()
        servers.append(srv)
        cfg = TeacherConfig(base_url=srv.base_url, model=MODEL, journal_dir=str(tmp_path / "journal"),
                            backoff_initial_s=0.01, backoff_max_s=0.05)
        jobs = BatchJobs(cfg, str(tmp_path / "state"), max_requests=max_requests, max_bytes=max_bytes)
        return srv, jobs

    yield make
    for srv in servers:
        srv.stop()


def _reopen(jobs: BatchJobs, **kw) -> BatchJobs:
    """A fresh BatchJobs on the same state (the next run of the driver)."""
    return BatchJobs(jobs.config, jobs.state_dir, max_requests=jobs.max_requests, max_bytes=jobs.max_bytes, **kw)


def test_submit_then_collect_journals_answers_the_client_reads(env, tmp_path):
    srv, jobs = env()
    reqs = _requests(6) + [_verifier()]
    pending = _write_pending(tmp_path / "pending", reqs)

    sub = jobs.submit_pending(pending)
    assert (sub["submitted_requests"], sub["batches"]) == (7, 1)
    assert os.listdir(tmp_path / "pending") == []  # consumed
    assert jobs.in_progress() == 7
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    (entry,) = state["batches"].values()
    assert entry["status"] == "submitted" and entry["n_requests"] == 7

    got = _reopen(jobs).collect()
    assert got["completed_batches"] == 1 and got["collected"] == 7
    assert got["malformed"] == got["failed_items"] == got["expired_items"] == 0
    journal = load_journal(str(tmp_path / "journal"))
    assert set(journal) == {r.key for r in reqs}
    prices = PriceTable()
    cost = 0.0
    for r in reqs:
        res = result_from_record(journal[r.key])
        assert res.ok and res.from_journal and res.kind == r.kind and res.parsed is not None
        assert journal[r.key]["prompt_id"] == r.prompt_id and journal[r.key]["prompt_sha"] == r.prompt_sha
        assert res.prompt_tokens > 0 and res.completion_tokens > 0
        cost += prices.cost(MODEL, res.prompt_tokens, res.completion_tokens, discount=BATCH_DISCOUNT)
    assert got["cost_usd"] == pytest.approx(cost, abs=1e-6) and got["cost_usd"] > 0
    assert _reopen(jobs).in_progress() == 0
    assert srv.state.batches.files == {}  # input, output and error files cleaned up


def test_the_same_pending_lines_are_never_submitted_twice(env, tmp_path):
    srv, jobs = env(batch_speed=60)
    reqs = _requests(5)
    assert jobs.submit_pending(_write_pending(tmp_path / "p", reqs))["submitted_requests"] == 5
    again = _reopen(jobs).submit_pending(_write_pending(tmp_path / "p", reqs))
    assert (again["submitted_requests"], again["batches"], again["skipped_busy"]) == (0, 0, 5)
    assert _reopen(jobs).collect()["in_progress_batches"] == 1  # the server's clock has not run out

    srv.state.config.batch_speed = 0
    assert jobs.collect()["collected"] == 5
    # a stale pending file left by an interrupted run: its requests are journaled, so nothing is submitted
    again = _reopen(jobs).submit_pending(_write_pending(tmp_path / "p", reqs + _requests(7)[5:]))
    assert (again["submitted_requests"], again["skipped_busy"]) == (2, 5)
    assert srv.state.batches.created == 2


def test_expired_batches_and_failed_items_come_back_until_all_are_journaled(env, tmp_path):
    srv, jobs = env(batch_forced=("expire",), batch_pfail=0.4, seed=3)
    reqs = _requests(16)
    jobs.submit_pending(_write_pending(tmp_path / "p", reqs))
    first = jobs.collect()
    assert first["expired_items"] == 8  # the expired batch answered its first half
    assert first["failed_items"] > 0 and first["collected"] == 8 - first["failed_items"]
    assert jobs.in_progress() == 0
    journal = load_journal(str(tmp_path / "journal"))
    assert len(journal) == first["collected"]

    srv.state.config.batch_pfail = 0.0
    todo = [r for r in reqs if r.key not in journal]  # what the next run's graph writes as pending
    rerun = _reopen(jobs)
    sub = rerun.submit_pending(_write_pending(tmp_path / "p", todo))
    assert sub["submitted_requests"] == 16 - first["collected"]
    second = rerun.collect()
    assert second["collected"] == sub["submitted_requests"] and second["expired_items"] == 0
    assert set(load_journal(str(tmp_path / "journal"))) == {r.key for r in reqs}


def test_a_failed_batch_marks_every_item_for_resubmission(env, tmp_path):
    srv, jobs = env(batch_forced=("fail",))
    reqs = _requests(4)
    jobs.submit_pending(_write_pending(tmp_path / "p", reqs))
    got = jobs.collect()
    assert (got["completed_batches"], got["failed_items"], got["collected"]) == (1, 4, 0)
    assert jobs.in_progress() == 0 and load_journal(str(tmp_path / "journal")) == {}
    assert jobs.submit_pending(_write_pending(tmp_path / "p", reqs))["submitted_requests"] == 4
    assert jobs.collect()["collected"] == 4


def test_malformed_answers_are_not_journaled_and_are_asked_again(env, tmp_path):
    srv, jobs = env(pmalformed=1.0)
    reqs = _requests(4)
    jobs.submit_pending(_write_pending(tmp_path / "p", reqs))
    got = jobs.collect()
    assert (got["malformed"], got["collected"]) == (4, 0)
    assert got["prompt_tokens"] > 0  # malformed answers are billed all the same
    srv.state.config.pmalformed = 0.0
    assert jobs.submit_pending(_write_pending(tmp_path / "p", reqs))["submitted_requests"] == 4
    assert jobs.collect()["collected"] == 4


def test_batches_respect_request_size_and_model_limits(env, tmp_path):
    reqs = _requests(7) + _requests(2, model="gpt-4.1-nano")
    srv, jobs = env(max_requests=3)
    got = jobs.submit_pending(_write_pending(tmp_path / "p", reqs))
    assert (got["submitted_requests"], got["batches"]) == (9, 4)  # 3+3+1 for one model, 2 for the other
    sizes = sorted(e["n_requests"] for e in jobs.state["batches"].values())
    assert sizes == [1, 2, 3, 3]
    assert jobs.collect()["collected"] == 9
    for b in srv.state.batches.batches.values():
        assert b.obj["status"] == "completed"  # one model per file, or the server fails the batch


def test_batches_respect_the_byte_limit_and_skip_oversized_requests(env, tmp_path):
    reqs = _requests(6)
    line = len(json.dumps({"custom_id": reqs[0].key, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": MODEL, "messages": reqs[0].messages, **reqs[0].params}}))
    srv, jobs = env(max_bytes=int(line * 2.5))
    got = jobs.submit_pending(_write_pending(tmp_path / "p", reqs))
    assert got["batches"] == 3 and got["submitted_requests"] == 6
    assert all(len(srv.state.batches.files[e["input_file_id"]]["data"]) <= line * 2.5
               for e in jobs.state["batches"].values())
    tiny = _reopen(jobs)
    tiny.max_bytes = 100
    got = tiny.submit_pending(_write_pending(tmp_path / "q", _requests(8)[6:]))
    assert (got["too_large"], got["submitted_requests"]) == (2, 0)


def test_an_interruption_between_creates_loses_nothing_and_submits_nothing_twice(env, tmp_path):
    srv, jobs = env(max_requests=2)
    reqs = _requests(6)
    pending = _write_pending(tmp_path / "p", reqs)
    real, calls = jobs.api.batches.create, []

    def create_then_die(**kw):
        calls.append(kw)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process is stopped before the second create
        return real(**kw)

    jobs.api.batches.create = create_then_die
    with pytest.raises(KeyboardInterrupt):
        jobs.submit_pending(pending)
    rerun = _reopen(jobs)
    assert rerun.in_progress() == 2 + 2  # the first batch, and the upload whose create is in doubt
    got = rerun.submit_pending(pending)  # the pending files were kept
    assert (got["submitted_requests"], got["skipped_busy"]) == (4, 2)
    assert srv.state.batches.created == 3
    assert rerun.collect()["collected"] == 6
    assert set(load_journal(str(tmp_path / "journal"))) == {r.key for r in reqs}


def test_a_create_whose_response_was_lost_is_found_again_not_repeated(env, tmp_path):
    srv, jobs = env()
    reqs = _requests(3)
    pending = _write_pending(tmp_path / "p", reqs)
    real = jobs.api.batches.create

    def create_and_crash(**kw):
        real(**kw)
        raise KeyboardInterrupt  # the batch exists on the server, its id never reached state.json

    jobs.api.batches.create = create_and_crash
    with pytest.raises(KeyboardInterrupt):
        jobs.submit_pending(pending)
    rerun = _reopen(jobs)
    got = rerun.submit_pending(pending)
    assert (got["submitted_requests"], got["skipped_busy"]) == (0, 3)
    assert srv.state.batches.created == 1 and rerun.in_progress() == 3
    assert rerun.collect()["collected"] == 3


def test_retries_a_create_after_a_connection_error_without_a_duplicate(env, tmp_path):
    srv, jobs = env()
    real, calls = jobs.api.batches.create, []

    def lost_response(**kw):
        calls.append(kw)
        batch = real(**kw)
        if len(calls) == 1:
            raise openai.APIConnectionError(request=None)
        return batch

    jobs.api.batches.create = lost_response
    got = jobs.submit_pending(_write_pending(tmp_path / "p", _requests(3)))
    assert got["batches"] == 1 and srv.state.batches.created == 1 and len(calls) == 1


def test_bad_pending_lines_and_budget_refusals_are_counted_not_fatal(env, tmp_path):
    srv, jobs = env()
    folder = tmp_path / "p"
    pending = _write_pending(folder, _requests(5), files=1)
    with open(folder / "part-0.jsonl", "a") as f:
        f.write('{"custom_id": "x", "body": {}}\nnot json\n\n')
    budget = Budget(max_requests=3, max_cost_usd=None, prices=PriceTable(), model=MODEL, discount=BATCH_DISCOUNT)
    got = jobs.submit_pending(pending, budget=budget)
    assert (got["bad_lines"], got["submitted_requests"], got["over_budget"]) == (2, 3, 2)
    assert budget.spent()["reserved_requests"] == 3
    assert jobs.submit_pending(str(tmp_path / "nowhere" / "*.jsonl"))["submitted_requests"] == 0


def test_reference_batch_objects_parse_with_the_openai_client(env, tmp_path):
    srv, _ = env(batch_speed=60)
    api = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
    req = _requests(1)[0]
    body = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": req.messages}}).encode()
    f = api.files.create(file=("in.jsonl", body), purpose="batch")
    assert api.files.retrieve(f.id).bytes == len(body) and api.files.content(f.id).read() == body
    ids = [api.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
           for _ in range(3)]
    assert [b.id for b in api.batches.list(limit=2)] == ids[::-1]  # newest first, across pages
    b = api.batches.retrieve(ids[0])
    assert b.status == "in_progress" and b.request_counts.total == 1
    c = api.batches.cancel(ids[1])
    assert c.status == "cancelled"
    bad = api.files.create(file=("bad.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    failed = api.batches.retrieve(api.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions",
                                                     completion_window="24h").id)
    assert failed.status == "failed" and failed.errors.data[0].line == 1
    with pytest.raises(openai.NotFoundError):
        api.batches.retrieve("batch_missing")
