"""What the pipeline can rely on from the llama.cpp test server, asserted through the real openai client."""

from __future__ import annotations

import json

import openai
import pytest

import prompts
from tests.integration.conftest import LLAMA_MODEL
from validators.cot_format import format_problems, split_cot

# A 1x1 PNG: enough to make a request multimodal.
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
         "hKmMIQAAAABJRU5ErkJggg==")

QUERIES = [
    ("WebQA", "Retrieve a Wikipedia paragraph that answers this question.", "How tall is the Eiffel Tower?",
     "The Eiffel Tower is 330 metres tall."),
    ("NIGHTS", "Find a passage that describes this topic.", "Photosynthesis in plants",
     "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("OVEN", "Retrieve a passage about this entity.", "Who painted the Mona Lisa?",
     "Leonardo da Vinci painted the Mona Lisa in the early 16th century."),
    ("InfoSeek", "Retrieve a passage that answers the question.", "What is the capital of Australia?",
     "Canberra is the capital city of Australia."),
]


@pytest.fixture(scope="module")
def client(llama_base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_base_url, api_key="sk-local", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, content, **kw):
    return client.chat.completions.create(model=LLAMA_MODEL, messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def test_lists_the_served_model(client):
    assert LLAMA_MODEL in [m.id for m in client.models.list()]


def test_chat_completion_returns_text_and_usage(client):
    r = ask(client, "Say hello in one word.", max_tokens=8)
    text = r.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert r.choices[0].finish_reason in {"stop", "length"}
    assert r.usage.prompt_tokens > 0
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_json_object_response_format_yields_json(client):
    r = ask(client, 'Reply with a JSON object like {"color": "blue"} naming one color.', max_tokens=48,
            response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_object_with_schema_is_grammar_constrained(client):
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["verdict"]}
    r = ask(client, "Is the sky blue? Answer as JSON.", max_tokens=32,
            response_format={"type": "json_object", "schema": schema})
    assert json.loads(r.choices[0].message.content)["verdict"] in {"yes", "no"}


def test_json_schema_response_format_is_a_server_error(client):
    # llama-cpp-python's server rejects OpenAI's `json_schema` shape; callers must send json_object + schema.
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, "Answer as JSON.", max_tokens=16, response_format={
            "type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}}})
    assert err.value.status_code == 500


def test_image_content_part_is_a_server_error(client):
    # Text-only model without a multimodal chat handler: any image_url part fails with HTTP 500.
    content = [{"type": "text", "text": "What is in this image?"},
               {"type": "image_url", "image_url": {"url": PIXEL}}]
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, content, max_tokens=8)
    assert err.value.status_code == 500


def test_cot_format_rate_on_the_text_prompt(client):
    """How often SmolLM2 follows `<reasoning>..</reasoning><answer>..</answer>`: printed, not asserted."""
    template = prompts.load("cot_text")
    problems: dict[str, int] = {}
    well_formed = 0
    for dataset, instruction, query, target in QUERIES:
        r = ask(client, template.render(dataset=dataset, instruction=instruction, query_text=query,
                                        target_text=target), max_tokens=64)
        text = r.choices[0].message.content
        assert isinstance(text, str)
        if split_cot(text) is not None:
            well_formed += 1
        for code in format_problems(text):
            problems[code] = problems.get(code, 0) + 1
    print(f"\nSmolLM2-135M cot_text well-formed: {well_formed}/{len(QUERIES)}; problems: {problems}")
