"""The tiny TRACE checkpoint (tests/trainer/conftest.py) loaded once for the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trace_model(tiny_checkpoint):
    from trainer import TraceEmbedder

    return TraceEmbedder.load(tiny_checkpoint, device="cpu")
