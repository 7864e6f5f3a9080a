"""`python -m pipeline.sample --out DIR [--seed 0] [--scale N]`: write the mini-M-BEIR sample."""

from __future__ import annotations

import argparse
import json
import time

from pipeline.sample.generate import MAX_SCALE, generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sample", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (local or any Beam FileSystems path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1, help=f"multiplies train queries (1..{MAX_SCALE})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = generate(args.out, seed=args.seed, scale=args.scale)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
