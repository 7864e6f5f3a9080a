"""protocol.Teacher: the in-process and the process client take the same calls, so a stage holds either."""

import inspect

import pytest

from pipeline.mbeir import reasons
from pipeline.mbeir.images import ImageLoader
from pipeline.teacher.client import TeacherClient
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.process import ProcessClient
from pipeline.teacher.prompting import build_cot_request
from pipeline.teacher.protocol import Teacher
from pipeline.teacher.reference.server import ReferenceServer

from .conftest import make_example, png_bytes


@pytest.mark.parametrize("client", [TeacherClient, ProcessClient])
@pytest.mark.parametrize("method", ["submit", "flush", "close"])
def test_both_clients_have_the_protocols_signatures(client, method):
    def shape(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert shape(getattr(client, method)) == shape(getattr(Teacher, method))
    assert isinstance(inspect.getattr_static(client, "closed"), property)


def test_the_in_process_client_encodes_images_at_submit_and_never_sends_a_lost_one(tmp_path):
    folder = tmp_path / "root" / "mbeir_images" / "cirr_images"
    folder.mkdir(parents=True)
    for name in ("ref.png", "tgt.png", "gone.png"):
        (folder / name).write_bytes(png_bytes(size=(64, 48)))
    loader = ImageLoader(str(tmp_path / "root"))
    build = {"model": "gpt-4o-mini", "params": {"max_tokens": 300}, "image_loader": loader, "defer_images": True}
    kept = build_cot_request(make_example(query_txt="kept"), **build)
    lost = build_cot_request(make_example(query_txt="lost", query_img="mbeir_images/cirr_images/gone.png"), **build)
    (folder / "gone.png").unlink()  # gone between the request and the call
    with ReferenceServer() as srv:
        with TeacherClient(TeacherConfig(srv.base_url, "gpt-4o-mini", timeout_s=5.0)) as client:
            ok, failed = (client.submit(r, loader).result(timeout=30) for r in (kept, lost))
        assert srv.stats()["calls"] == 1
    assert ok.ok and ok.attempts == 1
    assert not failed.ok and failed.error == reasons.MISSING_IMAGE and failed.attempts == 0
