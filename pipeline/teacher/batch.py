"""OpenAI Batch API mode (half price, answers within 24 h), Beam-free.

A run writes every teacher request that the journal cannot answer as one line of a pending JSONL file
(pending.py); after the run the driver calls `BatchJobs.submit_pending(glob)`; the next run first calls
`BatchJobs.collect()`, which journals every finished answer in the client's record format, so the pipeline
finds them as journal hits. Nothing is ever paid twice: a request is in at most one unfinished batch, and
answers that were journaled are never submitted again.

State (`state_dir`, any Beam FileSystems path; one driver at a time):
    state.json            {"version": 1, "next_seq": N,
                           "batches": {BATCH_ID: {"seq", "input_file_id", "requests_file", "n_requests",
                                                  "model", "created_at", "status": "submitted"|"collected",
                                                  "final_status", "collected_at", "counts"}},
                           "creating": {SEQ: {"input_file_id", "requests_file", "n_requests", "model",
                                              "uploaded_at"}}}
    requests-SEQ.jsonl    one line per request of that batch: {"custom_id", "kind", "prompt_id", "prompt_sha",
                          "model"}; written before the upload and never changed (the custom_ids live here,
                          not in state.json, so state.json stays small at millions of requests)
    collected-SEQ.txt     the custom_ids of that batch that were journaled, one per line

state.json is rewritten after every upload and every batch create. A create interrupted before its batch id
was recorded is found again by input_file_id among the account's batches (`creating`), so a crash never loses
a batch nor submits one twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openai
from apache_beam.io.filesystems import FileSystems
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from common.errors import ConfigError
from common.redact import display_url, redact
from pipeline.teacher.budget import Budget
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.cost import BATCH_DISCOUNT
from pipeline.teacher.journal import JournalWriter
from pipeline.teacher.outputs import check_output, first_choice
from pipeline.teacher.pending import ENDPOINT, parse_pending
from pipeline.teacher.transport import retryable

log = logging.getLogger(__name__)
T = TypeVar("T")

# OpenAI batch guide (https://platform.openai.com/docs/guides/batch): an input file holds at most 50,000
# requests and 200 MB, all for one model.
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
COMPLETION_WINDOW = "24h"
STATE_VERSION = 1
UNFINISHED = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
DOWNLOAD_TIMEOUT_S = 600.0


def _is_local(path: str) -> bool:
    return "://" not in path


def _put(path: str, data: bytes) -> None:
    """Write a whole file durably; local files are replaced atomically, objects in stores are atomic anyway."""
    if not _is_local(path):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _get(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


class BatchJobs:
    """Submits pending requests as OpenAI batches and journals their answers; state lives in `state_dir`."""

    def __init__(self, config: TeacherConfig, state_dir: str, *, max_requests: int = MAX_BATCH_REQUESTS,
                 max_bytes: int = MAX_BATCH_BYTES, delete_files: bool = True):
        if not config.journal_dir:
            raise ValueError("batch mode needs TeacherConfig.journal_dir: collected answers go to the journal")
        self.config, self.state_dir = config, state_dir
        self.max_requests, self.max_bytes, self.delete_files = max_requests, max_bytes, delete_files
        self.api = openai.OpenAI(**config.client_args(), max_retries=0, timeout=config.timeout_s)
        if _is_local(state_dir):
            os.makedirs(state_dir, exist_ok=True)
        self._state_path = FileSystems.join(state_dir, "state.json")
        self.state = self._load_state()

    # ---- state ---------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        if not FileSystems.exists(self._state_path):
            return {"version": STATE_VERSION, "next_seq": 0, "batches": {}, "creating": {}}
        state = json.loads(_get(self._state_path))
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self._state_path}: unsupported state version {state.get('version')!r}")
        return state

    def _save(self) -> None:
        _put(self._state_path, json.dumps(self.state, indent=1, sort_keys=True).encode("utf-8"))

    def _path(self, name: str) -> str:
        return FileSystems.join(self.state_dir, name)

    def _requests(self, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
        rows = (json.loads(x) for x in _get(self._path(entry["requests_file"])).splitlines() if x.strip())
        return {r["custom_id"]: r for r in rows}

    def _collected_ids(self, entry: dict[str, Any]) -> Iterator[str]:
        path = self._path(f"collected-{entry['seq']:06d}.txt")
        if FileSystems.exists(path):
            yield from (x for x in _get(path).decode("utf-8").splitlines() if x)

    def _busy_ids(self) -> set[str]:
        """custom_ids in an unfinished batch or already journaled by collect()."""
        busy: set[str] = set()
        for entry in self.state["batches"].values():
            busy.update(self._requests(entry) if entry["status"] == "submitted" else self._collected_ids(entry))
        return busy

    # ---- API calls with retries ----------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn() with retries; a refused key is a ConfigError (exit 2) naming the URL without its credentials."""
        cfg = self.config
        retrying = Retrying(retry=retry_if_exception(retryable), reraise=True,
                            wait=wait_random_exponential(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s),
                            stop=stop_after_attempt(cfg.max_retries + 1))
        try:
            return retrying(fn, *args, **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise ConfigError(f"the Batch API at {display_url(cfg.base_url)} refused the API key (HTTP "
                              f"{e.status_code}): put a valid key in the environment variable {cfg.api_key_env} "
                              "(or name another with --api_key_env / --api_key_secret)") from None

    def _find_batch(self, input_file_id: str, since: float) -> Any | None:
        """The account's batch made from `input_file_id` (created after `since`), if any."""
        for b in self._call(self.api.batches.list, limit=100):
            if b.input_file_id == input_file_id:
                return b
            if b.created_at < since - 3600:  # newest first: older batches cannot be ours
                return None
        return None

    def _create(self, input_file_id: str, seq: int, since: float) -> Any:
        """Create the batch once: a retry first looks for a batch a lost response already created."""
        tries = 0

        def attempt() -> Any:
            nonlocal tries
            tries += 1
            if tries > 1 and (found := self._find_batch(input_file_id, since)) is not None:
                return found
            return self.api.batches.create(input_file_id=input_file_id, endpoint=ENDPOINT,
                                           completion_window=COMPLETION_WINDOW,
                                           metadata={"trace_requests_seq": str(seq)})

        return self._call(attempt)

    def _recover(self) -> None:
        """Settle uploads whose batch create may or may not have happened (an interrupted submit)."""
        for seq, c in list(self.state["creating"].items()):
            found = self._find_batch(c["input_file_id"], c["uploaded_at"])
            if found is not None:
                log.info("batch %s of an interrupted submit found again", found.id)
                self._record(found, int(seq), c)
            else:
                self.state["creating"].pop(seq)
                self._save()
                self._delete_file(c["input_file_id"])

    def _record(self, batch: Any, seq: int, c: dict[str, Any]) -> None:
        self.state["batches"][batch.id] = {**c, "seq": seq, "created_at": batch.created_at,
                                           "status": "submitted"}
        self.state["creating"].pop(str(seq), None)
        self._save()

    def _delete_file(self, file_id: str | None) -> None:
        if file_id and self.delete_files:
            try:
                self._call(self.api.files.delete, file_id)
            except openai.OpenAIError as e:  # storage clean-up only
                log.warning("could not delete file %s: %s", file_id, redact(str(e)))

    # ---- submit --------------------------------------------------------------------------------------
    def submit_pending(self, pending_glob: str, budget: Budget | None = None) -> dict[str, int]:
        """Upload the pending requests not already in a batch or journaled, as batches; delete the pending files.

        With a `budget`, requests that it refuses are not submitted (counted `over_budget`; a later run writes
        them again). Returns {submitted_requests, batches, skipped_busy, duplicates, bad_lines, too_large,
        over_budget}.
        """
        self.state = self._load_state()  # another BatchJobs may have moved on since
        self._recover()
        counts = dict.fromkeys(("submitted_requests", "batches", "skipped_busy", "duplicates", "bad_lines",
                                "too_large", "over_budget"), 0)
        try:
            paths = [m.path for m in FileSystems.match([pending_glob])[0].metadata_list]
        except Exception:  # noqa: BLE001 - no pending folder yet: nothing to submit
            paths = []
        busy, seen = self._busy_ids(), set()
        by_model: dict[str, list[tuple[bytes, dict[str, Any]]]] = defaultdict(list)
        for path in sorted(paths):
            for raw in _get(path).splitlines():
                if not raw.strip():
                    continue
                x = parse_pending(raw)
                if x is None:
                    counts["bad_lines"] += 1
                elif x["custom_id"] in busy or x["custom_id"] in seen:
                    counts["skipped_busy" if x["custom_id"] in busy else "duplicates"] += 1
                else:
                    self._admit(x, budget, counts, seen, by_model)
        for model, items in sorted(by_model.items()):
            for chunk in self._chunks(items):
                self._submit_chunk(model, chunk)
                counts["batches"] += 1
                counts["submitted_requests"] += len(chunk)
        if paths:
            FileSystems.delete(paths)
        return counts

    def _admit(self, x: dict[str, Any], budget: Budget | None, counts: dict[str, int], seen: set[str],
               by_model: dict[str, list[tuple[bytes, dict[str, Any]]]]) -> None:
        """Queue one pending request for its model's batches, unless it is too large or over the budget."""
        cid, body, meta = x["custom_id"], x["body"], x["meta"]
        line = json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        if len(line) > self.max_bytes:
            counts["too_large"] += 1
            log.warning("request %s is %d bytes, over the %d-byte batch file limit", cid[:12], len(line),
                        self.max_bytes)
            return
        est = (int(meta.get("est_prompt_tokens") or 0),
               int(body.get("max_completion_tokens") or body.get("max_tokens") or 0))
        if budget is not None and not budget.try_reserve(*est):
            counts["over_budget"] += 1
            return
        seen.add(cid)
        by_model[body["model"]].append((line, {
            "custom_id": cid, "kind": meta["kind"], "prompt_id": meta.get("prompt_id", ""),
            "prompt_sha": meta.get("prompt_sha", ""), "model": body["model"]}))

    def _chunks(self, items: list[tuple[bytes, dict]]) -> Iterator[list[tuple[bytes, dict]]]:
        chunk: list[tuple[bytes, dict]] = []
        size = 0
        for item in items:
            if chunk and (len(chunk) >= self.max_requests or size + len(item[0]) > self.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item[0])
        if chunk:
            yield chunk

    def _submit_chunk(self, model: str, chunk: list[tuple[bytes, dict]]) -> None:
        seq = self.state["next_seq"]
        self.state["next_seq"] = seq + 1
        requests_file = f"requests-{seq:06d}.jsonl"
        _put(self._path(requests_file),
             b"".join(json.dumps(meta, separators=(",", ":")).encode("utf-8") + b"\n" for _, meta in chunk))
        self._save()
        uploaded_at = time.time()
        f = self._call(self.api.files.create, file=(f"batch-{seq:06d}.jsonl", b"".join(x for x, _ in chunk)),
                       purpose="batch")
        c = {"input_file_id": f.id, "requests_file": requests_file, "n_requests": len(chunk), "model": model,
             "uploaded_at": uploaded_at}
        self.state["creating"][str(seq)] = c
        self._save()
        batch = self._create(f.id, seq, uploaded_at)
        self._record(batch, seq, c)
        log.info("submitted batch %s: %d requests for %s", batch.id, len(chunk), model)

    # ---- collect -------------------------------------------------------------------------------------
    def in_progress(self) -> int:
        """Requests submitted and not yet collected."""
        self.state = self._load_state()
        return (sum(e["n_requests"] for e in self.state["batches"].values() if e["status"] == "submitted")
                + sum(c["n_requests"] for c in self.state["creating"].values()))

    def collect(self) -> dict[str, Any]:
        """Journal the answers of every finished batch; failed, expired and errored items become pending again.

        Returns {completed_batches, in_progress_batches, collected, malformed, failed_items, expired_items,
        prompt_tokens, completion_tokens, cost_usd} (cost at the batch discount, malformed answers included).
        """
        self.state = self._load_state()
        self._recover()
        counts: dict[str, Any] = dict.fromkeys(
            ("completed_batches", "in_progress_batches", "collected", "malformed", "failed_items",
             "expired_items", "prompt_tokens", "completion_tokens"), 0)
        counts["cost_usd"] = 0.0
        journal = JournalWriter(self.config.journal_dir, flush_interval_s=3600.0)
        try:
            for bid, entry in sorted(self.state["batches"].items(), key=lambda kv: kv[1]["seq"]):
                if entry["status"] != "submitted":
                    continue
                batch = self._call(self.api.batches.retrieve, bid)
                if batch.status in UNFINISHED:
                    counts["in_progress_batches"] += 1
                    continue
                self._collect_batch(batch, entry, journal, counts)
        finally:
            journal.close()
        counts["cost_usd"] = round(counts["cost_usd"], 6)
        return counts

    def _download(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        data = self._call(self.api.files.content, file_id, timeout=max(DOWNLOAD_TIMEOUT_S, self.config.timeout_s))
        lines = []
        for raw in data.read().splitlines():
            try:
                x = json.loads(raw)
            except ValueError:
                log.warning("skipping a damaged line of batch file %s", file_id)
                continue
            if isinstance(x, dict) and isinstance(x.get("custom_id"), str):
                lines.append(x)
        return lines

    def _collect_batch(self, batch: Any, entry: dict[str, Any], journal: JournalWriter,
                       counts: dict[str, Any]) -> None:
        requests = self._requests(entry)
        ok: list[str] = []
        answered: set[str] = set()
        per = dict.fromkeys(("collected", "malformed", "failed_items", "expired_items"), 0)
        for line in self._download(batch.output_file_id):
            meta = requests.get(line["custom_id"])
            if meta is None or line["custom_id"] in answered:
                continue
            answered.add(line["custom_id"])
            response = line.get("response") or {}
            if response.get("status_code") != 200:
                per["failed_items"] += 1
                continue
            record = self._record_of(meta, response.get("body") or {}, batch.id, counts)
            if record is None:
                per["malformed"] += 1
            else:
                journal.append(record)
                ok.append(meta["custom_id"])
        for line in self._download(batch.error_file_id):
            cid = line["custom_id"]
            if cid in requests and cid not in answered:
                answered.add(cid)
                code = (line.get("error") or {}).get("code") or ""
                per["expired_items" if code in ("batch_expired", "batch_cancelled") else "failed_items"] += 1
        rest = len(requests) - len(answered)  # no line at all: a failed batch, or an expired one without files
        per["failed_items" if batch.status in ("failed", "completed") else "expired_items"] += rest
        per["collected"] = len(ok)
        journal.flush()  # answers durable before the batch counts as collected
        _put(self._path(f"collected-{entry['seq']:06d}.txt"), "".join(f"{c}\n" for c in ok).encode("utf-8"))
        entry.update(status="collected", final_status=batch.status, collected_at=round(time.time(), 3),
                     counts=per)
        self._save()
        for k, v in per.items():
            counts[k] += v
        counts["completed_batches"] += 1
        log.info("collected batch %s (%s): %s", batch.id, batch.status, per)
        for fid in (entry["input_file_id"], batch.output_file_id, batch.error_file_id):
            self._delete_file(fid)

    def _record_of(self, meta: dict[str, Any], completion: dict[str, Any], batch_id: str,
                   counts: dict[str, Any]) -> dict[str, Any] | None:
        """The journal record of one answer (the client's format), or None when it is malformed."""
        usage = completion.get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        counts["prompt_tokens"] += p
        counts["completion_tokens"] += c
        counts["cost_usd"] += self.config.prices.cost(meta["model"], p, c, discount=BATCH_DISCOUNT)
        choice = first_choice(completion)
        if choice is None or check_output(meta["kind"], *choice)[0] is None:
            return None
        content = choice[0]
        return {"key": meta["custom_id"], "kind": meta["kind"], "model": completion.get("model") or meta["model"],
                "request_model": meta["model"], "prompt_id": meta["prompt_id"], "prompt_sha": meta["prompt_sha"],
                "content": content, "prompt_tokens": p, "completion_tokens": c, "attempts": 1,
                "t": round(time.time(), 3), "batch_id": batch_id, "price_discount": BATCH_DISCOUNT}
