"""A Beam FileSystem for tests: `testfs://a/b` is the local file `$TESTFS_ROOT/a/b`.

Importing this module registers the scheme (Beam finds FileSystem subclasses by `scheme()`). Code that goes
through apache_beam.io.filesystems.FileSystems reads and writes these paths; a plain open(), os.path or os.makedirs
on them does not reach the files, so a run over testfs:// proves that every data path goes through FileSystems.
With $TESTFS_QUOTA_BYTES set, the disk is full after that many bytes written in this process: the write that
crosses it stores what fits and raises ENOSPC, as a real full disk does.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager

from apache_beam.io.filesystem import CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "testfs"
PREFIX = f"{SCHEME}://"
ROOT_ENV = "TESTFS_ROOT"
QUOTA_ENV = "TESTFS_QUOTA_BYTES"
_written = 0  # bytes written through testfs in this process


def reset_quota() -> None:
    global _written
    _written = 0


class _QuotaWriter:
    def __init__(self, inner):
        self._inner = inner

    def write(self, data) -> int:
        global _written
        quota = os.environ.get(QUOTA_ENV)
        room = len(data) if quota is None else max(0, int(quota) - _written)
        if room < len(data):
            self._inner.write(data[:room])
            _written += room
            raise OSError(errno.ENOSPC, "No space left on device")
        _written += len(data)
        return self._inner.write(data)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def local_path(path: str) -> str:
    """The local file behind a testfs:// path."""
    if not path.startswith(PREFIX):
        raise ValueError(f"not a {PREFIX} path: {path!r}")
    root = os.environ.get(ROOT_ENV)
    if not root:
        raise RuntimeError(f"set {ROOT_ENV} (tests.pipeline.testfs.mounted) before using {PREFIX} paths")
    return os.path.join(root, path[len(PREFIX):])


def fs_path(local: str) -> str:
    """The testfs:// path of a local file under the root."""
    rel = os.path.relpath(local, os.environ[ROOT_ENV])
    return PREFIX + rel.replace(os.sep, "/")


@contextmanager
def mounted(root: str):
    """Serve `root` as testfs:// for the duration (also to child processes, through the environment)."""
    old = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = root
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ROOT_ENV, None)
        else:
            os.environ[ROOT_ENV] = old


class TestFileSystem(FileSystem):
    """Every operation maps testfs:// paths to local ones, delegates to LocalFileSystem, and maps results back."""

    __test__ = False  # not a pytest test class

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return (head if head != SCHEME + ":/" else PREFIX), tail

    def mkdirs(self, path: str) -> None:
        self._local.mkdirs(local_path(path))

    def has_dirs(self) -> bool:
        return True

    def _url_dirname(self, url: str) -> str:
        return self.split(url)[0]

    def _list(self, dir_or_prefix: str):
        for meta in self._local._list(local_path(dir_or_prefix)):
            yield FileMetadata(fs_path(meta.path), meta.size_in_bytes, meta.last_updated_in_seconds)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO):
        return _QuotaWriter(self._local.create(local_path(path), mime_type, compression_type))

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        return self._local.open(local_path(path), mime_type, compression_type)

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        self._local.copy([local_path(p) for p in source_file_names], [local_path(p) for p in destination_file_names])

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        self._local.rename([local_path(p) for p in source_file_names],
                           [local_path(p) for p in destination_file_names])

    def exists(self, path: str) -> bool:
        return self._local.exists(local_path(path))

    def size(self, path: str) -> int:
        return self._local.size(local_path(path))

    def last_updated(self, path: str) -> float:
        return self._local.last_updated(local_path(path))

    def checksum(self, path: str) -> str:
        return self._local.checksum(local_path(path))

    def metadata(self, path: str) -> FileMetadata:
        meta = self._local.metadata(local_path(path))
        return FileMetadata(path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def delete(self, paths: list[str]) -> None:
        self._local.delete([local_path(p) for p in paths])

    def report_lineage(self, path, lineage, level=None) -> None:
        return None
