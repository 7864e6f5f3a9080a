"""Fixtures for whole-pipeline runs: the reference teacher over real HTTP and a runner helper."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.teacher.reference.server import ReferenceServer

LIMIT = "6"  # query lines per file: 60 queries over the 10 datasets keep each run to a few seconds


@pytest.fixture()
def teacher():
    with ReferenceServer() as server:
        yield server


def run_pipeline(root: str, out: str, *extra: str, teacher: ReferenceServer | None = None,
                 limit: str | None = LIMIT) -> dict:
    from pipeline.run import run

    argv = ["--mbeir_root", root, "--output_dir", out, *extra]
    if limit:
        argv += ["--limit", limit]
    if teacher is not None:
        argv += ["--teacher_base_url", teacher.base_url, "--teacher_model", "reference-teacher"]
    return run(argv)


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def output_files(out: str) -> dict[str, bytes]:
    """Every file under out (journal excluded: its segment names are per process) -> bytes."""
    files = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, out)
            if not rel.startswith("journal"):
                with open(path, "rb") as f:
                    files[rel] = f.read()
    return files
