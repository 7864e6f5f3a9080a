"""`python -m trainer.train`: the command line of trainer/training/loop.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trainer.training.loop", run_name="__main__", alter_sys=True)
