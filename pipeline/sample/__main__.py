"""`python -m pipeline.sample --out DIR [--seed 0] [--scale N] [--overwrite]`: write the mini-M-BEIR sample."""

from __future__ import annotations

import argparse
import json
import sys
import time

from common.cli import CliParser, int_at_least, run_cli
from common.errors import OutputError
from pipeline.sample.generate import MAX_SCALE, write_sample

PROG = "python -m pipeline.sample"


def _scale(text: str) -> int:
    value = int_at_least(1)(text)
    if value > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"{value} is above the maximum {MAX_SCALE}")
    return value


def _main(argv: list[str]) -> None:
    parser = CliParser(prog=PROG, description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (local or any Beam FileSystems path): new, "
                        "empty, or an earlier sample (marked by .mbeir-cot.json or .complete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files: they stay untouched, and one named like a "
                             "sample file (a real M-BEIR tree) stops the command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=_scale, default=1, help=f"multiplies train queries (1..{MAX_SCALE})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = write_sample(args.out, overwrite=args.overwrite, flag="--out", seed=args.seed, scale=args.scale)
    except OSError as e:
        raise OutputError(f"--out {args.out}: cannot write the sample there ({e.strerror or e})") from e
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
