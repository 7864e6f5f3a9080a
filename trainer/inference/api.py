"""TraceEmbedder, the three-line API: a TraceModel (trainer/modeling/model.py) that encodes queries and candidates,
given as dataclasses or plain dicts (trainer/modeling/interface.py), through the route-then-batch engine
(trainer/inference/engine.py). Implements trainer.modeling.interface.Embedder.

    from trainer import TraceEmbedder
    model = TraceEmbedder.from_pretrained("user/trace-2b")   # a Hub model id or a local checkpoint folder
    q = model.encode_queries([{"text": "...", "image": "cat.jpg", "dataset": "cirr", "task_id": 7}])
    c = model.encode_candidates([{"text": "...", "image": None, "modality": "text"}])   # q.embeddings @ c.T
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from trainer.inference.engine import QueryEngine, encode_candidates
from trainer.modeling.interface import (
    CANDIDATE_BATCH,
    MAX_NEW_TOKENS,
    QUERY_BATCH,
    CandidateInput,
    EncodeResult,
    QueryInput,
    candidate_inputs,
    query_inputs,
)
from trainer.modeling.model import TraceModel

# The dict-to-input coercion lives beside the input types (trainer/modeling/interface.py); its names stay here too.
__all__ = ["TraceEmbedder"]


class TraceEmbedder(TraceModel):
    def encode_candidates(self, candidates: Sequence[CandidateInput | Mapping],
                          batch_size: int = CANDIDATE_BATCH) -> torch.Tensor:
        """(n, d) L2-normalised candidate embeddings, in input order (trainer/inference/engine.py). Candidates are
        CandidateInput or dicts {"text", "image" (PIL image, path or None), "modality"}."""
        return encode_candidates(self, candidate_inputs(candidates), batch_size)

    def encode_queries(self, queries: Sequence[QueryInput | Mapping], mode: str = "adaptive",
                       max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = QUERY_BATCH) -> EncodeResult:
        """Route, then batch (trainer/inference/engine.py). Queries are QueryInput or dicts {"text", "image"
        (PIL image, path or None), "dataset", "task_id"}."""
        engine = QueryEngine(self, mode, max_new_tokens, batch_size)
        return engine.run(query_inputs(queries))
