"""scripts/bench_pipeline.py end to end at toy sizes: it runs, prints every figure and writes the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_pipeline_prints_and_records_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    printed = subprocess.run(
        [sys.executable, "scripts/bench_pipeline.py", "--sizes", "400,800", "--direct_sizes", "400,800",
         "--latency_ms", "5", "--work_dir", str(tmp_path / "work"), "--json", str(out)],
        env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    assert "teacher" in printed and "req/s" in printed and "partitions 1" in printed
    report = json.loads(out.read_text())
    full = report["results"]
    assert [r["size"] for r in full] == [400, 800] and all(r["mode"] == "full" for r in full)
    assert all(r["teacher_requests"] > 0 and r["peak_rss_mib"] > 0 and r["cpu_s"] > 0 for r in full)
    assert [r["input"] for r in report["direct"]] == [240, 480]  # 6 of the 10 datasets route direct
    assert all(r["teacher_requests"] == 0 and r["reasoning"] == 0 for r in report["direct"])
    assert set(report["checks"]) == {"cpu_ms_per_direct_row", "marginal_cpu_ms_per_row", "memory_growth"}
    assert report["machine"]["cpus"] >= 1


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_pipeline", "scripts/bench_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_images_are_mbeir_sized_rgb_jpegs():
    import io

    from PIL import Image

    bench = _bench_module()
    textures = bench._textures()
    photos = [bench.photo_jpeg(i, textures) for i in range(40)]
    assert len(set(photos)) == len(photos)
    for data in photos:
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.mode, min(img.size)) == ("JPEG", "RGB", 256)
        assert 20_000 <= len(data) <= 40_000


def test_reasoning_only_makes_two_requests_per_query(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run(
        [sys.executable, "scripts/bench_pipeline.py", "--reasoning_only", "--sizes", "160", "--direct_sizes", "",
         "--latency_ms", "5", "--work_dir", str(tmp_path / "work"), "--json", str(out)],
        env=env, capture_output=True, text=True, check=True, timeout=600)
    (run,) = json.loads(out.read_text())["results"]
    assert run["reasoning_only"] and run["input"] == run["reasoning"] == 160 and run["direct"] == 0
    assert run["teacher_requests"] == 2 * run["accepted"] == 320  # distinct queries: a CoT and a verifier each
    assert run["cpu_ms_per_reasoning_row"] > 0 and run["cpu_ms_per_direct_row"] is None
    assert 0 < run["cores_used"] and run["teacher_rps"] > 0
