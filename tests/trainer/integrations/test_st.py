"""sentence-transformers: an exported checkpoint folder, and the Hub release, load with
SentenceTransformer(..., trust_remote_code=True); encode_document gives encode_candidates' embeddings and
encode_query(prompt_name=PAIR) gives encode_queries' (direct by default, adaptive by keyword), for text, images
and both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402

from tests.hub_server import HUB_TOKEN  # noqa: E402
from trainer.integrations import st  # noqa: E402
from trainer.release import upload  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["a red circle on a white background", "A news photo of a crowded street.", "two dogs"]
QUERIES = ["Find me an everyday image that matches the given caption: a red circle.", "Show two dogs."]
MIN_COS = 0.9999


def _image(colour=(30, 30, 220), size=(64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _cos(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


@pytest.fixture(scope="module")
def st_folder(tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("st") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    written = st.main(["export", str(folder)])
    assert written == 0
    return folder


@pytest.fixture(scope="module")
def st_model(st_folder) -> SentenceTransformer:
    return SentenceTransformer(str(st_folder), trust_remote_code=True, device="cpu")


def test_export_writes_the_three_files_and_needs_trust_remote_code(st_folder):
    assert {p.name for p in st_folder.iterdir()} >= {"modules.json", "config_sentence_transformers.json",
                                                     st.MODULE_CONFIG}
    config = json.loads((st_folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["mscoco_task0"] == "mscoco_task0" and len(config["prompts"]) == 16
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(st_folder), device="cpu")


def test_documents_equal_encode_candidates(st_model, trace_model):
    docs = [*TEXTS, _image(), {"text": "a blue square", "image": _image((200, 10, 10), (80, 80))}]
    got = st_model.encode_document(docs, convert_to_tensor=True)
    want = trace_model.encode_candidates([{"text": t} for t in TEXTS] + [
        {"image": docs[3]}, docs[4]])
    assert got.shape == want.shape and _cos(got, want) >= MIN_COS
    assert _cos(st_model.encode(TEXTS, convert_to_tensor=True), want[:3]) >= MIN_COS  # no prompt: documents


def test_queries_equal_encode_queries_direct_and_adaptive(st_model, trace_model):
    got = st_model.encode_query(QUERIES, prompt_name="mscoco_task0", convert_to_tensor=True)
    want = trace_model.encode_queries([{"text": q, "dataset": "mscoco", "task_id": 0} for q in QUERIES],
                                      mode="direct").embeddings
    assert _cos(got, want) >= MIN_COS
    other_task = st_model.encode_query(QUERIES, prompt_name="webqa_task1", convert_to_tensor=True)
    assert _cos(other_task, want) < MIN_COS  # the pair name does pick the task prompt
    mixed = [{"text": "Make it red.", "image": _image()}, _image((10, 200, 10))]
    for mode in ("direct", "adaptive"):
        kwargs = {"mode": mode, "max_new_tokens": 3} if mode == "adaptive" else {}
        got = st_model.encode_query(mixed, prompt_name="cirr_task7", convert_to_tensor=True, **kwargs)
        want = trace_model.encode_queries([{"text": "Make it red.", "image": mixed[0]["image"], "dataset": "cirr", "task_id": 7},
                                           {"image": mixed[1], "dataset": "cirr", "task_id": 7}],
                                          mode=mode, max_new_tokens=3).embeddings
        assert _cos(got, want) >= MIN_COS, mode
    routed = st_model.encode_query(QUERIES, prompt_name="mscoco_task0", output_value=None, mode="always",
                                   max_new_tokens=2)
    assert all(bool(r["reasoned"]) for r in routed)


def test_misuse_is_a_clear_error(st_model):
    with pytest.raises(ValueError, match="needs its task: encode_query.*mscoco_task0"):
        st_model.encode_query(QUERIES)
    with pytest.raises(ValueError, match="'coco' is not an M-BEIR pair"):
        st_model.encode_query(QUERIES, prompt="coco")
    with pytest.raises(ValueError, match="candidates take no task prompt"):
        st_model.encode_document(TEXTS, prompt_name="mscoco_task0")
    with pytest.raises(ValueError, match="mode 'sometimes'"):
        st_model.encode_query(QUERIES, prompt_name="mscoco_task0", mode="sometimes")


ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
docs, queries = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({"c": m.encode_document(docs).tolist(),
                  "q": m.encode_query(queries, prompt_name="mscoco_task0").tolist()}))
"""


def test_hub_release_loads_in_sentence_transformers(tiny_checkpoint, trace_model, hub):
    result = upload.publish_model(tiny_checkpoint, "tester/trace-st")
    assert result.commit_oid
    files = hub.files("tester/trace-st", repo_type="model")
    assert json.loads(files["modules.json"])[0]["type"] == st.CLASS_REF
    assert "SentenceTransformer(\"tester/trace-st\", trust_remote_code=True)" in files["README.md"].decode()
    run = subprocess.run([sys.executable, "-c", ENCODE, "tester/trace-st", json.dumps(TEXTS), json.dumps(QUERIES)],
                         env=hub.env(HF_TOKEN=HUB_TOKEN, PYTHONPATH=str(ROOT)), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.splitlines()[-1])
    assert _cos(got["c"], trace_model.encode_candidates([{"text": t} for t in TEXTS])) >= MIN_COS
    want = trace_model.encode_queries([{"text": q, "dataset": "mscoco", "task_id": 0} for q in QUERIES],
                                      mode="direct").embeddings
    assert _cos(got["q"], want) >= MIN_COS
