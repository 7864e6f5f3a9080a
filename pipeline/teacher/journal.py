"""Response journal: every successful teacher answer, durable within `flush_interval_s` of arriving.

Layout: `<journal_dir>/journal-<process uuid>-<seq:06d>.jsonl`, one JSON object per line. A writer buffers
records and, every flush interval, writes the buffer as one new segment and closes it (object stores such as
GCS have no append; a closed object is durable; local files are also fsynced). Only ok results are journaled,
so a rerun retries failures and pays for nothing twice. Readers skip damaged lines (a crash mid-write).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def _fs():
    """Beam's FileSystems, imported when a journal is not local (the teacher process stays free of Beam)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems

JOURNAL_VERSION = 1
REQUIRED_FIELDS = ("key", "content", "model")


def journal_glob(journal_dir: str) -> str:
    return _fs().join(journal_dir, "journal-*.jsonl")


def parse_journal_line(line: bytes | str) -> dict[str, Any] | None:
    """The record on one line, or None for a blank, damaged or truncated line."""
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or any(not isinstance(rec.get(f), str) for f in REQUIRED_FIELDS):
        return None
    return rec


def iter_journal(journal_dir: str) -> Iterator[dict[str, Any]]:
    """Every intact record of every segment, in segment-name order."""
    try:
        matches = _fs().match([journal_glob(journal_dir)])[0].metadata_list
    except Exception:  # noqa: BLE001 - a missing directory is an empty journal
        return
    for meta in sorted(matches, key=lambda m: m.path):
        with _fs().open(meta.path) as f:
            data = f.read()
        for raw in data.split(b"\n"):
            if raw.strip():
                rec = parse_journal_line(raw)
                if rec is None:
                    log.warning("skipping a damaged journal line in %s", meta.path)
                else:
                    yield rec


def load_journal(journal_dir: str) -> dict[str, dict[str, Any]]:
    """key -> record over all segments (small journals; the Beam stage joins large ones itself)."""
    return {rec["key"]: rec for rec in iter_journal(journal_dir)}


def _is_local(path: str) -> bool:
    return "://" not in path


def _write_durably(path: str, data: bytes) -> None:
    if _is_local(path):
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    f = _fs().create(path)
    try:
        f.write(data)
    finally:
        f.close()


class JournalWriter:
    """Thread-safe appender; a background thread writes one segment per `flush_interval_s`."""

    def __init__(self, journal_dir: str, flush_interval_s: float = 2.0):
        self.journal_dir = journal_dir
        self.flush_interval_s = flush_interval_s
        self.run_id = uuid.uuid4().hex
        self.writes = 0  # records made durable
        self.segments = 0
        self._buf: list[bytes] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._stop = threading.Event()
        if _is_local(journal_dir):
            os.makedirs(journal_dir, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="teacher-journal", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"v": JOURNAL_VERSION, **record}, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._buf.append(line.encode("utf-8") + b"\n")

    def flush(self) -> None:
        """Write buffered records as one closed segment now."""
        with self._io_lock:
            with self._lock:
                buf, self._buf = self._buf, []
            if not buf:
                return
            name = f"journal-{self.run_id}-{self.segments:06d}.jsonl"
            path = os.path.join(self.journal_dir, name) if _is_local(self.journal_dir) else _fs().join(
                self.journal_dir, name)
            try:
                _write_durably(path, b"".join(buf))
            except BaseException:
                with self._lock:
                    self._buf[:0] = buf  # nothing is lost; the next flush retries
                raise
            self.segments += 1
            self.writes += len(buf)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception:  # keep buffering; close() retries and raises
                log.exception("journal flush failed; will retry")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()
