"""Publishing to the test Hub (tests/hub_server.py): errors, one commit, resumable upload, PRs, token hygiene."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import publish, shards
from pipeline.card import write_card
from tests.hub_server import HUB_TOKEN
from tests.pipeline.card.test_card import RUN_INFO, make_stats
from tests.pipeline.test_shards import sample_rows, write_dataset

TOKEN = HUB_TOKEN
ROOT = Path(__file__).resolve().parents[2]


def make_output(out: Path, n_rows: int = 12, n_shards: int = 3, card: bool = True) -> list[dict]:
    """What the pipeline's emit stage leaves: data/, manifest.json, stats.json and (optionally) the card."""
    rows = sample_rows(n_rows)
    write_dataset(out, rows, n=n_shards)
    shards.write_json(str(out / "stats.json"), make_stats(rows))
    if card:
        write_card(str(out), make_stats(rows), {**RUN_INFO, "repo_id": "tester/cot"}, rows)
    return rows


def test_missing_token_is_a_clear_error(tmp_path, monkeypatch, capsys):
    make_output(tmp_path, 4, 1, card=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(publish.PublishError, match="HF_TOKEN"):
        publish.publish(str(tmp_path), "tester/cot")
    assert publish.main(["--repo", "tester/cot", "--output_dir", str(tmp_path)]) == 2
    assert "HF_TOKEN is not set" in capsys.readouterr().err


def test_incomplete_output_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(publish.PublishError, match="no data/"):
        publish.publish(str(tmp_path), "tester/cot")
    make_output(tmp_path, 4, 1, card=False)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(publish.PublishError, match="no manifest.json"):
        publish.publish(str(tmp_path), "tester/cot")


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_output(tmp_path / "out", 4, 1, card=False)
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    cases = [
        (["--repo", "cot", "--output_dir", str(tmp_path / "out")], 2, "--repo 'cot': expected a dataset repo id"),
        (["--repo", "tester/cot", "--output_dir", str(tmp_path / "gone")], 2, f"--output_dir {tmp_path / 'gone'} "
                                                                                "does not exist"),
        (["--repo", "tester/cot", "--output", str(tmp_path)], 2, "unknown flag --output (did you mean --output_dir?)"),
        (["--repo", "tester/cot", "--output_dir", str(tmp_path / "out")], 3, "upload failed: "),
    ]
    for argv, status, message in cases:
        assert publish.main(argv) == status
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("python -m pipeline.publish: ") and message in err, err


def test_rejects_are_uploaded_only_on_request(tmp_path):
    make_output(tmp_path, 4, 1, card=False)
    (tmp_path / "rejects").mkdir()
    (tmp_path / "rejects" / "train-00000-of-00001.parquet").write_bytes(b"x")
    assert "rejects/train-00000-of-00001.parquet" not in publish.collect_files(str(tmp_path))
    files = publish.collect_files(str(tmp_path), include_rejects=True)
    assert "rejects/train-00000-of-00001.parquet" in files
    assert set(files) == {"manifest.json", "stats.json", "data/train-00000-of-00001.parquet",
                          "rejects/train-00000-of-00001.parquet"}


def test_cli_upload_then_datasets_loads_same_rows_and_token_never_leaks(tmp_path, hub):
    out = tmp_path / "out"
    rows = make_output(out)
    env = hub.env(HF_TOKEN=TOKEN)
    pub = subprocess.run([sys.executable, "-m", "pipeline.publish", "--repo", "tester/cot", "--output_dir",
                          str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert pub.returncode == 0, pub.stderr
    assert "manifest checksums verified" in pub.stdout
    commits = hub.commits("tester/cot")
    assert [c.title for c in commits][-1] == "initial commit" and len(commits) == 2
    assert set(hub.files("tester/cot")) >= {"README.md", "manifest.json", "plots/lengths.png",
                                            "data/train-00000-of-00003.parquet"}
    code = ("import datasets, json; ds = datasets.load_dataset('tester/cot', split='train'); "
            "print(json.dumps(ds.to_list()))")
    load = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert load.returncode == 0, load.stderr
    assert json.loads(load.stdout.splitlines()[-1]) == rows
    assert "Ignoring part of dataset_info" not in load.stderr  # the card's YAML is read as valid
    for stream in (pub.stdout, pub.stderr, load.stdout, load.stderr):
        assert TOKEN not in stream
    written = [p for p in [*out.rglob("*"), *Path(env["HF_HOME"]).rglob("*")] if p.is_file()]
    assert all(TOKEN.encode() not in p.read_bytes() for p in written)
    assert all(TOKEN.encode() not in blob for blob in hub.files("tester/cot").values())


def test_interrupted_upload_resumes_without_resending_blobs_in_one_commit(tmp_path, hub, capsys):
    out = tmp_path / "out"
    make_output(out)  # 3 shards + 3 plots = 6 LFS blobs
    hub.fail_blob_puts_after = 2
    assert publish.main(["--repo", "tester/cot", "--output_dir", str(out)]) == 3  # an output error
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it: huggingface_hub's progress bars
    assert "Traceback" not in err and last.startswith("python -m pipeline.publish: output error: upload failed: ")
    assert "Rerun the same command to resume" in last
    assert hub.blob_puts == 2
    assert [c.title for c in hub.commits("tester/cot")] == ["initial commit"]  # nothing half-visible

    hub.fail_blob_puts_after = None
    result = publish.publish(str(out), "tester/cot")
    assert hub.blob_puts == 6 and len(set(hub.uploaded)) == 6  # only the 4 missing blobs were sent
    commits = hub.commits("tester/cot")
    assert len(commits) == 2 and commits[0].oid == result.commit_oid
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hub.files("tester/cot")[f["path"]] == (out / f["path"]).read_bytes()


def test_republish_replaces_stale_shards_and_pr_leaves_main_alone(tmp_path, hub):
    out = tmp_path / "out"
    make_output(out, 12, 3)
    publish.publish(str(out), "tester/cot")
    for old in (out / "data").iterdir():
        old.unlink()
    make_output(out, 8, 2, card=False)
    result = publish.publish(str(out), "tester/cot")
    data = sorted(p for p in hub.files("tester/cot") if p.startswith("data/"))
    assert data == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert result.deleted == 3 and len(hub.commits("tester/cot")) == 3

    main_before = hub.commits("tester/cot")[0].oid
    pr = publish.publish(str(out), "tester/cot", create_pr=True, commit_message="Rebuild")
    assert pr.pr_url and pr.pr_url.endswith("/discussions/1")
    assert hub.commits("tester/cot")[0].oid == main_before
    assert hub.commits("tester/cot", revision="refs/pr/1")[0].title == "Rebuild"
