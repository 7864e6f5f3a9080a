"""`python -m trainer.evaluate`: the command line of trainer/benchmark/evaluate.py, and with a first argument
`mteb`, mteb's evaluation of a checkpoint (trainer/integrations/mteb_run.py)."""

import runpy
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["mteb"]:
        from common.cli import run_cli
        from trainer.integrations.mteb_run import PROG, main

        sys.exit(run_cli(main, sys.argv[2:], prog=PROG))
    runpy.run_module("trainer.benchmark.evaluate", run_name="__main__", alter_sys=True)
