import os

import huggingface_hub
import pytest

from pipeline.mbeir import layout
from pipeline.mbeir.errors import ConfigError
from pipeline.mbeir.source import resolve_root, selection_files, validate_selection


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


def test_hf_root_downloads_only_the_selection(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    files = selection_files("train", ["nights"], None)
    assert resolve_root("hf://TIGER-Lab/M-BEIR@abc123", files, cache_dir=str(tmp_path)) == str(tmp_path)
    (repo, kw), = calls
    assert repo == "TIGER-Lab/M-BEIR" and kw["repo_type"] == "dataset" and kw["revision"] == "abc123"
    assert kw["allow_patterns"] == files and kw["endpoint"] == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="hf://owner/name"):
        resolve_root("hf://just-a-name", files)


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
            return type("Info", (), {"siblings": [*parts, Sibling("README.md", 10)]})

    calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(kw) or str(tmp_path))
    said = []
    resolve_root("hf://TIGER-Lab/M-BEIR", [layout.INSTRUCTIONS], images=True, log=said.append)
    assert calls[0]["allow_patterns"] == [layout.INSTRUCTIONS, layout.IMAGE_ARCHIVE_PATTERN]
    assert "4 parts, 160.0 GB" in said[0]
    assert "tar -xzf" in said[1] and os.fspath(tmp_path) in said[1]
