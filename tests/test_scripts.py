"""The scripts users run answer bad flags and paths in the project's error style: one line, exit 2."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


CASES = [
    ("bench_pipeline", ["--sizes", "10k"], "argument --sizes: '10k': give comma-separated whole numbers"),
    ("bench_pipeline", ["--direct_sizes", "0"], "argument --direct_sizes: '0': every size must be at least 1"),
    ("bench_teacher", ["--requests", "0"], "argument --requests: 0 is below the minimum 1"),
    ("bench_teacher", ["--latency_ms", "0"], "--latency_ms 0.0 is out of range: it must be above 0"),
    ("chaos_run", ["--mbeir_root", "/no/such/root"], "--mbeir_root /no/such/root is not a folder"),
    ("chaos_run", ["--kill", "2"], "unknown flag --kill (did you mean --kills?)"),
    ("llama_server", ["serve", "--prot", "1"], "unknown flag --prot (did you mean --port?)"),
    ("llama_server", ["stop", "--port", "1"], "--port 1: no server was started there"),
    ("bench_global_pool", ["--k", "0"], "argument --k: 0 is below the minimum 1"),
    ("bench_global_pool", ["--checkpoint", "/no/ckpt"], "--checkpoint /no/ckpt is not a folder"),
    ("gpu_check_train", ["--global_batch", "-2"], "argument --global_batch: -2 is below the minimum 1"),
    ("gpu_check_train", ["--tiny", "--global_batch", "4", "--micro_batches", "8"],
     "--micro_batches [8] has a value above --global_batch 4"),
    ("bench_gradcache", ["--micro_batch", "0"], "argument --micro_batch: 0 is below the minimum 1"),
    ("bench_gradcache", ["--global_batches", "4"], "--global_batches [4]: each must be at least --micro_batch 8"),
]
if not torch.cuda.is_available():
    CASES += [("bench_global_pool", ["--device", "cuda"], "--device cuda: no CUDA GPU is visible here"),
              ("gpu_check_train", [], "no CUDA GPU is visible here: this check needs one (or add --tiny")]


@pytest.mark.parametrize("name, argv, message", CASES)
def test_script_bad_input_is_one_line(capsys, name, argv, message):
    assert script(name).main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python ") and ": error: " in err and message in err, err
