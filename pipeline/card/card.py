"""The dataset card: README.md (Hub YAML header + how the data was built + count tables) and plots/*.png.

`write_card(output_dir, stats, run_info, examples)`. `stats` is the integrator's stats.json. `run_info` keys
(all optional; missing ones print as "unknown"):
  teacher_model, teacher_is_reference (bool), prompts ({id: sha} or [{"id", "sha"}]), generation_params (dict),
  filters ({name: threshold}), routing_mode, pipeline_version, command, license (Hub license id, default
  "other"), license_note, pretty_name, embed_images (bool),
  lengths ({"reasoning": [words per row], "answer": [...]}; default: computed from `examples`),
  repo_id (shown in the loading snippet), download_size (default: from manifest.json when present),
  num_bytes (Arrow size of the split; `datasets` requires the field, 0 when unknown).
`examples`: a few M-BEIR-CoT rows; the card shows the first one of each task (query -> candidate modality).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems
from huggingface_hub import DatasetCardData

from common.hub import markdown_table
from common.redact import redact
from pipeline import shards
from pipeline.card import plots
from pipeline.mbeir import reasons as input_reasons
from pipeline.mbeir.layout import DISPLAY_NAMES
from validators.reasons import REASONS as RULE_REASONS

# What each rejection code means: M-BEIR input and pipeline codes, then the validators' rule codes.
REASON_MEANINGS: dict[str, str] = {**input_reasons.DESCRIPTIONS, **RULE_REASONS}

DEFAULT_LICENSE_NOTE = (
    "The queries, candidates and images follow the upstream licenses of M-BEIR and of each of its source "
    "datasets (VisualNews, Fashion200K, WebQA, EDIS, NIGHTS, OVEN, InfoSeek, FashionIQ, CIRR, MSCOCO). "
    "The generated reasoning and answers are additionally subject to the terms of use of the teacher model "
    "that wrote them."
)
TASK_CATEGORIES = ["text-retrieval", "image-to-text", "text-to-image", "image-text-to-text"]
TAGS = ["multimodal retrieval", "chain-of-thought", "M-BEIR", "TRACE"]
PLOTS = {"lengths": "plots/lengths.png", "fates": "plots/fates_per_dataset.png",
         "routes": "plots/routes_per_dataset.png"}
EXAMPLE_FIELDS = ("id", "instruction", "query_txt", "query_img_path", "pos_txt", "pos_img_path", "route",
                  "reasoning", "answer", "target")
EXAMPLE_CHARS = 400


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _total(value: Any) -> int:
    return sum(value.values()) if isinstance(value, Mapping) else int(value or 0)


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _cell(value: Any, limit: int = EXAMPLE_CHARS) -> str:
    text = "null" if value is None else str(value)
    text = text if len(text) <= limit else text[:limit] + " ..."
    return text.replace("|", "\\|").replace("\n", " ")


def card_data(stats: Mapping[str, Any], run_info: Mapping[str, Any]) -> DatasetCardData:
    """The YAML header: configs, dataset_info (features from the row schema), license, tasks, tags."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    n_rows = _total(stats.get("accepted", 0))
    license_id = run_info.get("license", "other")
    extra = {"license_name": "m-beir-upstream-and-teacher-terms"} if license_id == "other" else {}
    data = DatasetCardData(
        pretty_name=run_info.get("pretty_name", "M-BEIR-CoT"), license=license_id, language=["en"],
        task_categories=TASK_CATEGORIES, tags=TAGS, size_categories=[_size_category(n_rows)],
        configs=[{"config_name": "default", "default": True,
                  "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        **extra,
    )
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_examples=n_rows, num_bytes=int(run_info.get("num_bytes", 0))))
    info = DatasetInfo(features=shards.row_features(bool(run_info.get("embed_images", False))), splits=splits)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    if "download_size" in run_info:
        data["dataset_info"]["download_size"] = int(run_info["download_size"])
    return data


def _build_section(run_info: Mapping[str, Any]) -> str:
    prompts = run_info.get("prompts") or {}
    if isinstance(prompts, Mapping):
        prompts = [{"id": k, "sha": v} for k, v in prompts.items()]
    params = run_info.get("generation_params") or {}
    filters = run_info.get("filters") or {}
    rows = [
        ["teacher model", f"`{redact(str(run_info.get('teacher_model', 'unknown')))}`"],
        ["offline reference teacher", "yes" if run_info.get("teacher_is_reference") else "no"],
        ["routing mode", run_info.get("routing_mode", "unknown")],
        ["pipeline version", run_info.get("pipeline_version", shards.package_version())],
        ["command line", f"`{redact(str(run_info.get('command', 'unknown')))}`"],  # a URL's password, a key
        ["images embedded", "yes" if run_info.get("embed_images") else "no (paths relative to the M-BEIR root)"],
    ]
    out = ["## How it was built", "", markdown_table(["setting", "value"], rows), ""]
    out += ["### Prompts", "", markdown_table(["prompt id", "sha256"], [[p["id"], f"`{p['sha']}`"] for p in prompts])
            if prompts else "unknown", ""]
    out += ["### Generation parameters", "",
            markdown_table(["parameter", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in sorted(params.items())])
            if params else "unknown", ""]
    out += ["### Filters and thresholds", "",
            markdown_table(["filter", "threshold / setting"], [[k, f"`{json.dumps(v)}`"] for k, v in sorted(filters.items())])
            if filters else "unknown", ""]
    return "\n".join(out)


def _counts_section(stats: Mapping[str, Any]) -> str:
    total_in = int(stats.get("input", 0))
    routed, accepted = stats.get("routed", {}), stats.get("accepted", {})
    out = ["## Counts", "", f"Every input query has exactly one fate: {total_in} read = "
           f"{_total(accepted)} accepted + {_total(stats.get('rejected', {}))} rejected + "
           f"{_total(stats.get('failed', {}))} failed.", ""]
    out += [markdown_table(["route", "routed", "accepted"],
                   [[r, routed.get(r, 0), accepted.get(r, 0) if isinstance(accepted, Mapping) else "-"]
                    for r in ("direct", "reasoning")]), ""]
    per = stats.get("per_dataset", {})
    has_routes = any("routed" in v for v in per.values())
    header = ["dataset", "input", "accepted", "rejected", "failed", "accepted share"]
    header += ["direct", "reasoning"] if has_routes else []
    rows = []
    for name in sorted(per):
        v = per[name]
        row = [DISPLAY_NAMES.get(name, name), v.get("input", 0), v.get("accepted", 0), v.get("rejected", 0),
               v.get("failed", 0), _pct(int(v.get("accepted", 0)), int(v.get("input", 0)))]
        if has_routes:
            row += [v["routed"].get(r, 0) if "routed" in v else "-" for r in ("direct", "reasoning")]
        rows.append(row)
    out += ["### Per dataset", "", markdown_table(header, rows) if rows else "no per-dataset counts", ""]
    for title, key in (("Rejection reasons", "rejected"), ("Failures", "failed")):
        codes = stats.get(key, {})
        n = _total(codes)
        ranked = sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))
        if key == "rejected":
            table = markdown_table(["code", "rows", f"share of {key}", "meaning"],
                           [[f"`{c}`", k, _pct(k, n), _cell(REASON_MEANINGS.get(c, ""))] for c, k in ranked])
        else:
            table = markdown_table(["code", "rows", f"share of {key}"], [[f"`{c}`", k, _pct(k, n)] for c, k in ranked])
        out += [f"### {title}", "", table if codes else "none", ""]
    return "\n".join(out)


def _usage_section(stats: Mapping[str, Any]) -> str:
    t = stats.get("teacher", {})
    keys = ("requests", "journal_hits", "retries", "prompt_tokens", "completion_tokens")
    rows = [[k.replace("_", " "), f"{int(t.get(k, 0)):,}"] for k in keys]
    rows.append(["cost (USD)", f"{float(t.get('cost_usd', 0.0)):.4f}"])
    return "\n".join(["## Teacher usage and cost", "",
                      "Journal hits are responses replayed from the response journal (not paid again).", "",
                      markdown_table(["quantity", "value"], rows), ""])


def _examples_section(examples: list[Mapping[str, Any]]) -> str:
    seen: dict[Any, Mapping[str, Any]] = {}
    for row in examples:
        seen.setdefault(row.get("task_id"), row)
    out = ["## Example rows", ""]
    for task in sorted(seen, key=lambda t: (t is None, t)):
        row = seen[task]
        out += [f"### Task {task}: {row.get('query_modality')} → {row.get('cand_modality')} "
                f"({DISPLAY_NAMES.get(row.get('dataset'), row.get('dataset'))})", "",
                markdown_table(["field", "value"], [[f, _cell(row.get(f))] for f in EXAMPLE_FIELDS]), ""]
    return "\n".join(out) if seen else "## Example rows\n\nnone\n"


def _lengths(run_info: Mapping[str, Any], examples: list[Mapping[str, Any]]) -> dict[str, list[int]]:
    if run_info.get("lengths"):
        return {k: [int(x) for x in v] for k, v in run_info["lengths"].items()}
    rows = [r for r in examples if r.get("route") == "reasoning"]
    return {f: [len(str(r.get(f) or "").split()) for r in rows] for f in ("reasoning", "answer")}


def render_card(stats: Mapping[str, Any], run_info: Mapping[str, Any], examples: list[Mapping[str, Any]],
                plot_paths: Mapping[str, str]) -> str:
    """README.md text (YAML header + body) linking the given plots (relative paths)."""
    title = run_info.get("pretty_name", "M-BEIR-CoT")
    out = [f"# {title}", ""]
    if run_info.get("teacher_is_reference"):
        out += ["> [!WARNING]",
                "> **Built with the offline reference teacher, not a real LLM.** The reasoning and answers in "
                "this dataset are placeholders produced by the pipeline's deterministic test teacher. Do not "
                "train or evaluate on them.", ""]
    out += [
        "M-BEIR training queries, each labelled *direct* (embed the query as is) or *reasoning* (the query needs "
        "a chain of thought before it is embedded). Reasoning rows carry a teacher-written chain of thought "
        "(`reasoning`) and a short `answer` that passed the filters listed below; "
        "`target` is the student's training target, ending in `<|emb|>`. This is the training data of TRACE "
        "reasoning embedders.", "",
        "```python", "from datasets import load_dataset", "",
        f'ds = load_dataset("{run_info.get("repo_id", "<user>/<repo>")}", split="train")', "```", "",
        _build_section(run_info), _counts_section(stats), _usage_section(stats), "## Plots", "",
    ]
    captions = {"lengths": "Length of reasoning and answers (words)",
                "fates": "Accepted, rejected and failed share per dataset",
                "routes": "Direct vs reasoning share of accepted rows per dataset"}
    out += [f"![{captions[k]}]({p})\n" for k, p in plot_paths.items()]
    out += [_examples_section(examples), "## License", "",
            run_info.get("license_note", DEFAULT_LICENSE_NOTE), ""]
    return f"---\n{card_data(stats, run_info).to_yaml()}\n---\n\n" + "\n".join(out)


def write_card(output_dir: str, stats: dict, run_info: dict, examples: list[dict]) -> None:
    """Write README.md and plots/*.png into output_dir (any Beam FileSystems path). When manifest.json is
    already there, the YAML's download_size is the total bytes of its data/ files."""
    manifest_path = FileSystems.join(output_dir, "manifest.json")
    if "download_size" not in run_info and FileSystems.exists(manifest_path):
        files = shards.read_json(manifest_path).get("files", [])
        run_info = {**run_info, "download_size": sum(f["bytes"] for f in files if f["path"].startswith("data/"))}
    per = stats.get("per_dataset", {})
    images = {"lengths": plots.length_histograms(_lengths(run_info, examples))}
    if per:
        images["fates"] = plots.fate_shares(per)
    routes = {k: v["routed"] for k, v in per.items() if "routed" in v}
    if routes:
        images["routes"] = plots.route_shares(routes)
    for key, png in images.items():
        shards.write_bytes(FileSystems.join(output_dir, PLOTS[key]), png)
    text = render_card(stats, run_info, examples, {k: PLOTS[k] for k in images})
    shards.write_bytes(FileSystems.join(output_dir, "README.md"), text.encode("utf-8"))
