"""The one error style of every command line (DESIGN.md): a bad path, file, flag or value is ONE line on stderr
that names it and says what to change, exit status 2 (input/configuration) or 3 (output); no traceback unless
`--debug` is given or MBEIR_DEBUG=1 is set. Anything else is a bug and keeps its traceback.

    def main(argv=None): ...            # raises ConfigError / OutputError, parses with CliParser
    if __name__ == "__main__":
        sys.exit(run_cli(main, prog="python -m trainer.train"))

Beam-free, so the trainer uses it too.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import ConfigError, OutputError
from common.redact import redact

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MBEIR_DEBUG"
INPUT_STATUS, OUTPUT_STATUS = 2, 3
_FULL_DEVICE = {errno.ENOSPC, errno.EDQUOT}


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


class CliParser(argparse.ArgumentParser):
    """argparse whose errors are one ConfigError line (no usage dump); a mistyped flag gets a suggestion, and
    abbreviations are off (a prefix silently taken for another flag is the worse surprise)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true",
                          help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")

    def parse_args(self, args=None, namespace=None):
        """An unknown --flag is named before anything else (a mistyped flag would otherwise surface as
        'the following arguments are required')."""
        args = list(sys.argv[1:] if args is None else args)
        tokens = args[:args.index("--")] if "--" in args else args
        known = set(self.option_strings())
        unknown = [t for t in tokens if t.startswith("--") and t.split("=", 1)[0] not in known]
        if unknown and self.allow_abbrev is False:
            self.error("unrecognized arguments: " + " ".join(unknown))
        return super().parse_args(args, namespace)

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            message = unknown_flags_message(message.split(": ", 1)[1].split(), self.option_strings())
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def option_strings(self) -> list[str]:
        """Every flag this parser or its sub-commands know."""
        flags = [s for a in self._actions for s in a.option_strings]
        for action in self._actions:
            if isinstance(getattr(action, "choices", None), dict):  # sub-commands: name -> parser
                flags += [s for sub in action.choices.values() if isinstance(sub, CliParser)
                          for s in sub.option_strings()]
        return flags


def unknown_flags_message(args: Sequence[str], known: Sequence[str]) -> str:
    """'unknown flag --batch_size (did you mean --global_batch or --micro_batch?)' for the flags among args."""
    flags = [a.split("=", 1)[0] for a in args if a.startswith("-")] or list(args)
    parts = []
    for flag in flags:
        close = suggestions(flag, known)
        parts.append(flag + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return f"unknown flag{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def suggestions(flag: str, known: Sequence[str], most: int = 3) -> list[str]:
    """Known flags that look like a mistyping of `flag`: close spellings, else flags sharing one of its words."""
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
    if close:
        return close
    words = {w for w in flag.lstrip("-").replace("-", "_").split("_") if len(w) >= 3}
    return sorted(k for k in known if words & set(k.lstrip("-").split("_")))[:most]


def writable_folder(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Create a local output folder and prove it writable with a probe file; OutputError (exit 3) otherwise."""
    out = Path(path)
    probe = out / f".write-probe-{uuid.uuid4().hex}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{flag} {out}: cannot write there ({e.strerror or e}); choose another folder or fix "
                          "its permissions") from e
    return out


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL_DEVICE


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, *, prog: str) -> int:
    """Run main(argv); ConfigError -> 2, OutputError or a full disk -> 3, each as one line on stderr.

    main's return value is the exit status when it is an int, else 0. `--debug` stays in argv (CliParser
    knows it); mains with other parsers must drop it themselves.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        status = main(argv)
    except ConfigError as e:
        return _report(prog, "error", e, INPUT_STATUS, debug)
    except OutputError as e:
        return _report(prog, "output error", e, OUTPUT_STATUS, debug)
    except OSError as e:
        if not _disk_full(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        return _report(prog, "output error", OutputError(f"no space left on the device{where}: free some space "
                                                         "or choose another output folder, then rerun"),
                       OUTPUT_STATUS, debug, cause=e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _report(prog: str, kind: str, error: BaseException, status: int, debug: bool,
            cause: BaseException | None = None) -> int:
    if debug:
        print(redact("".join(traceback.format_exception(cause or error))), end="", file=sys.stderr)
    text = "; ".join(line.strip() for line in redact(str(error)).splitlines() if line.strip())
    print(f"{prog}: {kind}: {text}", file=sys.stderr)
    return status


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low (the message names the bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def boolean(text: str) -> bool:
    """argparse type: true/false, yes/no, 1/0 (any case)."""
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return value
