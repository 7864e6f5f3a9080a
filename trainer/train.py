"""`python -m trainer.train`: the command line of trainer/training/cli.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trainer.training.cli", run_name="__main__", alter_sys=True)
