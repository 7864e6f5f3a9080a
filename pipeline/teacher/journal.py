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
    for path in _segments(journal_dir):
        for raw in _read(path).split(b"\n"):
            if raw.strip():
                rec = parse_journal_line(raw)
                if rec is None:
                    log.warning("skipping a damaged journal line in %s", path)
                else:
                    yield rec


def _segments(journal_dir: str) -> list[str]:
    try:
        matches = _fs().match([journal_glob(journal_dir)])[0].metadata_list
    except Exception:  # noqa: BLE001 - a missing directory is an empty journal
        return []
    return sorted(m.path for m in matches)


def _read(path: str, offset: int = 0, size: int = -1) -> bytes:
    if _is_local(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    with _fs().open(path) as f:
        f.seek(offset)
        return f.read(size)


class JournalIndex:
    """Where the latest intact record of each key lies (segment, offset, length), for a local run's stages to
    look up answers without the journal join's shuffle. Holds positions, not records (about 250 bytes a key);
    `refresh` indexes the segments written since the last one (segments never change once closed)."""

    def __init__(self, journal_dir: str):
        self.journal_dir = journal_dir
        self._paths: list[str] = []
        self._where: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    def refresh(self) -> None:
        with self._lock:
            segments = _segments(self.journal_dir)
            if not set(self._paths) <= set(segments):  # segments went away (a journal cleared or replaced)
                self._paths, self._where = [], {}
            known = set(self._paths)
            for path in segments:
                if path in known:
                    continue
                number, offset = len(self._paths), 0
                self._paths.append(path)
                for raw in _read(path).split(b"\n"):
                    record = parse_journal_line(raw) if raw.strip() else None
                    if record is not None:
                        self._where[record["key"]] = (number, offset, len(raw))
                    offset += len(raw) + 1

    def get(self, key: str) -> dict[str, Any] | None:
        """The record for `key`, or None when the journal has none."""
        where = self._where.get(key)
        if where is None:
            return None
        number, offset, size = where
        try:
            return parse_journal_line(_read(self._paths[number], offset, size))
        except OSError:  # the segment went away since refresh(): asked again, as if never journaled
            return None


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
