"""Dataset card: YAML header parses on the Hub's own card class, tables and plots are there, datasets loads
the folder (data/ + README.md) with the card's features."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from pipeline import shards
from pipeline.card import write_card
from tests.pipeline.test_shards import sample_rows, write_dataset


def make_stats(rows):
    per = {}
    for r in rows:
        d = per.setdefault(r["dataset"], {"input": 0, "accepted": 0, "rejected": 0, "failed": 0,
                                          "routed": {"direct": 0, "reasoning": 0}})
        d["input"] += 1
        d["accepted"] += 1
        d["routed"][r["route"]] += 1
    per["cirr"]["input"] += 3
    per["cirr"]["rejected"] += 2
    per["cirr"]["failed"] += 1
    routed = {k: sum(v["routed"][k] for v in per.values()) for k in ("direct", "reasoning")}
    return {"input": len(rows) + 3, "routed": routed, "accepted": dict(routed),
            "rejected": {"cot_format": 1, "answer_leak": 1}, "failed": {"teacher_timeout": 1},
            "per_dataset": per,
            "teacher": {"requests": 11, "journal_hits": 4, "retries": 2, "prompt_tokens": 12345,
                        "completion_tokens": 2345, "cost_usd": 0.0421}}


RUN_INFO = {"teacher_model": "gpt-test", "teacher_is_reference": False,
            "prompts": {"teacher_cot": "a1b2c3", "verifier": "d4e5f6"},
            "generation_params": {"temperature": 0.7, "max_tokens": 1024},
            "filters": {"verifier_min_confidence": 0.8, "max_reasoning_words": 300},
            "routing_mode": "dataset", "pipeline_version": "0.1.0",
            "command": "python -m pipeline --output_dir out", "repo_id": "me/mbeir-cot"}


@pytest.fixture(scope="module")
def card_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rows = sample_rows(12)
    write_dataset(out, rows)
    write_card(str(out), make_stats(rows), RUN_INFO, rows)
    return out


def test_yaml_header_parses_and_describes_the_data(card_dir):
    card = DatasetCard((card_dir / "README.md").read_text())
    data = card.data.to_dict()
    assert data["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert {"multimodal retrieval", "chain-of-thought", "M-BEIR", "TRACE"} <= set(data["tags"])
    assert "text-retrieval" in data["task_categories"]
    assert data["license"] == "other" and data["license_name"]
    names = [f["name"] for f in data["dataset_info"]["features"]]
    assert names == shards.row_arrow_schema().names
    assert data["dataset_info"]["splits"] == [{"name": "train", "num_bytes": 0, "num_examples": 12}]
    manifest = json.loads((card_dir / "manifest.json").read_text())
    assert data["dataset_info"]["download_size"] == sum(f["bytes"] for f in manifest["files"])


def test_body_has_build_facts_tables_and_linked_plots(card_dir):
    text = (card_dir / "README.md").read_text()
    for fact in ("gpt-test", "a1b2c3", "d4e5f6", "`0.7`", "verifier_min_confidence", "`0.8`",
                 "python -m pipeline --output_dir out", 'load_dataset("me/mbeir-cot"', "upstream licenses"):
        assert fact in text, fact
    assert "| `cot_format` | 1 | 50.0% |" in text
    assert "| `teacher_timeout` | 1 | 100.0% |" in text
    assert "| CIRR | 6 | 3 | 2 | 1 | 50.0% |" in text
    assert "| completion tokens | 2,345 |" in text and "| cost (USD) | 0.0421 |" in text
    assert "reference teacher" not in text.split("## How it was built")[0]
    for png in ("plots/lengths.png", "plots/fates_per_dataset.png", "plots/routes_per_dataset.png"):
        assert f"]({png})" in text
        with Image.open(card_dir / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    for task in ("Task 1: text → text", "Task 3: image → text", "Task 7: image,text → image",
                 "Task 8: image,text → image,text"):
        assert task in text


def test_reference_teacher_is_announced_first(tmp_path):
    rows = sample_rows(4)
    write_card(str(tmp_path), make_stats(rows), {**RUN_INFO, "teacher_is_reference": True}, rows)
    text = (tmp_path / "README.md").read_text()
    body = text.split("---", 2)[2]
    assert "offline reference teacher" in body.split("## ")[0]
    DatasetCard(text)  # still a valid card


def test_sparse_inputs_still_give_a_card(tmp_path):
    write_card(str(tmp_path), {"input": 0}, {}, [])
    text = (tmp_path / "README.md").read_text()
    assert DatasetCard(text).data.to_dict()["dataset_info"]["splits"] == [{"name": "train", "num_bytes": 0, "num_examples": 0}]
    assert (tmp_path / "plots" / "lengths.png").exists()


@pytest.mark.parametrize("embed_images", [False, True])
def test_datasets_loads_the_output_folder(tmp_path, embed_images):
    import datasets

    rows = sample_rows(8, embed_images)
    out = tmp_path / "out"
    write_dataset(out, rows, embed_images)
    write_card(str(out), make_stats(rows), {**RUN_INFO, "embed_images": embed_images}, rows)
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features == shards.row_features(embed_images)
    assert ds.num_rows == 8
    if not embed_images:
        assert ds.to_list() == rows
    else:
        assert ds[0]["query_image"].size == (4, 3)
