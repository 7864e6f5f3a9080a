"""ProcessClient: the teacher client in a child process answers as the in-process one does, encodes images
there, and never leaves a caller waiting when the child dies."""

import os
import signal
import subprocess
import sys
import time

from pipeline.mbeir import reasons
from pipeline.mbeir.images import ImageLoader
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.journal import load_journal
from pipeline.teacher.process import CHILD_GONE, ProcessClient
from pipeline.teacher.prompting import build_cot_request
from pipeline.teacher.reference.server import ReferenceServer

from .conftest import make_example, png_bytes

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}


def _config(srv, tmp_path, **kw):
    return TeacherConfig(srv.base_url, "gpt-4o-mini", journal_dir=str(tmp_path / "journal"), **{**FAST, **kw})


def test_answers_and_journal_match_the_in_process_client(tmp_path):
    requests = [build_cot_request(make_example(query_txt=f"is red, variant {i}", query_img=None, target_img=None),
                                  model="gpt-4o-mini", params={"max_tokens": 300}) for i in range(20)]
    with ReferenceServer() as srv:
        client = ProcessClient(_config(srv, tmp_path))
        results = [f.result(timeout=30) for f in [client.submit(r) for r in requests]]
        client.flush()
        assert {r.key for r in requests} <= set(load_journal(str(tmp_path / "journal")))  # durable at flush
        client.close()
    assert client.closed
    assert all(r.ok and r.attempts == 1 and r.parsed for r in results)
    assert [r.key for r in results] == [r.key for r in requests]


def test_images_are_encoded_in_the_child_and_a_lost_one_is_never_sent(tmp_path):
    root = tmp_path / "root"
    folder = root / "mbeir_images" / "cirr_images"
    folder.mkdir(parents=True)
    for name in ("ref.png", "tgt.png", "gone.png"):
        (folder / name).write_bytes(png_bytes(size=(64, 48)))
    loader = ImageLoader(str(root))
    build = {"model": "gpt-4o-mini", "params": {"max_tokens": 300}, "image_loader": loader, "defer_images": True}
    kept = build_cot_request(make_example(query_txt="kept"), **build)
    lost = build_cot_request(make_example(query_txt="lost", query_img="mbeir_images/cirr_images/gone.png"), **build)
    (folder / "gone.png").unlink()  # gone between the request and the call
    with ReferenceServer() as srv:
        client = ProcessClient(_config(srv, tmp_path))
        ok, failed = (client.submit(r, loader).result(timeout=30) for r in (kept, lost))
        client.close()
        assert srv.stats()["calls"] == 1
    assert ok.ok and ok.attempts == 1
    assert not failed.ok and failed.error == reasons.MISSING_IMAGE and failed.attempts == 0


def test_a_dead_child_fails_what_waits_instead_of_hanging(tmp_path):
    with ReferenceServer(latency_ms=2000) as srv:
        client = ProcessClient(_config(srv, tmp_path))
        future = client.submit(build_cot_request(make_example(query_img=None, target_img=None),
                                                 model="gpt-4o-mini", params={}))
        time.sleep(0.3)
        client._proc.kill()  # noqa: SLF001 - the crash under test
        result = future.result(timeout=10)
        client.close()  # nothing left to wait for
    assert not result.ok and result.error == "internal" and result.detail == CHILD_GONE
    assert client.closed


def test_a_request_that_cannot_be_sent_fails_alone(tmp_path):
    requests = [build_cot_request(make_example(query_txt=f"variant {i}", query_img=None, target_img=None),
                                  model="gpt-4o-mini", params={}) for i in range(2)]
    with ReferenceServer() as srv:
        client = ProcessClient(_config(srv, tmp_path))
        broken = client.submit(requests[0], lambda path: b"")  # a loader that cannot be pickled
        assert client.submit(requests[1]).result(timeout=30).ok  # the next request still goes through
        client.close()
    result = broken.result(timeout=10)
    assert not result.ok and result.error == "internal" and "pickle" in result.detail.lower()


def test_the_child_exits_with_its_parent(tmp_path):
    script = (
        "import sys, time\n"
        "from pipeline.teacher.config import TeacherConfig\n"
        "from pipeline.teacher.process import ProcessClient\n"
        f"c = ProcessClient(TeacherConfig({'http://127.0.0.1:9/v1'!r}, 'm'))\n"
        "print(c._proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:  # reaped by init once it exits; a zombie counts as gone
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the teacher process outlived its parent")


def test_what_the_child_unpickles_does_not_import_beam(tmp_path):
    """The teacher process stays small: its module, a config, a request and an image loader are Beam-free."""
    import pickle

    request = build_cot_request(make_example(query_img=None, target_img=None), model="m", params={})
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps((TeacherConfig("http://127.0.0.1:9/v1", "m"), request, ImageLoader("/x"))))
    script = ("import pickle, sys\nimport pipeline.teacher.process\n"
              f"pickle.loads(open({str(payload)!r}, 'rb').read())\nprint('apache_beam' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.strip() == "False"
