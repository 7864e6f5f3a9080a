"""`python -m trainer.serve`: the command line of trainer/serving/cli.py (an OpenAI-compatible embeddings server)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trainer.serving.cli", run_name="__main__", alter_sys=True)
