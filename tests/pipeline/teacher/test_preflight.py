"""The teacher preflight: a wrong URL, key or model is a ConfigError within seconds, without paid calls."""

from __future__ import annotations

import socket
import time

import pytest

from common.errors import ConfigError
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.preflight import preflight
from pipeline.teacher.reference.server import ReferenceServer


def _config(base_url: str, model: str = "reference-teacher", **kw) -> TeacherConfig:
    return TeacherConfig(base_url=base_url, model=model, **kw)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_a_listed_model_passes_without_a_chat_call():
    with ReferenceServer() as srv:
        assert preflight(_config(srv.base_url)) == "model listed"
        assert srv.stats()["calls"] == 0


def test_an_unlisted_model_is_settled_by_one_minimal_request():
    with ReferenceServer() as srv:  # answers any model, lists only its own
        assert preflight(_config(srv.base_url, model="alias-the-server-accepts")).startswith("model answered")
        assert srv.stats()["calls"] == 1


def test_nothing_listening_is_a_config_error_within_seconds():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"nothing answers at --teacher_base_url {url}.*start the teacher"):
        preflight(_config(url))
    assert time.monotonic() - start < 10


def test_a_wrong_key_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-wrong")
    with ReferenceServer(api_key="sk-right") as srv:
        with pytest.raises(ConfigError, match=r"refused the API key \(HTTP 401\).*TEACHER_KEY"):
            preflight(_config(srv.base_url, api_key_env="TEACHER_KEY"))
        monkeypatch.setenv("TEACHER_KEY", "sk-right")
        assert preflight(_config(srv.base_url, api_key_env="TEACHER_KEY")) == "model listed"
        assert srv.stats()["calls"] == 0


def test_an_unknown_model_is_a_config_error_listing_the_served_ones():
    with ReferenceServer(models=["served-a", "served-b"]) as srv:
        with pytest.raises(ConfigError, match=r"no model 'gpt-typo' \(HTTP 404\); it lists: served-a, served-b; "
                                              "fix --teacher_model"):
            preflight(_config(srv.base_url, model="gpt-typo"))
        assert srv.stats()["calls"] == 0


def test_a_wrong_path_is_a_config_error_asking_for_v1():
    with ReferenceServer() as srv:
        with pytest.raises(ConfigError, match="end in /v1"):
            preflight(_config(srv.base_url.removesuffix("/v1")))


def test_transient_trouble_is_left_to_the_run():
    with ReferenceServer(forced=["500"]) as srv:
        assert preflight(_config(srv.base_url, model="unlisted")) == "inconclusive (HTTP 500)"
