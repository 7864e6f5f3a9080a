"""The API's input coercion (what TraceEmbedder.encode_queries/encode_candidates call first) opens image paths
through the image gate: a hostile file is a ValueError naming the input and the file, never decoded, never a
hang."""

from __future__ import annotations

import re

import pytest

from tests.pipeline.mbeir.hostile_images import FOLDER, HOSTILE, hostile_root, no_hang
from trainer.modeling.interface import candidate_inputs, query_inputs

WORDS = {"bomb.png": "pixel cap", "fifo.jpg": "not a regular file", "sparse.jpg": "byte cap",
         "cut.jpg": "cannot be decoded"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return hostile_root(tmp_path_factory.mktemp("api"))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_query_image_is_a_value_error_naming_the_input(root, name):
    path = f"{root}/{FOLDER}/{name}"
    queries = [{"text": "bluer", "image": f"{root}/{FOLDER}/ok.jpg", "dataset": "cirr", "task_id": 7},
               {"text": "bluer", "image": path, "dataset": "cirr", "task_id": 7}]
    with pytest.raises(ValueError, match=rf"^query 1: image {re.escape(repr(path))} cannot be read \(.*"
                                         rf"{WORDS[name]}"):
        no_hang(lambda: query_inputs(queries))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_candidate_image_is_a_value_error_naming_the_input(root, name):
    with pytest.raises(ValueError, match=rf"^candidate 0: image .*{re.escape(name)}.* cannot be read"):
        no_hang(lambda: candidate_inputs([{"text": "a shirt", "image": f"{root}/{FOLDER}/{name}"}]))


def test_a_good_image_path_still_opens(root):
    (q,) = query_inputs([{"image": f"{root}/{FOLDER}/ok.jpg", "dataset": "cirr", "task_id": 7}])
    assert q.image.mode == "RGB" and q.image.size == (32, 24)
