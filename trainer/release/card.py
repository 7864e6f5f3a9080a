"""The model card (README.md): Hub YAML header (library_name, base_model, datasets, tags, license, model-index
from trainer.benchmark.evaluate's results.json), how the model was trained, its M-BEIR results beside the paper's rows,
routing shares, throughput (from a `trainer.bench --mix` bench.json) and the usage snippet."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.hub import markdown_table
from pipeline.mbeir.layout import DISPLAY_NAMES, TASKS
from trainer.benchmark import paper_results

PAPER = "TRACE: Task-Adaptive Reasoning and Representation Learning for Universal Multimodal Retrieval"
PAPER_URL = "https://arxiv.org/abs/2603.02929"
MBEIR_DATASET = "TIGER-Lab/M-BEIR"
TAGS = ["TRACE", "multimodal-retrieval", "embeddings", "reasoning", "M-BEIR", "qwen2-vl", "sentence-transformers",
        "mteb"]
# Training settings shown on the card, in this order (trainer/training/config.py TrainConfig field names).
TRAIN_FIELDS = ("model", "lora_r", "lora_alpha", "lr", "epochs", "global_batch", "micro_batch", "temperature",
                "ce_weight", "nce_weight", "route_weight", "max_text_tokens", "max_target_tokens", "train_vision",
                "seed")


@dataclass
class CardInputs:
    repo_id: str
    trace_config: Mapping[str, Any]
    train_config: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] | None = None  # trainer.evaluate results.json
    bench: Mapping[str, Any] | None = None  # trainer.bench --mix bench.json
    dataset_repo: str | None = None  # the M-BEIR-CoT dataset on the Hub, when it is there
    base_model: str | None = None  # a Hub id; None for the random-weight tiny model
    license: str = "other"

    @property
    def adapter(self) -> bool:
        return int(self.trace_config.get("lora_r", 0)) > 0


def _task(task_id: int) -> str:
    q, c = TASKS[task_id]
    return f"{q} → {c}".replace("image,text", "(image,text)")


def _pairs(results: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Evaluated pairs in the paper's column order."""
    pairs = (results or {}).get("pairs", {})
    return {p: pairs[p] for p in paper_results.PAIRS if p in pairs}


def eval_results(inputs: CardInputs) -> list:
    """model-index entries: headline recall (percent) per evaluated pair and pool."""
    from huggingface_hub import EvalResult

    out = []
    for name, e in _pairs(inputs.results).items():
        for pool in ("local", "global"):
            if pool not in e:
                continue
            metric = e["headline"]
            out.append(EvalResult(
                task_type="feature-extraction", task_name="Multimodal retrieval (M-BEIR)",
                dataset_type=MBEIR_DATASET, dataset_name=f"M-BEIR {DISPLAY_NAMES[e['dataset']]} {_task(e['task_id'])}",
                dataset_config=name, dataset_split=inputs.results.get("split", "test"), metric_type="recall",
                metric_name=f"{metric} ({pool} pool)", metric_value=round(100 * e[pool][metric], 2)))
    return out


def card_data(inputs: CardInputs):
    from huggingface_hub import ModelCardData

    datasets = [d for d in (inputs.dataset_repo, MBEIR_DATASET) if d]
    return ModelCardData(
        library_name="peft" if inputs.adapter else "transformers", base_model=inputs.base_model,
        datasets=datasets, tags=TAGS, license=inputs.license, pipeline_tag="feature-extraction",
        model_name=inputs.repo_id.split("/")[-1], eval_results=eval_results(inputs) or None)


def _usage(repo_id: str) -> str:
    return f"""## Usage

```python
from trainer import TraceEmbedder   # the `trainer` package of mbeir-cot (pip install it from its repository)

model = TraceEmbedder.from_pretrained("{repo_id}")
q = model.encode_queries([{{"text": "Make the dress red.", "image": "dress.jpg", "dataset": "fashioniq",
                           "task_id": 7}}])   # mode="adaptive" (default), "direct" or "always"
c = model.encode_candidates([{{"text": None, "image": "red_dress.jpg", "modality": "image"}}])
scores = q.embeddings @ c.T                 # L2-normalised: cosine similarity
print(q.reasoned, q.texts)                  # did each query reason, and what it wrote
```

A query's `dataset` (an M-BEIR dataset name) and `task_id` pick the task prompt the model was trained with;
its text should carry the M-BEIR instruction. Queries are encoded route-then-batch: one prefill per query, and
only the queries that choose to reason are decoded.

### sentence-transformers

```python
from sentence_transformers import SentenceTransformer   # needs mbeir-cot installed with its [st] extra

model = SentenceTransformer("{repo_id}", trust_remote_code=True)
q = model.encode_query([{{"text": "Make the dress red.", "image": "dress.jpg"}}],
                       prompt_name="fashioniq_task7")   # an M-BEIR pair name picks the task prompt; direct mode
q = model.encode_query(["Find a picture of a red dress."], prompt_name="fashion200k_task0", mode="adaptive")
c = model.encode_document(["a red dress", {{"image": "red_dress.jpg"}}, {{"text": "red dress", "image": "red_dress.jpg"}}])
scores = model.similarity(q, c)
```

### mteb

```bash
pip install ".[mteb]"   # in a clone of mbeir-cot
python -m trainer.evaluate mteb --checkpoint {repo_id} --tasks CIRRIT2IRetrieval,MSCOCOT2IRetrieval --output_dir out/mteb
```

mteb reports nDCG@10 as its main score; the results below are UniIR's Recall@k. `--mbeir_root PATH` builds the
M-BEIR pairs from a local M-BEIR tree instead of downloading MIEB's copies.
"""


def _training(inputs: CardInputs) -> str:
    t, cfg = inputs.train_config, inputs.trace_config
    method = (f"LoRA r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')} on the language model; projector "
              "trained; vision encoder frozen (PAPER.md §3)" if inputs.adapter
              else "the whole language model fine-tuned (no LoRA)"
              + ("; vision encoder trained" if cfg.get("train_vision") else "; vision encoder frozen"))
    base = f"[`{inputs.base_model}`](https://huggingface.co/{inputs.base_model})" if inputs.base_model else (
        "a random-weight tiny Qwen2-VL (`trainer/modeling/tiny.py`): a pipeline check, not a useful retriever"
        if t.get("model") == "tiny" else f"`{t.get('model', 'unknown')}` (not on the Hub)")
    if inputs.dataset_repo:
        data = (f"[`{inputs.dataset_repo}`](https://huggingface.co/datasets/{inputs.dataset_repo}) "
                "(see its dataset card for how it was built)")
    else:
        data = (f"a local M-BEIR-CoT build (`{t.get('data', 'unknown')}`, its README.md is the dataset card); "
                "it is not on the Hub")
    rows = [[k, f"`{json.dumps(t[k])}`"] for k in TRAIN_FIELDS if k in t]
    out = ["## Training", "", f"- base model: {base}", f"- method: {method}", f"- data: {data}",
           "- loss: CE on the target tokens (reasoning and `<|emb|>`, so routing is learnt) + InfoNCE over "
           "in-batch negatives (PAPER.md §3)", ""]
    if rows:
        out += ["`train_config.json` (all settings are in the file):", "", markdown_table(["setting", "value"], rows), ""]
    return "\n".join(out)


def _results(inputs: CardInputs) -> str:
    pairs = _pairs(inputs.results)
    if not pairs:
        return ("## Results\n\nNot evaluated yet: run `python -m trainer.evaluate --checkpoint DIR --pool both "
                "--output_dir DIR/eval` and publish again.\n")
    pools = [p for p in ("local", "global") if any(p in e for e in pairs.values())]
    header = ["pair", "task", "metric"] + [f"this model ({p})" for p in pools] + [
        f"{m} (paper)" for m in paper_results.LOCAL]
    rows = []
    for name, e in pairs.items():
        rows.append([name, _task(e["task_id"]), e["headline"]]
                    + [f"{100 * e[p][e['headline']]:.1f}" if p in e else "-" for p in pools]
                    + [f"{paper_results.LOCAL[m][name]:.1f}" for m in paper_results.LOCAL])
    n = len(pairs)
    avg = inputs.results.get("average", {})
    rows.append(["average", f"{n} of 16 pairs", ""] + [f"{100 * avg[p]:.1f}" if avg.get(p) is not None else "-"
                                                        for p in pools]
                + [f"{sum(paper_results.LOCAL[m][p] for p in pairs) / n:.1f}" for m in paper_results.LOCAL])
    return "\n".join(["## Results", "", f"M-BEIR {inputs.results.get('split', 'test')} split, UniIR scoring, "
                      "percent. The paper's rows are its local-pool numbers (PAPER.md §4); its averages over all "
                      "16 pairs are " + ", ".join(f"{m} {v}" for m, v in paper_results.LOCAL_AVERAGE.items())
                      + ".", "", markdown_table(header, rows), ""])


def _routing(inputs: CardInputs) -> str:
    pairs = _pairs(inputs.results)
    if not pairs:
        return ""
    rows = []
    for name, e in pairs.items():
        routing = e.get("routing", {})
        paper = paper_results.SHARE_REASONED.get(e["dataset"])
        rows.append([name, f"{100 * routing.get('share_reasoned', 0):.1f}",
                     f"{routing.get('mean_generated_tokens', 0):.1f}", f"{100 * paper:.0f}" if paper is not None
                     else "-"])
    return "\n".join(["## Routing", "", "Share of test queries that chose to reason (adaptive mode).", "",
                      markdown_table(["pair", "reasoned %", "mean generated tokens", "paper reasoned %"], rows), ""])


def _throughput(inputs: CardInputs) -> str:
    bench = inputs.bench
    if not bench or "modes" not in bench:
        return ""
    rows = [[m, f"{r['qps']:.2f}", f"{100 * r['share_reasoned']:.1f}", f"{r['mean_generated_tokens']:.2f}"]
            for m, r in bench["modes"].items()]
    ada = bench["modes"].get("adaptive", {})
    note = (f"Adaptive runs at {ada['ratio_to_direct']:.2f}x direct and {ada['ratio_to_ideal']:.2f}x the ideal "
            "1 / (t_direct + r (t_always - t_direct)). " if "ratio_to_ideal" in ada else "")
    if "ratio_to_parts_ideal" in ada:
        note += (f"Against the cost of its parts (direct for every query, plus what reasoning costs on the queries "
                 f"it reasoned on) it runs at {ada['ratio_to_parts_ideal']:.2f}x. ")
    paper = paper_results.THROUGHPUT
    return "\n".join(["## Throughput", "", f"`python -m trainer.bench --mix {bench['mix']} --queries "
                      f"{bench['queries']}` on {bench.get('device_name', 'unknown')}, batch {bench['batch_size']}. "
                      + note + f"The paper (one H20, MSCOCO): direct {paper['direct']['mscoco'][0]} QPS, "
                      f"adaptive {paper['adaptive']['mscoco'][0]} QPS.", "",
                      markdown_table(["mode", "queries/s", "reasoned %", "mean generated tokens"], rows), ""])


def render_card(inputs: CardInputs, files: Sequence[str] = ()) -> str:
    name = inputs.repo_id.split("/")[-1]
    intro = (f"# {name}\n\nA TRACE reasoning embedder ([{PAPER}]({PAPER_URL})). For each query it either "
             "emits `<|emb|>` at once (simple query) or first writes a short chain of thought and then `<|emb|>` "
             "(complex query); the embedding is the last hidden state of the token before `<|emb|>`. Candidates "
             "never reason.\n")
    body = [intro, _usage(inputs.repo_id), _training(inputs), _results(inputs), _routing(inputs),
            _throughput(inputs)]
    if files:
        body.append("## Files\n\n" + "\n".join(f"- `{f}`" for f in files) + "\n")
    body.append("## License\n\nThe weights follow the base model's license; the training data follows the "
                "licenses of M-BEIR, its source datasets and the terms of the teacher model that wrote the "
                "chains of thought.\n")
    return f"---\n{card_data(inputs).to_yaml()}\n---\n\n" + "\n".join(b for b in body if b)
