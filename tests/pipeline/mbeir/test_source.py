import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub import CommitOperationAdd

from common.errors import ConfigError
from pipeline.mbeir import layout
from pipeline.mbeir.source import DEFAULT_HF_REPO, resolve_root, selection_files, validate_selection
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[3]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_selection():
    files = selection_files("train", ["cirr", "oven"], None)
    assert files == sorted([layout.INSTRUCTIONS, layout.UNION_TRAIN_POOL,
                            "query/train/mbeir_cirr_train.jsonl", "query/train/mbeir_oven_train.jsonl",
                            "qrels/train/mbeir_cirr_train_qrels.txt", "qrels/train/mbeir_oven_train_qrels.txt"])


def test_test_selection_uses_local_pools_and_global_pool_on_request():
    files = selection_files("test", ["mscoco"], [0])
    assert files == sorted([layout.INSTRUCTIONS, "query/test/mbeir_mscoco_task0_test.jsonl",
                            "qrels/test/mbeir_mscoco_task0_test_qrels.txt",
                            "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"])
    assert layout.UNION_TEST_POOL in selection_files("test", ["mscoco"], [0], global_pool=True)
    all_test = selection_files("test")
    assert sum(f.startswith("query/test/") for f in all_test) == 16
    val = selection_files("val", None, [7])
    assert layout.UNION_VAL_POOL in val and "query/val/mbeir_cirr_task7_val.jsonl" in val


@pytest.mark.parametrize("split, datasets, tasks, message", [
    ("dev", None, None, "unknown split 'dev'"),
    ("train", ["coco"], None, "unknown dataset 'coco' in --datasets; known: visualnews"),
    ("train", None, [5], "unknown task id 5"),
    ("test", ["cirr"], [0], "select nothing"),
])
def test_selection_errors(split, datasets, tasks, message):
    with pytest.raises(ConfigError, match=message):
        validate_selection(split, datasets, tasks)


def test_resolve_local_root(sample_root, tmp_path):
    files = selection_files("test", ["cirr"], None)
    assert resolve_root(sample_root, files, images=True, log=pytest.fail) == sample_root
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_root(str(tmp_path / "nowhere"), files)
    with pytest.raises(ConfigError, match="lacks 1 selected file"):
        resolve_root(sample_root, [*files, "query/test/mbeir_cirr_task9_test.jsonl"])
    with pytest.raises(ConfigError):
        resolve_root("", files)
    assert issubclass(ConfigError, ValueError)


def test_resolve_local_root_without_images_warns(tmp_path):
    (tmp_path / "instructions").mkdir()
    (tmp_path / layout.INSTRUCTIONS).write_text("h\n")
    said = []
    resolve_root(str(tmp_path), [layout.INSTRUCTIONS], images=True, log=said.append)
    assert said and "missing_image" in said[0]


@pytest.fixture
def hub(monkeypatch):
    """The test Hub holding dataset repo tester/mbeir with the instructions and the NIGHTS train files."""
    with HubServer(token="hf_test") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        api = huggingface_hub.HfApi(endpoint=server.endpoint, token="hf_test")
        api.create_repo("tester/mbeir", repo_type="dataset")
        files = [*selection_files("train", ["nights"], None), "query/train/mbeir_oven_train.jsonl"]
        api.create_commit("tester/mbeir", repo_type="dataset", commit_message="M-BEIR subset",
                          operations=[CommitOperationAdd(f, f"{f}\n".encode()) for f in files])
        yield server


def test_hf_root_downloads_only_the_selection(hub, tmp_path):
    files = selection_files("train", ["nights"], None)
    local = resolve_root("hf://tester/mbeir@main", files, cache_dir=str(tmp_path))
    got = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
    assert got == files  # the OVEN query file in the repo was not downloaded
    with pytest.raises(ConfigError, match="hf://owner/name"):
        resolve_root("hf://just-a-name", files)


@pytest.mark.parametrize("root, extra, message", [
    ("hf://tester/nothere", [], "no dataset repo tester/nothere on http://127.0.0.1:"),
    ("hf://tester/mbeir@v9", [], "the dataset repo tester/mbeir has no revision 'v9'"),
    ("hf://tester/mbeir", ["query/train/mbeir_cirr_train.jsonl"],
     "hf://tester/mbeir lacks 1 selected file.s.: query/train/mbeir_cirr_train.jsonl; narrow --datasets"),
])
def test_hf_root_problems_are_one_config_error(hub, tmp_path, root, extra, message):
    with pytest.raises(ConfigError, match=message):
        resolve_root(root, [*selection_files("train", ["nights"], None), *extra], cache_dir=str(tmp_path))


def test_unreachable_hub_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConfigError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:.*HF_ENDPOINT"):
        resolve_root(DEFAULT_HF_REPO, [layout.INSTRUCTIONS], cache_dir=str(tmp_path))


def test_pipeline_cli_on_an_unreachable_hub_is_one_line(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--mbeir_root", DEFAULT_HF_REPO, "--output_dir",
                           str(tmp_path / "out"), "--dry_run"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"python -m pipeline: error: --mbeir_root {DEFAULT_HF_REPO}: cannot reach the Hugging Face Hub")


def test_hf_root_with_images_reports_archive_size(monkeypatch, tmp_path):
    class Sibling:
        def __init__(self, name, size):
            self.rfilename, self.size = name, size

    class FakeApi:
        def __init__(self, endpoint=None):
            pass

        def dataset_info(self, repo_id, revision=None, files_metadata=False):
            assert files_metadata
            parts = [Sibling(f"mbeir_images.tar.gz.part-0{i}", 40_000_000_000) for i in range(4)]
            return type("Info", (), {"siblings": [*parts, Sibling("README.md", 10), Sibling(layout.INSTRUCTIONS, 9)]})

    calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(kw) or str(tmp_path))
    said = []
    resolve_root("hf://TIGER-Lab/M-BEIR", [layout.INSTRUCTIONS], images=True, log=said.append)
    assert calls[0]["allow_patterns"] == [layout.INSTRUCTIONS, layout.IMAGE_ARCHIVE_PATTERN]
    assert "4 parts, 160.0 GB" in said[0]
    assert "tar -xzf" in said[1] and os.fspath(tmp_path) in said[1]
