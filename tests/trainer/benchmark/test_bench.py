"""The routing/throughput benchmark produces its table, JSON and plot."""

import json

import torch

from common.cli import run_cli
from tests.trainer.benchmark.test_evaluate import BagOfWordsEmbedder, build_root
from trainer.benchmark import bench


def test_bench_table_json_and_plot(tmp_path, capsys):
    root = build_root(tmp_path / "mbeir")
    out = tmp_path / "bench"
    result = bench.main(["--mbeir_root", str(root), "--checkpoint", "unused", "--pairs", "mscoco_task0",
                         "cirr_task7", "--limit", "4", "--output_dir", str(out)], embedder=BagOfWordsEmbedder())
    rows = {(r["pair"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(p, m) for p in ("mscoco_task0", "cirr_task7") for m in ("direct", "always", "adaptive")}
    assert all(r["queries"] == 4 and r["qps"] > 0 for r in rows.values())
    assert rows[("cirr_task7", "adaptive")]["share_reasoned"] == 1.0
    assert rows[("mscoco_task0", "adaptive")]["share_reasoned"] == 0.0
    assert rows[("mscoco_task0", "always")]["mean_generated_tokens"] == 7.0
    assert rows[("mscoco_task0", "direct")]["recall"] == 1.0  # restricted to the 4 benchmarked queries
    assert json.loads((out / "bench.json").read_text())["rows"] == result["rows"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "cirr_task7 | adaptive | 4 |" in printed and "6.48 / 57.03" in printed


def test_bad_input_is_one_line(tmp_path, capsys):
    root = build_root(tmp_path / "mbeir")
    base = ["--mbeir_root", str(root), "--checkpoint", str(tmp_path), "--output_dir", str(tmp_path / "b")]
    cases = [
        (["--mbeir_root", str(tmp_path / "gone"), *base[2:]], f"--mbeir_root {tmp_path / 'gone'} is not a folder"),
        ([*base, "--limit", "0"], "argument --limit: 0 is below the minimum 1"),
        ([*base, "--modes", "fast"], "argument --modes: invalid choice: 'fast'"),
        ([*base, "--pairs", "mscoco_task9"], "--pairs: unknown pairs ['mscoco_task9']"),
        ([*base, "--pairs", "mscoco_task0"], f"--checkpoint {tmp_path} is not a TRACE checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*base, "--device", "cuda:0"], "--device cuda:0: no CUDA GPU is visible here"))
    for argv, message in cases:
        assert run_cli(bench.main, argv, prog="python -m trainer.bench") == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
