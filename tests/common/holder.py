"""What every command's output-folder tests share: another run holding the folder in a process of its own (the
second-run and killed-run cases), and the check of a refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_HOLD = ("import sys, time; from common.outdir import claim_output_dir\n"
         "with claim_output_dir(sys.argv[1], command=sys.argv[2], patterns=()):\n"
         "    print('held', flush=True); time.sleep(120)\n")


@contextmanager
def held_elsewhere(path: str | os.PathLike, command: str) -> Iterator[subprocess.Popen]:
    """A process that has claimed `path` as `command` and sleeps holding it; killed when the block ends."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), command], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        kill(child)


def kill(child: subprocess.Popen) -> None:
    """SIGKILL: the holder gets no chance to release anything."""
    if child.poll() is None:
        child.kill()
    child.wait()
    child.stdout.close()


def refused(capsys, status: int, *needles: str) -> str:
    """The command refused its output folder as the contract says: exit 2, one line on stderr naming `needles`,
    no traceback."""
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err
