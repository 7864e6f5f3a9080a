import os
import re
import subprocess
import sys


def test_gpu_check_runs_on_cpu_with_tiny_and_prints_throughput():
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "scripts/gpu_check_train.py", "--tiny", "--steps", "3"], env=env,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert re.search(r"samples/s=[0-9.]+ tokens/s=[0-9]+", out), out
    assert "model_flops_per_s=" in out
