"""The Hub side of "secrets never written" (issue 22.6): HF_TOKEN and URL credentials stay out of upload error
messages, the command line's error line and the commit URLs that are printed."""

from __future__ import annotations

from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from common.cli import run_cli
from common.errors import ConfigError, OutputError
from common.hub import commit_once, hub_token, upload_errors

TOKEN = "my-hub-write-token-5c1d"  # no hf_ shape: only its registration can hide it


def _http_error(status: int, message: str) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://hub.example/api/models/u/r/commit/main")
    return HfHubHTTPError(message, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("error, kind", [
    (_http_error(500, f"500 Server Error for https://bob:pw-4242@hub.example/api: token {TOKEN} rejected"),
     OutputError),
    (RuntimeError(f"upload of data/a.parquet failed: Authorization: Bearer {TOKEN}"), OutputError),
    (_http_error(401, f"401 Unauthorized: invalid token {TOKEN}"), ConfigError),
])
def test_upload_errors_never_carry_the_token_or_url_credentials(monkeypatch, error, kind):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub_token() == TOKEN
    with pytest.raises(kind) as raised, upload_errors("u/r"):
        raise error
    assert TOKEN not in str(raised.value) and "pw-4242" not in str(raised.value)


def test_the_error_line_and_debug_traceback_of_a_command_are_redacted(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub_token()

    def main(argv):
        raise ConfigError(f"the Hub at https://bob:pw-4242@hub.example refused {TOKEN}")

    assert run_cli(main, ["--debug"], prog="prog") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "prog: error: the Hub at https://hub.example refused ***"
    assert "Traceback" in err and TOKEN not in err and "pw-4242" not in err


def test_printed_commit_and_pr_urls_lose_their_credentials():
    info = SimpleNamespace(oid="abc", commit_url="https://bob:pw-4242@hub.example/u/r/commit/abc",
                           pr_url="https://bob:pw-4242@hub.example/u/r/discussions/1")
    api = SimpleNamespace(list_repo_files=lambda *a, **k: [], preupload_lfs_files=lambda *a, **k: None,
                          create_commit=lambda *a, **k: info)
    result = commit_once(api, "u/r", "model", {"README.md": b"card"}, commit_message="m")
    assert result.commit_url == "https://hub.example/u/r/commit/abc"
    assert result.pr_url == "https://hub.example/u/r/discussions/1"
