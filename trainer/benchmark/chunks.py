"""The evaluation's embedding cache, in chunks that any process may write and every process can trust.

A pool (or a pair's queries) is cut into fixed chunks by line order; chunk i is one file
`{cache}/{model_fp}/{key}/c{i:06d}.chunk`, written to a temporary name in the same folder, fsynced and renamed
into place (os.replace), so a chunk file that exists is complete: a killed run leaves at most a temporary file,
and a rerun encodes only the chunks whose files are absent. A chunk file is a ZIP archive (stored, not
compressed) of two members:

    embeddings.npy   (n, d) float16 for candidates, float32 for queries (np.save, no pickle)
    record.json      {"ids": [...], ...}: the n ids in row order, as a JSON array, plus what encoding found
                     (read counts, seconds; for queries the routing and generated tokens)

Ids are a JSON array, never text joined by a separator, so no id content (newline, tab, U+2028 ...) can shift
an id onto another row's embedding.
"""

from __future__ import annotations

import io
import json
import os
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError

SUFFIX = ".chunk"
_TMP = ".tmp"
EMBEDDINGS, RECORD = "embeddings.npy", "record.json"


@dataclass
class Chunk:
    """One chunk's rows: ids[i] is the id of embeddings[i]; info holds what encoding it found (JSON-able)."""

    ids: list[str]
    embeddings: np.ndarray
    info: dict = field(default_factory=dict)


def write_chunk(path: Path, chunk: Chunk) -> None:
    """Write atomically: a temporary file named after this host and process, fsynced, then renamed over `path`."""
    if len(chunk.ids) != len(chunk.embeddings):
        raise ValueError(f"{path}: {len(chunk.ids)} ids for {len(chunk.embeddings)} embeddings")
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}{_TMP}")
    matrix = io.BytesIO()
    np.save(matrix, np.ascontiguousarray(chunk.embeddings), allow_pickle=False)
    record = json.dumps({**chunk.info, "ids": list(chunk.ids)}, ensure_ascii=True).encode()
    with open(tmp, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(EMBEDDINGS, matrix.getvalue())
            z.writestr(RECORD, record)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_chunk(path: Path) -> Chunk:
    """A chunk file's rows; ConfigError naming the file when it is damaged (deleting it re-encodes that chunk)."""
    try:
        with zipfile.ZipFile(path) as z:
            embeddings = np.load(io.BytesIO(z.read(EMBEDDINGS)), allow_pickle=False)
            record = json.loads(z.read(RECORD))
        ids = record.pop("ids")
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids) and len(ids) == len(embeddings)):
            raise ValueError("ids do not match the embeddings")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"cache chunk {path} is damaged ({e}): delete it and rerun; only that chunk is encoded "
                          "again") from None
    return Chunk(ids, embeddings, record)


class ChunkFolder:
    """The chunks of one pool or one pair's queries: `total` chunks in `folder`, described by `key.json`."""

    def __init__(self, folder: Path, total: int, describe: dict):
        self.folder, self.total, self.describe = Path(folder), total, describe

    def path(self, index: int) -> Path:
        return self.folder / f"c{index:06d}{SUFFIX}"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if not self.done(i)]

    def prepare(self) -> None:
        """Create the folder with its key.json (what the key stands for, for people) and remove temporary files
        that processes of this host left when they died."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder / "key.json"
        if not key.exists():
            write_text_atomic(key, json.dumps(self.describe, indent=1, sort_keys=True))
        host = socket.gethostname()
        for tmp in self.folder.glob(f".*{_TMP}"):
            owner = tmp.name[1:].split(".", 2)[-1].removesuffix(_TMP)  # .{name}.{ext}.{host}-{pid}.tmp
            if owner.rpartition("-")[0] == host and not _alive(owner.rpartition("-")[2]):
                tmp.unlink(missing_ok=True)

    def write(self, index: int, chunk: Chunk) -> None:
        write_chunk(self.path(index), chunk)

    def read(self, index: int) -> Chunk:
        return read_chunk(self.path(index))

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in order; ConfigError when one is missing (the encoding step did not finish)."""
        for i in range(self.total):
            if not self.done(i):
                raise ConfigError(f"cache chunk {self.path(i)} is missing: rerun the same command to encode it")
            yield self.read(i)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}{_TMP}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
