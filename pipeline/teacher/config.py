"""The teacher's configuration and secrets: `TeacherConfig` (every client setting, with its default written
once), the API key's resolution (environment variable, else a Secret Manager secret, else a dummy key for a
loopback teacher; every key and URL password is registered with common.redact so that no text leaving the
process carries it), the arguments of an openai client (`client_args`: credentials in the base URL travel as HTTP
Basic auth, never in the URL) and the names of the transports a config may ask for. No openai, no aiohttp: the command line
reads its defaults from here without loading an HTTP stack."""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from common.redact import display_url, register_secret, split_credentials
from pipeline.teacher.cost import PriceTable

DUMMY_LOCAL_KEY = "sk-loopback-no-key"
TRANSPORTS = ("aiohttp", "httpx", "direct")
AUTO_TRANSPORT = "auto"
TEACHER_MODES = ("online", "batch")  # calls as the run goes, or the OpenAI Batch API (half price); first = default


@dataclass
class TeacherConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    api_key_secret: str | None = None  # projects/P/secrets/NAME[/versions/V], read on each worker
    max_in_flight: int = 64
    max_pending: int | None = 4096  # submit() blocks while this many are queued or in flight (None = never)
    rpm: float | None = None  # None = unlimited
    tpm: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 6  # per call, for 429 / 5xx / timeouts / connection errors
    max_reasks: int = 2  # extra calls when the output is malformed
    journal_dir: str | None = None
    flush_interval_s: float = 2.0
    prices: PriceTable = field(default_factory=PriceTable)
    price_discount: float = 1.0  # e.g. cost.BATCH_DISCOUNT
    # "aiohttp" | "httpx": the openai client on that transport. "direct": one aiohttp session posts the chat
    # completion itself, with the openai client's headers (key, organization, project, user agent), and raises
    # the openai client's error types (about 0.45 ms less CPU per call, for OpenAI-compatible servers; no Azure)
    transport: str = "aiohttp"
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    progress_interval_s: float = 5.0
    own_process: bool = False  # the stages' shared client runs in a child process (pipeline/teacher/process.py)

    def __post_init__(self) -> None:
        register_secret(split_credentials(self.base_url)[2])  # redacted from the moment the URL is known

    def resolve_api_key(self) -> str:
        """The key from `api_key_env`, else from the Secret Manager secret `api_key_secret` (Dataflow workers do
        not inherit the launcher's environment); loopback servers may go without one. Registered for redaction."""
        key = os.environ.get(self.api_key_env, "")
        if not key and self.api_key_secret:
            key = read_secret(self.api_key_secret)
        if key:
            register_secret(key)
            return key
        if is_loopback(self.base_url):
            return DUMMY_LOCAL_KEY
        raise ValueError(f"environment variable {self.api_key_env} is not set; it must hold the API key "
                         f"for the teacher at {display_url(self.base_url)}")

    def client_args(self) -> dict[str, Any]:
        """api_key, base_url and default_headers of an openai client for this teacher. A base URL with
        `user:password@` is used without them, and they go as HTTP Basic authorization instead of the key (as curl
        and httpx send them), so no error or log line that names the URL can carry them."""
        url, user, password = split_credentials(self.base_url)
        args: dict[str, Any] = {"api_key": self.resolve_api_key(), "base_url": url}
        if user is not None or password is not None:
            register_secret(password)
            token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode("ascii")
            register_secret(token)
            args["default_headers"] = {"Authorization": f"Basic {token}"}
        return args


def read_secret(name: str) -> str:
    """The payload of a Google Secret Manager secret (latest version unless `name` names one)."""
    try:
        from google.cloud import secretmanager
    except ImportError as e:
        raise ValueError("--api_key_secret needs google-cloud-secret-manager: pip install 'mbeir-cot[gcp]'") from e
    version = name if "/versions/" in name else f"{name}/versions/latest"
    response = secretmanager.SecretManagerServiceClient().access_secret_version(name=version)
    return response.payload.data.decode("utf-8").strip()


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (localhost or a loopback address)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
