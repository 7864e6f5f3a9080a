"""The output-folder contract every command follows (common/outdir.py)."""

from __future__ import annotations

import json
import time

import pytest

from common.errors import ConfigError
from common.outdir import LOCK, MARKER, claim_output_dir
from tests.common.holder import held_elsewhere, kill

PATTERNS = ("data/*.parquet", "stats.json", "README.md")


def claim(path, **kw):
    return claim_output_dir(path, command=kw.pop("command", "demo"), patterns=kw.pop("patterns", PATTERNS), **kw)


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    with claim(tmp_path / "new") as out:
        assert out.path.endswith("new")
    assert json.loads((tmp_path / "new" / MARKER).read_text()) == {"command": "demo"}
    (tmp_path / "empty").mkdir()
    with claim(tmp_path / "empty"):
        pass


def test_own_earlier_output_is_accepted_and_only_own_files_are_removed(tmp_path):
    with claim(tmp_path) as out:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "train-0.parquet").write_bytes(b"x")
        (tmp_path / "stats.json").write_text("{}")
    (tmp_path / "data" / "my-notes.txt").write_text("mine")  # the user's, written later
    with claim(tmp_path) as out:
        assert out.remove_own("data") == ["data/train-0.parquet"]
    assert (tmp_path / "data" / "my-notes.txt").read_text() == "mine"
    assert (tmp_path / "stats.json").exists()


def test_foreign_folder_is_refused_naming_folder_and_overwrite(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"--output_dir .*thesis\.tex.*--overwrite"):
        with claim(tmp_path):
            pass
    assert not (tmp_path / MARKER).exists()


def test_other_commands_output_is_refused(tmp_path):
    with claim(tmp_path, command="pipeline"):
        pass
    with pytest.raises(ConfigError, match="output of pipeline"):
        with claim(tmp_path, command="trainer.train"):
            pass


def test_overwrite_writes_beside_foreign_files_but_never_replaces_them(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with claim(tmp_path, overwrite=True) as out:
        assert out.remove_own() == []
    assert (tmp_path / "thesis.tex").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("theirs")
    with pytest.raises(ConfigError, match="README.md is in the way"):
        with claim(tmp_path / "other", overwrite=True):
            pass


def test_legacy_output_without_marker_is_own(tmp_path):
    (tmp_path / "stats.json").write_text("{}")
    with claim(tmp_path, legacy=("stats.json",)):
        pass
    (tmp_path / "old" / "journal").mkdir(parents=True)
    (tmp_path / "old" / "journal" / "journal-1.jsonl").write_text("")
    with claim(tmp_path / "old", legacy=("journal/journal-*.jsonl",)):
        pass


def test_second_run_is_refused_at_once_naming_the_holder(tmp_path):
    with claim(tmp_path):
        with pytest.raises(ConfigError, match=r"being written by another run: demo \(pid \d+"):
            with claim(tmp_path):
                pass
    with claim(tmp_path):  # released
        pass


def test_shared_claims_hold_together_and_keep_an_exclusive_one_out(tmp_path):
    with claim(tmp_path, shared=True), claim(tmp_path, shared=True):  # two shard jobs of one run
        with pytest.raises(ConfigError, match="being written by another run: demo"):
            with claim(tmp_path):
                pass
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "demo"
    assert (tmp_path / LOCK).read_text() == ""  # the last one out clears the note
    with claim(tmp_path):
        with pytest.raises(ConfigError, match="being written"):
            with claim(tmp_path, shared=True):
                pass


def test_a_killed_holder_does_not_block_the_rerun(tmp_path):
    with held_elsewhere(tmp_path, "demo") as child:
        with pytest.raises(ConfigError, match=f"being written by another run: demo \\(pid {child.pid} "):
            with claim(tmp_path):
                pass
        kill(child)
        assert (tmp_path / LOCK).read_text()  # the dead holder's note is still there ...
        with claim(tmp_path):  # ... but the kernel dropped its lock
            pass
    assert (tmp_path / LOCK).read_text() == ""


def test_removal_drops_the_empty_folders_it_leaves_and_nothing_else(tmp_path):
    with claim(tmp_path, patterns=("data/*", "_work/*", "stats.json")) as out:
        for rel in ("data/a/b.parquet", "data/c/notes.txt", "_work/x.json", "_work/y/z.json", "keep/stats.json"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("x")
        (tmp_path / "_work" / "moved-away").mkdir()
        (tmp_path / "keep" / "empty").mkdir()
        assert out.remove_own("data") == ["data/a/b.parquet", "data/c/notes.txt"]
        assert out.remove_own("_work") == ["_work/x.json", "_work/y/z.json"]
        (tmp_path / "stats.json").write_text("{}")
        assert out.remove_own() == ["stats.json"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "_work").exists()
    assert (tmp_path / "keep" / "stats.json").exists() and (tmp_path / "keep" / "empty").is_dir()


def test_a_sub_folder_keeps_the_patterns_that_reach_into_it(tmp_path):
    with claim(tmp_path, patterns=("_plan/*", "data/*.parquet", "stats.json")) as out:
        plan = out.sub("_plan")
        assert plan.path == f"{tmp_path}/_plan" and plan.patterns == ("*",)
        assert out.sub("data").patterns == ("*.parquet",) and out.sub("rejects").patterns == ()


def test_object_store_folder_follows_the_same_contract(tmp_path):
    from tests.pipeline import testfs

    with testfs.mounted(str(tmp_path)):
        root = testfs.PREFIX + "bucket/out"
        with claim(root) as out:
            with pytest.raises(ConfigError, match="being written"):
                with claim(root):
                    pass
            out.fs.write_text("stats.json", "{}")
            out.fs.write_text("notes.txt", "mine")
        assert not (tmp_path / "bucket/out" / LOCK).exists()
        with claim(root, patterns=(*PATTERNS, "_work/*")) as out:
            out.fs.write_text("_work/x.json", "{}")
            assert out.remove_own("_work") == ["_work/x.json"]
            assert out.remove_own() == ["stats.json"]
        assert (tmp_path / "bucket/out/notes.txt").exists() and not (tmp_path / "bucket/out/_work").exists()
        lock = tmp_path / "bucket/out" / LOCK
        lock.write_text(json.dumps({"command": "demo", "pid": 1, "expires": time.time() - 1}))
        with claim(root):  # an expired lock is taken over
            pass
