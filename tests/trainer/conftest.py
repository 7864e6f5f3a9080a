"""Fixtures for trainer tests: a tiny random Qwen2-VL checkpoint folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random-weight Qwen2-VL checkpoint folder (model, tokenizer, image processor)."""
    from trainer.tiny import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny_base"))
