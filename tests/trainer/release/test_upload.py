"""Publishing a checkpoint to the test Hub (tests/hub_server.py): one commit, the model card, resumable upload,
clear errors, token hygiene, and `TraceEmbedder.from_pretrained(REPO)` giving the local folder's embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from tests.hub_server import HUB_TOKEN
from tests.trainer.benchmark.test_evaluate import BagOfWordsEmbedder, build_root
from trainer.benchmark import evaluate
from trainer.inference.api import TraceEmbedder
from trainer.release import upload

TOKEN = HUB_TOKEN
ROOT = Path(__file__).resolve().parents[3]
QUERIES = [{"text": "Find a picture of a red circle.", "dataset": "mscoco", "task_id": 0},
           {"text": "Make the square blue.", "image": "IMAGE", "dataset": "cirr", "task_id": 7}]
CANDIDATES = [{"text": "a red circle", "modality": "text"}, {"image": "IMAGE"}]
ENCODE = """
import json, sys
from PIL import Image
from trainer import TraceEmbedder
ckpt, queries, cands = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
img = Image.new("RGB", (64, 48), (30, 30, 220))
fill = lambda items: [{**d, **({"image": img} if d.get("image") == "IMAGE" else {})} for d in items]
m = TraceEmbedder.from_pretrained(ckpt, device="cpu")
q = m.encode_queries(fill(queries), max_new_tokens=3)
print(json.dumps({"q": q.embeddings.tolist(), "c": m.encode_candidates(fill(cands)).tolist(), "texts": q.texts}))
"""


def _train_config(ckpt: Path, **extra) -> None:
    (ckpt / "train_config.json").write_text(json.dumps({"data": "out/m-beir-cot", "model": "tiny", "lora_r": 0,
                                                        "lr": 3e-4, "epochs": 8.0, "seed": 0, **extra}))


@pytest.fixture(scope="module")
def full_ckpt(tiny_base, tmp_path_factory) -> Path:
    """A fully fine-tuned tiny checkpoint as trainer.train leaves it, with trainer.evaluate results inside."""
    out = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    ckpt = out / "ckpt"
    TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).save(ckpt)
    _train_config(ckpt)
    (ckpt / "train_log.jsonl").write_text('{"step": 1}\n')
    (ckpt / "checkpoint-1").mkdir()
    (ckpt / "checkpoint-1" / "training_state.pt").write_bytes(b"state")
    root = build_root(out / "mbeir")
    evaluate.main(["--mbeir_root", str(root), "--checkpoint", "unused", "--output_dir", str(ckpt / "eval"),
                   "--pairs", "mscoco_task0", "cirr_task7"], embedder=BagOfWordsEmbedder())
    return ckpt


def _encode(ckpt: str, env: dict | None = None) -> dict:
    run = subprocess.run([sys.executable, "-c", ENCODE, ckpt, json.dumps(QUERIES), json.dumps(CANDIDATES)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_publish_then_from_pretrained_gives_the_local_embeddings(full_ckpt, hub, tmp_path):
    env = hub.env(HF_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    pub = subprocess.run([sys.executable, "-m", "trainer.release", "--checkpoint", str(full_ckpt), "--repo",
                          "tester/trace-tiny"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert pub.returncode == 0, pub.stderr
    assert "checksums verified" in pub.stdout
    commits = hub.commits("tester/trace-tiny", repo_type="model")
    assert [c.title for c in commits][-1] == "initial commit" and len(commits) == 2  # one commit
    files = hub.files("tester/trace-tiny", repo_type="model")
    assert {"README.md", "model.safetensors", "config.json", "trace_config.json", "train_config.json",
            "tokenizer.json", "preprocessor_config.json", "results.json"} <= set(files)
    assert not any(p.startswith("checkpoint-") or p in ("train_log.jsonl",) for p in files)
    assert files["model.safetensors"] == (full_ckpt / "model.safetensors").read_bytes()

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and "TIGER-Lab/M-BEIR" in card.data.datasets
    scores = {r.dataset_config: r.metric_value for r in card.data.eval_results}
    results = json.loads((full_ckpt / "eval" / "results.json").read_text())
    assert scores["cirr_task7"] == round(100 * results["pairs"]["cirr_task7"]["local"]["Recall@5"], 2)
    assert 'TraceEmbedder.from_pretrained("tester/trace-tiny")' in card.text
    assert "| cirr_task7 | (image,text) → image | Recall@5 |" in card.text and "57.3" in card.text  # paper row
    assert "## Routing" in card.text and "| 62 |" in card.text  # paper: CIRR reasons 62 %

    from_hub = _encode("tester/trace-tiny", env)
    local = _encode(str(full_ckpt))
    for key in ("q", "c"):
        cos = (torch.tensor(from_hub[key]) * torch.tensor(local[key])).sum(-1)
        assert float(cos.min()) >= 0.9999
    assert from_hub["texts"] == local["texts"]
    for stream in (pub.stdout, pub.stderr):
        assert TOKEN not in stream
    written = [p for p in [*full_ckpt.rglob("*"), *Path(env["HF_HOME"]).rglob("*")] if p.is_file()]
    assert all(TOKEN.encode() not in p.read_bytes() for p in written)
    assert all(TOKEN.encode() not in blob for blob in files.values())


def test_interrupted_lora_upload_resumes_in_one_commit(tiny_base, tmp_path, hub, capsys):
    """A LoRA checkpoint whose base folder sits inside it: adapter and base weights are two LFS blobs."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_base, ckpt / "tiny_base")
    torch.manual_seed(0)
    TraceEmbedder.from_base(str(ckpt / "tiny_base"), device="cpu", lora_r=4, lora_alpha=8).save(
        ckpt, base_model="tiny_base")
    _train_config(ckpt, lora_r=4)
    hub.fail_blob_puts_after = 1
    assert upload.main(["--checkpoint", str(ckpt), "--repo", "tester/trace-lora"]) == 3
    assert "Rerun the same command to resume" in capsys.readouterr().err
    assert [c.title for c in hub.commits("tester/trace-lora", repo_type="model")] == ["initial commit"]

    hub.fail_blob_puts_after = None
    result = upload.publish_model(ckpt, "tester/trace-lora")
    assert hub.blob_puts == 2 and len(set(hub.uploaded)) == 2  # the blob sent before the failure is not resent
    assert len(hub.commits("tester/trace-lora", repo_type="model")) == 2 and result.deleted == 0
    files = hub.files("tester/trace-lora", repo_type="model")
    assert "adapter/adapter_model.safetensors" in files and "tiny_base/model.safetensors" in files
    assert ModelCard(files["README.md"].decode()).data.library_name == "peft"


def test_errors_are_one_line_and_name_the_fix(full_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert upload.main(["--checkpoint", str(full_ckpt), "--repo", "tester/x"]) == 2
    assert capsys.readouterr().err.strip() == ("python -m trainer.release: error: HF_TOKEN is not set: export a "
                                               "Hugging Face write token as HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert upload.main(["--checkpoint", str(tmp_path), "--repo", "tester/x"]) == 2
    assert "has no trace_config.json" in capsys.readouterr().err
    cfg = json.loads((full_ckpt / "trace_config.json").read_text())
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "trace_config.json").write_text(json.dumps({**cfg, "lora_r": 8, "base_model": str(tmp_path)}))
    with pytest.raises(upload.PublishError, match="pass --base_model"):
        upload.build_release(lora, "tester/x")
    assert upload.main(["--checkpoint", str(full_ckpt), "--repo", "not a repo"]) == 2
    assert "--repo 'not a repo': expected a model repo id owner/name" in capsys.readouterr().err
    assert upload.main(["--checkpoint", str(full_ckpt), "--repo", "tester/x", "--privat"]) == 2
    assert "unknown flag --privat (did you mean --private?)" in capsys.readouterr().err
