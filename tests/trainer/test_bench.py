"""The routing/throughput benchmark produces its table, JSON and plot."""

import json

from tests.trainer.test_evaluate import BagOfWordsEmbedder, build_root
from trainer import bench


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
