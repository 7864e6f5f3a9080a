"""Shared fixtures. `sample_root`: the mini-M-BEIR sample (pipeline.sample), generated once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path (str) of a read-only-by-convention mini-M-BEIR written with seed 0, scale 1."""
    from pipeline.sample import generate

    root = tmp_path_factory.mktemp("mini_mbeir")
    generate(str(root), seed=0, scale=1)
    return str(root)
