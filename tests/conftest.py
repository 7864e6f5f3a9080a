"""Shared fixtures. `sample_root`: the mini-M-BEIR sample (pipeline.sample), generated once per session; `hub`: a
local Hub-compatible server (tests/hub_server.py) that huggingface_hub talks to, with HF_TOKEN = HUB_TOKEN."""

from __future__ import annotations

import pytest

from tests.hub_server import HUB_TOKEN, HubServer


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path (str) of a read-only-by-convention mini-M-BEIR written with seed 0, scale 1."""
    from pipeline.sample import generate

    root = tmp_path_factory.mktemp("mini_mbeir")
    generate(str(root), seed=0, scale=1)
    return str(root)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    with HubServer(token=HUB_TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield server
