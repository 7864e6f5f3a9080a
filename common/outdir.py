"""The output-folder contract, the same for every command (DESIGN.md):

- a command writes into an empty (or new) folder, or one holding its own earlier output, recognised by the marker
  file `.mbeir-cot.json` naming the command (or, for output written before markers existed, by a file only that
  command writes, e.g. the pipeline's manifest.json);
- a folder holding anything else is refused (exit 2) naming the folder and `--overwrite`; with `--overwrite` the
  command writes beside the other files, and refuses if one of them is in the way of its own outputs;
- it deletes or replaces only its own outputs: files matching its declared patterns (fnmatch globs relative to the
  folder, '/'-separated; `*` also matches across '/') inside a folder it owns; a folder a removal leaves empty goes
  too;
- while it writes it holds a lock naming the holder; a second run on the folder is refused at once. A local lock is
  an flock on `.mbeir-cot.lock` (the kernel drops it when the holder dies, so a killed run never blocks the
  rerun); on an object store the lock is an object renewed every minute and taken over once it has expired.

    with claim_output_dir(out, command="pipeline", patterns=OWN_FILES, overwrite=opts.overwrite) as folder:
        folder.remove_own("data")   # only what this command wrote under data/; a user's file there stays
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.errors import ConfigError, OutputError

MARKER = ".mbeir-cot.json"
LOCK = ".mbeir-cot.lock"
REMOTE_LOCK_TTL_S = 300.0  # an object-store lock not renewed for this long belongs to a run that died
_RENEW_EVERY_S = 60.0


def _holder(command: str) -> dict:
    return {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())}


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since})"


@dataclass
class OutputDir:
    """A claimed output folder: `path` plus the patterns (relative, '/'-separated globs) of what the command
    writes. Only files matching them are ever removed."""

    path: str
    command: str
    patterns: tuple[str, ...]
    fs: _Files

    def is_own(self, relative: str) -> bool:
        return any(fnmatch.fnmatchcase(relative, p) for p in self.patterns)

    def own_files(self, prefix: str = "") -> list[str]:
        """Relative paths of this command's files under `prefix` (a sub-folder, or "" for all)."""
        return [rel for rel in self.fs.list(prefix) if self.is_own(rel)]

    def remove_own(self, prefix: str = "") -> list[str]:
        """Delete this command's files under `prefix`, then the folders that leaves empty (under a `prefix`: every
        empty one); every other file stays. Returns what was removed."""
        removed = self.own_files(prefix)
        self.fs.delete(removed, prefix)
        return removed

    def sub(self, relative: str) -> OutputDir:
        """The sub-folder `relative` as an OutputDir of its own (same lock): the patterns that reach into it,
        relative to it. For a scratch folder of the command ("_plan/*") everything in it is its own."""
        head = relative.strip("/") + "/"
        patterns = tuple(p[len(head):] for p in self.patterns if p.startswith(head))
        path = _join(self.path, head.rstrip("/"))
        return OutputDir(path, self.command, patterns, _files_for(path))


def _join(path: str, relative: str) -> str:
    return f"{path.rstrip('/')}/{relative}" if relative else path


@contextmanager
def claim_output_dir(path: str | os.PathLike, *, command: str, patterns: Sequence[str],
                     legacy: Sequence[str] = (), overwrite: bool = False, flag: str = "--output_dir",
                     shared: bool = False) -> Iterator[OutputDir]:
    """Check the folder against the contract, lock it, mark it as `command`'s, and yield it; ConfigError (exit 2)
    when it is someone else's or another run holds it. `legacy`: globs of files only this command writes, which
    recognise its output from before markers existed. `shared`: for the independent jobs of one run that write
    disjoint files (trainer.evaluate's shard jobs): they hold the folder together, and an exclusive claim is
    refused while any of them does (local folders; on an object store every claim is exclusive)."""
    path = str(path)
    fs = _files_for(path)
    check = (fs, command, tuple(patterns), tuple(legacy), overwrite, flag)
    _check(*check)  # a folder that is refused is left as it was: no lock file
    with fs.lock(_holder(command), flag, shared):
        owned = _check(*check)  # again, now that no other run can change it
        if not owned:
            fs.write_text(MARKER, json.dumps({"command": command}, sort_keys=True) + "\n")
        yield OutputDir(path, command, tuple(patterns), fs)


def check_output_dir(path: str | os.PathLike, *, command: str, patterns: Sequence[str], legacy: Sequence[str] = (),
                     overwrite: bool = False, flag: str = "--output_dir") -> None:
    """claim_output_dir's refusal without claiming or writing anything: for a command that must probe or create
    the folder before it can claim it. The claim checks again under its lock."""
    path = str(path)
    _check(_files_for(path), command, tuple(patterns), tuple(legacy), overwrite, flag)


def _check(fs: _Files, command: str, patterns: tuple[str, ...], legacy: tuple[str, ...], overwrite: bool,
           flag: str) -> bool:
    """True when the folder already is `command`'s; raises when it may not be written."""
    entries = [rel for rel in fs.list("") if not rel.startswith((MARKER, LOCK))]
    marker = fs.read_json(MARKER)
    if marker is not None and marker.get("command") == command:
        return True
    if marker is None and not entries:
        return False
    if marker is None and any(fnmatch.fnmatchcase(rel, p) for rel in entries for p in legacy):
        return False  # written by this command before markers existed
    owner = (f"the output of {marker.get('command')}" if marker
             else f"files this command did not write ({', '.join(entries[:3])})")
    if not overwrite:
        raise ConfigError(f"{flag} {fs.root} holds {owner}; choose an empty folder, or pass --overwrite to write "
                          "beside them (files this command did not write are never deleted or replaced)")
    in_the_way = [rel for rel in entries if any(fnmatch.fnmatchcase(rel, p) for p in patterns)]
    if in_the_way:
        raise ConfigError(f"{flag} {fs.root}: {in_the_way[0]} is in the way of this command's outputs and was not "
                          "written by it; move it away or choose another folder")
    return False


class _Files(Protocol):
    """The few file operations the contract needs, on a local folder or a Beam FileSystems path."""

    root: str

    def list(self, prefix: str) -> list[str]: ...
    def read_json(self, relative: str) -> dict | None: ...
    def write_text(self, relative: str, text: str) -> None: ...
    def delete(self, relatives: Sequence[str], prefix: str = "") -> None: ...
    def lock(self, holder: dict, flag: str, shared: bool) -> AbstractContextManager: ...


def _files_for(path: str) -> _Files:
    if "://" in path and not path.startswith("file://"):
        return _RemoteFiles(path)
    return _LocalFiles(path.removeprefix("file://"))


class _LocalFiles:
    def __init__(self, root: str):
        self.root = root
        self.dir = Path(root)

    def list(self, prefix: str) -> list[str]:
        base = self.dir / prefix if prefix else self.dir
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.dir).as_posix() for p in base.rglob("*") if p.is_file() or p.is_symlink())

    def read_json(self, relative: str) -> dict | None:
        try:
            data = json.loads((self.dir / relative).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_text(self, relative: str, text: str) -> None:
        partial = self.dir / f"{relative}.tmp-{os.getpid()}"  # replaced whole: a reader never sees half of it
        partial.write_text(text)
        os.replace(partial, self.dir / relative)

    def delete(self, relatives: Sequence[str], prefix: str = "") -> None:
        for rel in relatives:
            (self.dir / rel).unlink(missing_ok=True)
        folders = {p for rel in relatives for p in Path(rel).parents if p != Path(".")}
        if prefix and (self.dir / prefix).is_dir():
            base = self.dir / prefix
            folders |= {Path(prefix), *(p.relative_to(self.dir) for p in base.rglob("*") if p.is_dir())}
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            try:
                (self.dir / folder).rmdir()  # only when it is empty
            except OSError:
                pass

    @contextmanager
    def lock(self, holder: dict, flag: str, shared: bool):
        import fcntl

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{flag} {self.root}: cannot write there ({e.strerror or e}); choose another folder "
                              "or fix its permissions") from e
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                current = _parse(os.pread(fd, 4096, 0))
                raise ConfigError(f"{flag} {self.root} is being written by another run: {_describe(current)}; "
                                  "wait for it to finish or choose another folder") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            try:
                yield
            finally:
                if not shared or _last_holder(fd):
                    os.ftruncate(fd, 0)  # a finished run leaves an empty lock file: outputs stay byte-identical
        finally:
            os.close(fd)  # closing drops the flock


def _last_holder(fd: int) -> bool:
    """True when no other process shares the lock (trying the exclusive lock gives up this one's shared lock
    either way: it is released next)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _parse(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode() or "{}")
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


class _RemoteFiles:
    """gs://, s3:// ... through Beam's FileSystems (imported only here: the trainer never needs Beam)."""

    def __init__(self, root: str):
        try:
            from apache_beam.io.filesystems import FileSystems
        except ImportError:
            raise ConfigError(f"{root}: an object-store folder is reached through apache-beam's FileSystems, which "
                              "is not installed here; give a local folder") from None

        self.root = root.rstrip("/")
        self.fs = FileSystems

    def _join(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def list(self, prefix: str) -> list[str]:
        pattern = self._join(prefix).rstrip("/") + "/**"
        found = self.fs.match([pattern])[0].metadata_list
        return sorted(m.path[len(self.root) + 1:] for m in found)

    def read_json(self, relative: str) -> dict | None:
        if not self.fs.exists(self._join(relative)):
            return None
        with self.fs.open(self._join(relative)) as fh:
            return _parse(fh.read()) or None

    def write_text(self, relative: str, text: str) -> None:
        with self.fs.create(self._join(relative)) as fh:
            fh.write(text.encode())

    def delete(self, relatives: Sequence[str], prefix: str = "") -> None:
        if relatives:
            self.fs.delete([self._join(r) for r in relatives])
        folder = self._join(prefix)  # object stores have no folders; a FileSystem with folders may keep empty ones
        if prefix and self.fs.get_filesystem(folder).has_dirs() and self.fs.exists(folder) and not self.list(prefix):
            self.fs.delete([folder])

    @contextmanager
    def lock(self, holder: dict, flag: str, shared: bool):  # an object-store lock is always exclusive
        current = self.read_json(LOCK)
        if current and current.get("expires", 0) > time.time():
            raise ConfigError(f"{flag} {self.root} is being written by another run: {_describe(current)}; wait "
                              f"for it to finish (a lock not renewed for {REMOTE_LOCK_TTL_S:.0f} s expires) or "
                              "choose another folder")
        stop = threading.Event()

        def write() -> None:
            self.write_text(LOCK, json.dumps({**holder, "expires": time.time() + REMOTE_LOCK_TTL_S}))

        def renew() -> None:
            while not stop.wait(_RENEW_EVERY_S):
                write()

        write()
        thread = threading.Thread(target=renew, daemon=True, name="output-lock")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.delete([LOCK])
