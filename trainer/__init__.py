"""TRACE reasoning embedders: training, evaluation, benchmarks and release.

    from trainer import TraceEmbedder
    model = TraceEmbedder.from_pretrained("user/trace-2b")   # a Hub model id or a local checkpoint folder
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CandidateInput", "EncodeResult", "QueryInput", "TraceEmbedder"]

if TYPE_CHECKING:
    from trainer.inference.api import TraceEmbedder
    from trainer.modeling.interface import CandidateInput, EncodeResult, QueryInput


def __getattr__(name: str) -> Any:
    """Lazy: `import trainer.benchmark.evaluate` must not pay for importing torch models until one is asked for."""
    if name == "TraceEmbedder":
        from trainer.inference.api import TraceEmbedder

        return TraceEmbedder
    if name in ("CandidateInput", "EncodeResult", "QueryInput"):
        from trainer.modeling import interface

        return getattr(interface, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
