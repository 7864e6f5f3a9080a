"""The three-line API: `from trainer import TraceEmbedder`, from_pretrained on a folder, dict inputs."""

import pytest
import torch
from PIL import Image

from trainer.modeling.interface import CandidateInput, QueryInput


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from trainer import TraceEmbedder

    return TraceEmbedder.from_pretrained(str(tiny_checkpoint), device="cpu")


def test_dicts_with_image_paths_equal_the_dataclasses(model, tmp_path):
    img = Image.new("RGB", (90, 70), (10, 160, 40))
    img.save(tmp_path / "green.png")
    q = model.encode_queries([{"text": "Make it red.", "image": str(tmp_path / "green.png"), "dataset": "cirr",
                               "task_id": 7}, {"text": "A green square.", "dataset": "mscoco", "task_id": 0}],
                             max_new_tokens=3)
    ref = model.encode_queries([QueryInput("Make it red.", img, "cirr", 7), QueryInput("A green square.", None,
                                                                                      "mscoco", 0)],
                               max_new_tokens=3)
    torch.testing.assert_close(q.embeddings, ref.embeddings)
    assert q.texts == ref.texts
    c = model.encode_candidates([{"text": "a green square", "image": None, "modality": "text"},
                                 {"image": img}, {"text": "a photo", "image": tmp_path / "green.png"}])
    ref_c = model.encode_candidates([CandidateInput("a green square", None, "text"),
                                     CandidateInput(None, img, "image"), CandidateInput("a photo", img, "image,text")])
    torch.testing.assert_close(c, ref_c)
    assert (q.embeddings @ c.T).shape == (2, 3)


@pytest.mark.parametrize(("item", "message"), [
    ({"text": "x", "dataset": "cirr", "task_id": 7, "img": "a.jpg"}, r"unknown key\(s\) \['img'\]"),
    ({"text": "x", "dataset": "cirr"}, r"missing key\(s\) \['task_id'\]"),
    ({"text": "x", "dataset": "cirr", "task_id": 5}, "task_id 5 is not an M-BEIR task"),
    ({"text": "x", "image": "/no/such.jpg", "dataset": "cirr", "task_id": 7}, "image '/no/such.jpg' cannot be read"),
    ({"text": "", "dataset": "cirr", "task_id": 7}, "needs a text or an image"),
])
def test_bad_queries_are_value_errors_naming_the_problem(model, item, message):
    with pytest.raises(ValueError, match=message):
        model.encode_queries([{"text": "fine", "dataset": "mscoco", "task_id": 0}, item])


@pytest.mark.parametrize(("item", "message"), [
    ({"text": "x", "modality": "txt"}, "candidate 0: modality 'txt' is not one of"),
    ({"text": "x", "modality": "image"}, r"modality 'image' does not match what it holds \(text\)"),
    ({"text": "x", "kind": "text"}, r"unknown key\(s\) \['kind'\]"),
    ({"text": "x", "image": 3}, "image must be a PIL image, a path or None, got int"),
])
def test_bad_candidates_are_value_errors_naming_the_problem(model, item, message):
    with pytest.raises(ValueError, match=message):
        model.encode_candidates([item])


def test_from_pretrained_names_what_is_not_a_checkpoint(tmp_path):
    from trainer import TraceEmbedder

    with pytest.raises(ValueError, match="has no trace_config.json"):
        TraceEmbedder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a checkpoint folder nor a Hub model id"):
        TraceEmbedder.from_pretrained(str(tmp_path / "missing" / "deeper" / "ckpt"))
