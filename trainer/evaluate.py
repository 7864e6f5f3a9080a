"""`python -m trainer.evaluate`: the command line of trainer/benchmark/evaluate.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trainer.benchmark.evaluate", run_name="__main__", alter_sys=True)
