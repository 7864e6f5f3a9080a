"""Stream a JSONL file as raw lines, constant memory, however long a line is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

_BOM = b"\xef\xbb\xbf"
_DRAIN_CHUNK = 1 << 20

# The longest line of the real M-BEIR release is a few KB (README "Hostile input" gives the estimate); a line
# past this is rejected as line_too_long without being parsed, and never held whole in memory.
DEFAULT_MAX_LINE_BYTES = 1 << 20


def iter_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (1-based line number, bytes without the line ending, ended_with_newline).

    Blank lines are skipped (not input) but still counted in line numbers.
    Uses readline only, so any FileSystems stream works. A UTF-8 BOM at the start of the file is dropped;
    "\\r\\n" endings lose their "\\r". A line longer than `max_line_bytes` is read in chunks and dropped:
    only its first `max_line_bytes + 1` bytes are yielded, which the parsers reject as line_too_long.
    """
    number = 0
    while True:
        line = stream.readline(max_line_bytes + 2)  # room for the content, "\r" and "\n"
        if not line:
            return
        number += 1
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        complete = line.endswith(b"\n")
        if not complete and len(line) >= max_line_bytes + 2:  # over the limit: skip to the end of the line
            complete = _drain(stream)
            yield number, line[: max_line_bytes + 1], complete
            continue
        if complete:
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        if line.strip():
            yield number, line, complete


def _drain(stream: BinaryIO) -> bool:
    """Read past the rest of the current line; True when it ended with a newline (not at end of file)."""
    while True:
        chunk = stream.readline(_DRAIN_CHUNK)
        if not chunk:
            return False
        if chunk.endswith(b"\n"):
            return True
