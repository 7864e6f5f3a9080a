"""`python -m trainer.bench`: the command line of trainer/benchmark/bench.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trainer.benchmark.bench", run_name="__main__", alter_sys=True)
