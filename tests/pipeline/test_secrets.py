"""Secrets never written (issue 22.6): a teacher that echoes the API key in its 401 body, and a base URL carrying
`user:password@`, leave the key and the password in no file under the output folder (journal, failed/, batch
state included, every byte) and on neither stderr nor the log; the run still authenticates with the URL's
credentials."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
import pytest

from pipeline.teacher.reference.server import ReferenceServer
from tests.pipeline.conftest import run_pipeline

KEY = "team-key-7f3a9c55e1"  # no sk-/hf_ shape: only its registration can hide it
PASSWORD = "hunter2"
BASIC = "dXNlcjpodW50ZXIy"  # base64 of user:hunter2, what goes over the wire


def _files_holding(out: str, *secrets: str) -> list[str]:
    """Every file under `out`, read as bytes, that contains one of `secrets`."""
    found = []
    for folder, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            found += [os.path.relpath(os.path.join(folder, name), out) for s in secrets if s.encode() in data]
    return found


def _failed_rows(out: str) -> list[dict]:
    return [r for p in sorted(glob.glob(os.path.join(out, "failed", "*.parquet"))) for r in pq.read_table(p).to_pylist()]


def _credentials_url(server: ReferenceServer) -> str:
    return f"http://user:{PASSWORD}@127.0.0.1:{server.port}/v1"


def test_a_key_echoed_in_a_401_body_reaches_no_file_and_no_log(sample_root, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = str(tmp_path / "out")
    with ReferenceServer(api_key="the-right-key-0000", echo_key=True) as server:
        stats = run_pipeline(sample_root, out, "--skip_preflight", "--verifier", "off", teacher=server, limit="2")
    failed = _failed_rows(out)
    assert failed and stats["failed"] == {"bad_request": len(failed)}
    assert all("HTTP 401" in r["detail"] and "incorrect API key provided: Bearer ***" in r["detail"] for r in failed)
    assert _files_holding(out, KEY) == []
    captured = capfd.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text


def test_a_refused_key_is_one_line_without_the_key(sample_root, tmp_path, monkeypatch, capfd):
    from pipeline.__main__ import main

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReferenceServer(api_key="the-right-key-0000", echo_key=True) as server:
        status = main(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "out"), "--limit", "1",
                       "--teacher_base_url", _credentials_url(server), "--teacher_model", "reference-teacher",
                       "--debug"])
    err = capfd.readouterr().err
    assert status == 2 and "refused the API key (HTTP 401)" in err and "Traceback" in err
    assert f"the teacher at http://127.0.0.1:{server.port}/v1 refused" in err
    assert KEY not in err and PASSWORD not in err and BASIC not in err


@pytest.mark.parametrize("transport", ["direct", "aiohttp"])
def test_url_credentials_authenticate_but_are_shown_nowhere(sample_root, tmp_path, capfd, caplog, transport):
    out = str(tmp_path / "out")
    with ReferenceServer(basic_auth=f"user:{PASSWORD}") as server:
        stats = run_pipeline(sample_root, out, "--teacher_base_url", _credentials_url(server), "--teacher_model",
                             "reference-teacher", "--teacher_transport", transport, "--verifier", "off", limit="2")
        assert server.stats()["ok"] == stats["routed"]["reasoning"] > 0  # every call got through the login
    assert stats["failed"] == {} and stats["accepted"]["reasoning"] > 0
    assert _files_holding(out, PASSWORD, BASIC) == []
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        assert f"--teacher_base_url http://127.0.0.1:{server.port}/v1 " in f.read()
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err + caplog.text


def test_batch_mode_state_never_holds_the_url_credentials(sample_root, tmp_path, capfd, caplog):
    out = str(tmp_path / "out")
    with ReferenceServer(basic_auth=f"user:{PASSWORD}", batch_speed=0) as server:
        args = ("--teacher_base_url", _credentials_url(server), "--teacher_model", "reference-teacher",
                "--teacher_mode", "batch", "--verifier", "off")
        first = run_pipeline(sample_root, out, *args, limit="2")
        assert first["batch"]["submitted"]["submitted_requests"] > 0
        second = run_pipeline(sample_root, out, *args, limit="2")
    assert not second["pending"] and second["accepted"]["reasoning"] > 0
    assert glob.glob(os.path.join(out, "batches", "**", "state.json"), recursive=True)
    assert _files_holding(out, PASSWORD, BASIC) == []
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err + caplog.text
