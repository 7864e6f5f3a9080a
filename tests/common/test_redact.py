"""One redaction for every text that leaves the process (common/redact.py)."""

from common.redact import REDACTED, display_url, redact, register_secret


def test_registered_secret_is_removed_wherever_it_appears():
    register_secret("my-very-private-key-123")
    body = '{"error": {"message": "Incorrect API key provided: my-very-private-key-123"}}'
    assert "my-very-private-key-123" not in redact(body)
    assert REDACTED in redact(body)


def test_bearer_tokens_key_fields_and_key_like_tokens():
    text = ("Authorization: Bearer abcdef123456 api_key=zzz-top-secret token: 'tok123456' "
            "sk-proj-ABCDEFGHIJKLMNOPQRSTUV hf_ABCDEFGHIJKLMNOPQRSTUVWX")
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
