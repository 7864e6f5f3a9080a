"""`make dataset`: build M-BEIR-CoT end to end with no network and no key.

Without --mbeir_root it writes the embedded mini-M-BEIR next to the output (once, into a folder mbeir-sample that
follows the same output-folder contract as --output_dir, --overwrite included) and reads that. Without
TEACHER_BASE_URL in the environment it starts the bundled reference teacher (an offline stand-in, NOT a
model: its CoT is built from the prompt's own fields) on a free loopback port and stops it afterwards.
With TEACHER_BASE_URL and TEACHER_MODEL (and the key in OPENAI_API_KEY, or the variable named by
--api_key_env) it uses that server instead. Other flags go to `python -m pipeline` unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from common.cli import run_cli
from common.errors import ConfigError, OutputError
from pipeline.__main__ import main as pipeline_main
from pipeline.outputs import refuse_foreign
from pipeline.sample.generate import COMPLETE, write_sample

REFERENCE_MODEL = "reference-teacher"


def _sample_root(output_dir: str, overwrite: bool) -> str:
    root = os.path.join(os.path.dirname(os.path.abspath(output_dir.rstrip("/"))), "mbeir-sample")
    if not os.path.exists(os.path.join(root, COMPLETE)):
        print(f"writing the embedded mini-M-BEIR sample to {root}")
        try:
            write_sample(root, overwrite=overwrite, flag="the sample folder next to --output_dir,")
        except OSError as e:
            raise OutputError(f"cannot write the sample to {root}: {e.strerror or e}; choose another "
                              "--output_dir (the sample goes next to it) or fix its permissions") from e
    return root


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output_dir", default="out/m-beir-cot")
    parser.add_argument("--mbeir_root", default=None)
    parser.add_argument("--overwrite", action="store_true")
    known, rest = parser.parse_known_args(argv)
    refuse_foreign(known.output_dir, known.overwrite)  # before the sample is written next to it
    root = known.mbeir_root or _sample_root(known.output_dir, known.overwrite)
    args = ["--mbeir_root", root, "--output_dir", known.output_dir, *(["--overwrite"] if known.overwrite else []),
            *rest]
    base_url, model = os.environ.get("TEACHER_BASE_URL"), os.environ.get("TEACHER_MODEL")
    with contextlib.ExitStack() as stack:
        if base_url:
            if not model:
                raise ConfigError("TEACHER_BASE_URL is set but TEACHER_MODEL is not: export TEACHER_MODEL too")
        else:
            from pipeline.teacher.reference.server import ReferenceServer

            server = stack.enter_context(ReferenceServer())
            base_url, model = server.base_url, REFERENCE_MODEL
            print(f"teacher: the bundled OFFLINE REFERENCE TEACHER at {base_url} (a stand-in, not a model); "
                  "set TEACHER_BASE_URL and TEACHER_MODEL to use a real one")
        return pipeline_main(["--teacher_base_url", base_url, "--teacher_model", model, *args])


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="python -m pipeline.make_dataset")


if __name__ == "__main__":
    sys.exit(main())
