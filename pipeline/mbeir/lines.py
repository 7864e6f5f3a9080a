"""Stream a JSONL file as raw lines, constant memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

_BOM = b"\xef\xbb\xbf"


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (1-based line number, bytes without the line ending, ended_with_newline).

    Blank lines are skipped (not input) but still counted in line numbers.
    Uses readline only, so any FileSystems stream works. A UTF-8 BOM at the start of the file is dropped;
    "\\r\\n" endings lose their "\\r".
    """
    for number, line in enumerate(iter(stream.readline, b""), start=1):
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        complete = line.endswith(b"\n")
        if complete:
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        if line.strip():
            yield number, line, complete
