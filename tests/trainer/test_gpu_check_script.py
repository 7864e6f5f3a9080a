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


def test_gpu_check_builds_the_2b_shapes():
    """The H200 run builds Qwen2-VL-2B from the tiny config resized: every layer needs its attention type."""
    import importlib.util

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from trainer.modeling.tiny import build_tokenizer

    spec = importlib.util.spec_from_file_location("gpu_check_train", "scripts/gpu_check_train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(script.qwen2_vl_2b_config(build_tokenizer()))
    assert 2.1e9 < sum(p.numel() for p in model.parameters()) < 2.3e9  # Qwen2-VL-2B-Instruct: 2.21B
