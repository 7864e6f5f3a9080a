"""One redaction for every text that leaves the process (common/redact.py)."""

import logging
import os
import subprocess
import sys

from common.redact import REDACTED, display_url, redact, register_secret, split_credentials


def test_registered_secret_is_removed_wherever_it_appears():
    register_secret("my-very-private-key-123")
    body = '{"error": {"message": "Incorrect API key provided: my-very-private-key-123"}}'
    assert "my-very-private-key-123" not in redact(body)
    assert REDACTED in redact(body)


def test_bearer_tokens_key_fields_and_key_like_tokens():
    text = ("Authorization: Bearer abcdef123456 api_key=zzz-top-secret token: 'tok123456' "
            "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345 hf_ABCDEFGHIJKLMNOPQRSTUVWXabcdefghij")
    out = redact(text)
    for secret in ("abcdef123456", "zzz-top-secret", "tok123456", "sk-proj-ABCDEF", "hf_ABCDEFGH"):
        assert secret not in out, out


def test_url_credentials_are_removed():
    assert "hunter2" not in redact("POST http://alice:hunter2@example.test:8000/v1 failed")
    assert display_url("https://alice:hunter2@example.test:8000/v1") == "https://example.test:8000/v1"
    assert display_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert display_url(None) is None


def test_ordinary_text_is_unchanged_and_redaction_is_idempotent():
    text = "reasoning: the cat sits on a red mat; answer: a cat"
    register_secret("x")  # too short to redact safely: ignored
    assert redact(text) == text
    once = redact("Bearer abc123456 at http://u:p@h/v1")
    assert redact(once) == once


def test_urls_lose_their_credentials_even_with_an_at_sign_in_the_password():
    assert redact("GET http://u:p@ss@example.test/v1 refused") == "GET http://example.test/v1 refused"
    assert redact("http://example.test/v1?mail=a@b") == "http://example.test/v1?mail=a@b"  # not credentials
    assert split_credentials("https://al%40ice:hun%3Ater2@example.test:8000/v1") == (
        "https://example.test:8000/v1", "al@ice", "hun:ter2")
    assert split_credentials("http://127.0.0.1:8000/v1") == ("http://127.0.0.1:8000/v1", None, None)


def test_authorization_values_and_prefixed_key_fields_go_but_ordinary_settings_stay():
    out = redact("Authorization: Basic dXNlcjpodW50ZXIy --hf_token=abcd1234 x-api-key: k3y-v4lue")
    for secret in ("dXNlcjpodW50ZXIy", "abcd1234", "k3y-v4lue"):
        assert secret not in out, out
    settings = ("--api_key_env OPENAI_API_KEY max_tokens=16 reasoning_tokens: [10, 200] "
                "--output_dir /data/hf_cache_m_beir_cot_full_run --repo user/sk-learn-style-embedder")
    assert redact(settings) == settings


def test_log_records_are_redacted_once_a_secret_is_registered(caplog):
    register_secret("sk-log-secret-0123")
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO, logger="tests.redact"):
        log.info("calling %s with %s", "http://bob:pw-9876@host/v1", "sk-log-secret-0123")
        try:
            raise RuntimeError("the server said: sk-log-secret-0123")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text
    assert "sk-log-secret-0123" not in text and "pw-9876" not in text
    assert "calling http://host/v1 with ***" in text and "RuntimeError" in text


def test_an_uncaught_exception_is_printed_redacted():
    code = ("from common.redact import register_secret\n"
            "register_secret('sk-uncaught-secret-42')\n"
            "raise RuntimeError('401: incorrect key sk-uncaught-secret-42')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 1 and "RuntimeError: 401: incorrect key ***" in done.stderr
    assert "sk-uncaught-secret-42" not in done.stderr
