"""TraceMtebEncoder: a TRACE checkpoint as mteb's evaluator runs it (mteb's EncoderProtocol, via AbsEncoder).

mteb hands `encode` a DataLoader of batches {"text": [...], "image": [...], ...} and says whose they are:
- prompt_type "query" -> TraceEmbedder.encode_queries (route, then batch; `mode` adaptive | direct | always). The
  query's task prompt comes from the M-BEIR pair the task evaluates (its dataset and task id); any other mteb task
  gets a prompt named after the task, with the task id of its category (t2i -> 0, it2i -> 7, ...). The query text
  is UniIR's: the task's instruction, then the text (a local M-BEIR task's text already carries its own).
- prompt_type "document", or none (classification, clustering, STS) -> encode_candidates; the candidate prompt
  names the modality the item holds (a local task's: the pool line's, as trainer.evaluate reads it).
Images arrive as PIL images, or, from a local M-BEIR task (mteb_tasks.py), as paths under its root read here
(missing or unreadable: counted, the item keeps its text). Both are shrunk to `image_max_side` like
trainer.evaluate's. Embeddings are L2-normalised float32; similarity is cosine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType
from PIL import Image

from pipeline.mbeir import images as mbeir_images
from pipeline.mbeir.instructions import query_text
from trainer.benchmark.evalset import DEFAULT_IMAGE_MAX_SIDE
from trainer.integrations.mteb_tasks import CATEGORY_TASK_IDS, MIEB_TASKS, local_root, pair_of_task
from trainer.modeling.interface import MODES, CandidateInput, Embedder, QueryInput

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

_HELD_TASK = {"text": 1, "image": 3, "image,text": 6}  # a query of an unknown category: its modality -> text


def model_meta(name: str, revision: str | None, mode: str, embedder: Any = None) -> ModelMeta:
    """mteb's record of the model; `mode` is an experiment setting, so adaptive and direct results are kept apart."""
    base = getattr(embedder, "base", None)
    return ModelMeta(
        loader=TraceMtebEncoder, loader_kwargs={"mode": mode}, name=name, revision=revision, release_date=None,
        languages=["eng-Latn"], n_parameters=sum(p.numel() for p in base.parameters()) if base else None,
        memory_usage_mb=None, max_tokens=None,
        embed_dim=base.config.get_text_config().hidden_size if base else None,
        license=None, open_weights=True, public_training_code=None, public_training_data=None,
        framework=["PyTorch", "Transformers"], similarity_fn_name=ScoringFunction.COSINE, use_instructions=True,
        training_datasets=set(MIEB_TASKS),  # TRACE trains on M-BEIR's train splits: MIEB's M-BEIR tasks are in-domain
        modalities=["image", "text"], experiment_kwargs={"mode": mode})


def display_name(checkpoint: str | Path) -> str:
    """An mteb model name: a Hub id as it is, a local folder as trace/<folder name>."""
    path = Path(checkpoint).expanduser()
    return f"trace/{path.resolve().name}" if path.exists() else str(checkpoint)


class TraceMtebEncoder(AbsEncoder):
    def __init__(self, model_name: str, revision: str | None = None, *, device: str | None = None,
                 mode: str = "adaptive", max_new_tokens: int = 128, query_batch: int = 8, cand_batch: int = 32,
                 image_max_side: int = DEFAULT_IMAGE_MAX_SIDE, embedder: Embedder | None = None,
                 meta_name: str | None = None, **kwargs: Any):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        if embedder is None:
            from trainer import TraceEmbedder

            embedder = TraceEmbedder.from_pretrained(model_name, device=device, revision=revision)
        self.model = embedder
        self.mode, self.max_new_tokens, self.image_max_side = mode, max_new_tokens, image_max_side
        self.query_batch, self.cand_batch = query_batch, cand_batch
        self.mteb_model_meta = model_meta(meta_name or display_name(model_name), revision, mode, embedder)
        self.routing: dict[str, Counter] = {}  # task name -> queries, reasoned, generated_tokens
        self.image_failures: Counter = Counter()  # task name -> images that could not be read

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        parts = [self._encode_batch(batch, task_metadata, prompt_type) for batch in inputs]
        return np.concatenate(parts) if parts else np.zeros((0, self.mteb_model_meta.embed_dim or 0), np.float32)

    def _encode_batch(self, batch: dict, meta: TaskMetadata, prompt_type: PromptType | None) -> np.ndarray:
        n = len(next(iter(batch.values())))
        texts = [t if t and t.strip() else None for t in batch.get("text", [None] * n)]
        pics = [self._image(x, meta) for x in batch.get("image", [None] * n)]
        if prompt_type == PromptType.query:
            emb = self._queries(texts, pics, meta)
        else:
            modalities = batch.get("modality") if local_root(meta) else None
            cands = [CandidateInput(t, i, modalities[k] if modalities else _held(t, i) or _doc_modality(meta))
                     for k, (t, i) in enumerate(zip(texts, pics, strict=True))]
            emb = self.model.encode_candidates(cands, batch_size=self.cand_batch)
        return torch.as_tensor(emb).float().cpu().numpy()

    def _queries(self, texts: list, pics: list, meta: TaskMetadata) -> torch.Tensor:
        pair = pair_of_task(meta)
        if local_root(meta) is None:
            instruction = self.get_instruction(meta, PromptType.query)
            texts = [query_text(instruction, t) if instruction else t for t in texts]
        queries = [QueryInput(text, image, *_query_task(meta, pair, text, image))
                   for text, image in zip(texts, pics, strict=True)]
        res = self.model.encode_queries(queries, mode=self.mode, max_new_tokens=self.max_new_tokens,
                                        batch_size=self.query_batch)
        self.routing.setdefault(meta.name, Counter()).update(
            queries=len(queries), reasoned=sum(res.reasoned), generated_tokens=sum(res.generated_tokens))
        return res.embeddings

    def _image(self, item: Any, meta: TaskMetadata) -> Image.Image | None:
        if item is None:
            return None
        if isinstance(item, Image.Image):
            return _shrink(item, self.image_max_side)
        root = local_root(meta)
        if not isinstance(item, str) or root is None:
            raise ValueError(f"{meta.name}: an image must be a PIL image, got {type(item).__name__}")
        try:
            return mbeir_images.load_image(root, item, self.image_max_side)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            self.image_failures[meta.name] += 1
            return None

    def routing_summary(self) -> dict[str, dict]:
        """Per task: queries encoded, the share that reasoned and the mean generated tokens."""
        return {task: {"queries": c["queries"], "share_reasoned": round(c["reasoned"] / c["queries"], 4),
                       "mean_generated_tokens": round(c["generated_tokens"] / c["queries"], 2)}
                for task, c in self.routing.items() if c["queries"]}


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def _query_task(meta: TaskMetadata, pair: str | None, text: str | None, image: Any) -> tuple[str, int]:
    """(dataset, task id) that pick a query's TRACE prompt: its M-BEIR pair's; for another task its name and the
    task id of its category, or (category unknown) of what the query holds, to text."""
    if pair:
        dataset, task_id = pair.rsplit("_task", 1)
        return dataset, int(task_id)
    task_id = CATEGORY_TASK_IDS.get(meta.category or "")
    return meta.name, task_id if task_id is not None else _HELD_TASK[_held(text, image) or "text"]


def _held(text: str | None, image: Any) -> str | None:
    return ",".join(k for k, v in (("image", image), ("text", text)) if v is not None) or None


def _doc_modality(meta: TaskMetadata) -> str:
    """The candidate modality an empty item is encoded as: the task category's document side, else text."""
    side = (meta.category or "").partition("2")[2]
    return {"i": "image", "it": "image,text"}.get(side, "text")
