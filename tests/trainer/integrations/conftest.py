"""A fully fine-tuned tiny TRACE checkpoint (random weights, lora_r=0) and that checkpoint loaded, shared by the
integration tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def trace_ckpt(tiny_base, tmp_path_factory):
    from trainer import TraceEmbedder

    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("integrations") / "ckpt"
    TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).save(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def trace_model(trace_ckpt):
    from trainer import TraceEmbedder

    return TraceEmbedder.load(trace_ckpt, device="cpu")
