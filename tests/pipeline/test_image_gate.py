"""The pipeline's rooms open images through the image gate: the read-time check (CheckQueryImages) and the
teacher request builder reject the record with the gate's code, --embed_images refuses the file, and nothing
blocks on a FIFO or reads a 2 GiB file."""

from __future__ import annotations

import dataclasses
import functools

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.mbeir import images, reasons
from pipeline.mbeir.image_gate import ImageRejected
from pipeline.rows import to_row
from pipeline.stages.read import CheckQueryImages
from pipeline.stages.teacher import BuildRequests
from pipeline.teacher.prompting import build_cot_request
from tests.pipeline.mbeir.hostile_images import FOLDER, HOSTILE, hostile_root, no_hang
from tests.pipeline.teacher.conftest import make_example

NAMES = ["ok.jpg", *sorted(HOSTILE)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return hostile_root(tmp_path_factory.mktemp("gate"))


def _example(name: str, n: int):
    ex = make_example(query_img=f"{FOLDER}/{name}", target_img=f"{FOLDER}/ok.jpg")
    return dataclasses.replace(ex, query=dataclasses.replace(ex.query, qid=f"8:{n}"))


def _run_rejects(transform: beam.PTransform, expected: list[tuple[str, str]]) -> None:
    """Runs `transform` over one example per NAMES file; its rejects must be `expected` (reason, qid)."""
    def run():
        with beam.Pipeline(runner="FnApiRunner") as p:
            _, rejects = (p | beam.Create([_example(name, n) for n, name in enumerate(NAMES)]) | transform)
            assert_that(rejects | beam.Map(lambda r: (r.reason, r.qid)), equal_to(expected))
    no_hang(run, seconds=120)


def _expected() -> list[tuple[str, str]]:
    return [(HOSTILE[name], f"8:{n}") for n, name in enumerate(NAMES) if name in HOSTILE]


@pytest.mark.parametrize("mode", ["decode", "exists"])
def test_inspect_image_gives_the_gates_code_in_each_mode(root, mode):
    for name in NAMES:
        got = no_hang(lambda n=name: images.check_image(root, f"{FOLDER}/{n}", mode=mode))
        # "exists" reads nothing: it refuses what a stat shows (a FIFO, a file over the byte cap)
        want = HOSTILE.get(name) if mode == "decode" or name in ("fifo.jpg", "sparse.jpg") else None
        assert got == want, name


def test_the_read_time_check_rejects_each_hostile_query_image(root):
    _run_rejects(CheckQueryImages(root, "decode"), _expected())


def test_the_teacher_request_builder_rejects_each_hostile_image(root):
    builder = functools.partial(build_cot_request, model="m", params={}, image_loader=images.ImageLoader(root))
    _run_rejects(BuildRequests(builder, "cot"), _expected())


def test_embed_images_reads_through_the_gate(root):
    """Embedding copies bytes (the read-time check decoded them): what a read alone shows is refused there."""
    assert to_row(_example("ok.jpg", 0), embed_images_root=root)["query_image"]["bytes"][:2] == b"\xff\xd8"
    for name in ("fifo.jpg", "sparse.jpg"):
        with pytest.raises(ImageRejected) as caught:
            no_hang(lambda n=name: to_row(_example(n, 0), embed_images_root=root))
        assert caught.value.reason == HOSTILE[name]
    with pytest.raises(ImageRejected) as caught:
        images.read_image_bytes(root, f"{FOLDER}/gone.jpg")
    assert caught.value.reason == reasons.MISSING_IMAGE
