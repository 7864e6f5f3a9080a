import json
import urllib.request

import openai
import pytest

import schemas
from pipeline.teacher.prompting import build_cot_request, build_judge_request, build_verifier_request
from pipeline.teacher.reference.answers import keywords
from pipeline.teacher.reference.server import ReferenceServer
from pipeline.teacher.reference.state import NOT_A_MODEL
from validators.cot_format import split_cot

from ..conftest import make_example


@pytest.fixture(scope="module")
def server():
    with ReferenceServer() as srv:
        yield srv


def _ask(srv, req):
    client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
    return client.chat.completions.create(model=req.model, messages=req.messages, **req.params)


EXAMPLES = {
    "cir": make_example(query_img=None, target_img=None,
                        target_txt="A red long-sleeved shirt with a round collar"),
    "cir_no_target": make_example(query_img=None, target_img=None),
    "knowledge": make_example(dataset="infoseek", task_id=6, query_txt="Which river flows through this city?",
                              target_txt="Danube. The Danube is the second-longest river in Europe.",
                              query_img=None, target_img=None, cand_modality="text"),
    "visual": make_example(dataset="mscoco", task_id=0, query_txt="A dog catching a frisbee on a beach",
                           query_img=None, target_img=None, cand_modality="image"),
    "text": make_example(dataset="webqa", task_id=1, query_txt="When was the Golden Gate Bridge opened?",
                         target_txt="The Golden Gate Bridge opened to traffic in May 1937.",
                         query_img=None, target_img=None, cand_modality="text"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_cot_answers_are_well_formed_and_grounded(server, name):
    ex = EXAMPLES[name]
    out = _ask(server, build_cot_request(ex, model="gpt-test", params={"max_tokens": 300}))
    assert out.model == "gpt-test" and out.choices[0].finish_reason == "stop"
    reasoning, answer = split_cot(out.choices[0].message.content)
    assert 20 <= len(reasoning.split()) <= 120
    assert 2 <= len(answer.split()) <= 64
    source = (ex.positives[0].txt or "") + " " + ex.query.query_txt
    assert keywords(answer) & keywords(source)
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0


def test_judge_and_verifier_answers_match_their_schemas(server):
    cir, visual = EXAMPLES["cir"], EXAMPLES["visual"]
    judge = schemas.validator("judge_output")
    complex_ = json.loads(_ask(server, build_judge_request(cir, model="m", params={})).choices[0].message.content)
    simple = json.loads(_ask(server, build_judge_request(visual, model="m", params={})).choices[0].message.content)
    judge.validate(complex_)
    judge.validate(simple)
    assert (complex_["label"], simple["label"]) == ("complex", "simple")
    verifier = schemas.validator("verifier_output")
    good = json.loads(_ask(server, build_verifier_request(cir, "r", "a red shirt with long sleeves", model="m",
                                                          params={})).choices[0].message.content)
    bad = json.loads(_ask(server, build_verifier_request(cir, "r", "a wooden table", model="m",
                                                         params={})).choices[0].message.content)
    verifier.validate(good)
    verifier.validate(bad)
    assert good["decision"] == "consistent" and good["confidence"] > 0.7
    assert bad["decision"] == "inconsistent"


def test_models_route_says_it_is_not_a_model(server):
    with urllib.request.urlopen(server.base_url + "/models") as r:
        body = json.loads(r.read())
    assert "NOT A MODEL" in body["data"][0]["description"] == NOT_A_MODEL


def _outcomes(seed, n=30):
    req = build_judge_request(EXAMPLES["visual"], model="m", params={})
    with ReferenceServer(seed=seed, p429=0.2, p500=0.2, pmalformed=0.2, retry_after_s=0) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        for _ in range(n):
            try:
                client.chat.completions.create(model="m", messages=req.messages)
            except openai.APIStatusError:
                pass
        return [o for _, o in srv.arrivals], srv.stats()


def test_fault_draws_are_random_per_call_and_reproducible_by_seed():
    a, stats = _outcomes(seed=1)
    assert a == _outcomes(seed=1)[0]
    assert a != _outcomes(seed=2)[0]
    assert {"ok", "429", "500", "malformed"} <= set(a)  # the same body draws differently on each call
    assert stats["calls"] == 30 == sum(stats[k] for k in ("ok", "429", "500", "malformed", "hang", "400"))


def test_rpm_window_answers_429_with_headers():
    with ReferenceServer(rpm=2) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        req = build_judge_request(EXAMPLES["visual"], model="m", params={})
        raw = client.chat.completions.with_raw_response.create(model="m", messages=req.messages)
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        client.chat.completions.create(model="m", messages=req.messages)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="m", messages=req.messages)
        assert 58 <= float(e.value.response.headers["retry-after-ms"]) / 1000 <= 60  # until the window resets
        assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
