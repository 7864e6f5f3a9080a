"""TraceModule: the whole TRACE embedder as one sentence-transformers input module (trainer/integrations/st.py says
how a checkpoint declares it). preprocess turns inputs into TRACE queries (prompt: an M-BEIR pair name) or
candidates; forward encodes them with TraceEmbedder's public methods, so the embeddings are TraceEmbedder's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.base.modality import infer_modality
from sentence_transformers.base.modules.input_module import InputModule

from trainer.integrations.st import MODULE_CONFIG, PAIRS, check_mode
from trainer.modeling.interface import candidate_inputs, query_inputs

_SIMPLE = ("text", "image")


class TraceModule(InputModule):
    """The whole TRACE embedder as one sentence-transformers input module: preprocess turns inputs into TRACE
    queries or candidates, forward encodes them with TraceEmbedder."""

    config_file_name = MODULE_CONFIG
    config_keys = ["mode", "max_new_tokens", "query_batch", "cand_batch"]
    forward_kwargs = {"mode", "max_new_tokens"}
    save_in_root = True

    def __init__(self, embedder: torch.nn.Module, mode: str = "direct", max_new_tokens: int = 128,
                 query_batch: int = 8, cand_batch: int = 32):
        super().__init__()
        check_mode(mode)
        self.embedder = embedder
        self.mode, self.max_new_tokens, self.query_batch, self.cand_batch = mode, max_new_tokens, query_batch, cand_batch

    @property
    def modalities(self) -> list:
        return ["text", "image", ("image", "text"), "message"]  # "message": batches mixing them

    @property
    def tokenizer(self) -> Any:
        return self.embedder.processor.tokenizer

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> TraceModule:
        from trainer import TraceEmbedder

        hub = dict(token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        folder = cls.load_dir_path(model_name_or_path, subfolder, **hub)
        if folder is None:
            raise ValueError(f"{model_name_or_path!r} is neither a local folder nor a reachable Hub model repo")
        config = cls.load_config(model_name_or_path, subfolder, **hub)
        return cls(TraceEmbedder.load(folder), **config)

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        self.embedder.save(output_path)
        self.save_config(output_path)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, task: str | None = None,
                   **kwargs: Any) -> dict[str, Any]:
        """{"trace_queries": [...]} or {"trace_candidates": [...]}; `prompt` is an M-BEIR pair name."""
        if task == "query" and not prompt:
            raise ValueError(f"a TRACE query needs its task: encode_query(inputs, prompt_name=PAIR), PAIR one of "
                             f"{', '.join(PAIRS)}")
        if task == "document" and prompt:
            raise ValueError(f"TRACE candidates take no task prompt; drop prompt_name/prompt ({prompt!r})")
        items = [self._item(x) for x in inputs]
        if not prompt:
            return {"trace_candidates": candidate_inputs(items)}
        if prompt not in PAIRS:
            raise ValueError(f"prompt {prompt!r} is not an M-BEIR pair; use prompt_name=PAIR, PAIR one of "
                             f"{', '.join(PAIRS)}")
        dataset, task_id = prompt.rsplit("_task", 1)
        return {"trace_queries": query_inputs({**i, "dataset": dataset, "task_id": int(task_id)} for i in items)}

    def _item(self, x: Any) -> dict:
        """{"text", "image"} of one input: a string (text, or an image path sentence-transformers recognises), an
        image, or a dict holding text and/or image."""
        if isinstance(x, dict):
            unknown = set(x) - set(_SIMPLE)
            if unknown:
                raise ValueError(f"TRACE takes text and image inputs; {sorted(unknown)} is not supported")
            return {"text": x.get("text"), "image": x.get("image")}
        kind = infer_modality(x, supported_modalities=list(_SIMPLE))
        if kind not in _SIMPLE:
            raise ValueError(f"TRACE takes text and image inputs, not {kind}")
        return {kind: x}

    def forward(self, features: dict[str, Any], mode: str | None = None, max_new_tokens: int | None = None,
                **kwargs: Any) -> dict[str, Any]:
        if "trace_candidates" in features:
            emb = self.embedder.encode_candidates(features["trace_candidates"], batch_size=self.cand_batch)
            return {"sentence_embedding": emb}
        mode = mode or self.mode
        check_mode(mode)
        res = self.embedder.encode_queries(features["trace_queries"], mode=mode, batch_size=self.query_batch,
                                           max_new_tokens=self.max_new_tokens if max_new_tokens is None
                                           else max_new_tokens)
        return {"sentence_embedding": res.embeddings,
                "reasoned": torch.tensor(res.reasoned or [False] * len(res.embeddings))}
