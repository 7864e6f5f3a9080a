"""A real OpenAI-compatible server for integration tests: llama.cpp serving SmolLM2-135M-Instruct.

`llama_base_url` (session scope) builds/installs llama-cpp-python on first use (a clean clone compiles it:
about 17 CPU-minutes, 10-35 min wall on 2 shared cores; cached in .cache/wheels afterwards), starts the server
on a free loopback port and yields "http://127.0.0.1:P/v1" (model name: `LLAMA_MODEL`). The server is
text-only (image parts -> HTTP 500) and answers one request at a time. Tests that need it live in this folder.
Set MBEIR_SKIP_LLAMA=1 to skip them; otherwise a failed build is a test error.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _llama_server_script():
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "scripts" / "llama_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


llama_server = _llama_server_script()
LLAMA_MODEL = llama_server.MODEL_ALIAS


@pytest.fixture(scope="session")
def llama_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("MBEIR_SKIP_LLAMA") == "1":
        pytest.skip("MBEIR_SKIP_LLAMA=1: llama.cpp server tests skipped")
    model = llama_server.ensure()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server.LlamaServer(model, log=log) as base_url:
        yield base_url
