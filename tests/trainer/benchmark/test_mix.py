"""`python -m trainer.bench --mix`: the workload, bench.json per mode, adaptive against its ideal, bad mixes."""

import json

import pytest

from common.cli import run_cli
from tests.trainer.benchmark.test_evaluate import BagOfWordsEmbedder, build_root
from trainer.benchmark import bench, mix


def test_mix_parsing_counts_and_paper_names():
    assert mix.parse_mix("bypass96") == [mix.MixPart("mscoco_task0", 0.96), mix.MixPart("cirr_task7", 0.04)]
    assert mix.counts(mix.parse_mix("mscoco_task0:0.5,cirr_task7:0.3,webqa_task1:0.2"), 7) == {
        "mscoco_task0": 4, "cirr_task7": 2, "webqa_task1": 1}
    for bad, message in [("mscoco_task0:0.9", "sum to 0.9"), ("mscoco_task0", "PAIR:SHARE"),
                         ("mscoco_task0:x,cirr_task7:1", "PAIR:SHARE"), ("coco_task0:1", "unknown pairs"),
                         ("cirr_task7:0.5,cirr_task7:0.5", "twice")]:
        with pytest.raises(ValueError, match=message):
            mix.parse_mix(bad)


def test_mix_bench_writes_every_mode_and_the_ideal(tmp_path, capsys):
    root = build_root(tmp_path / "mbeir")
    out = tmp_path / "bench"
    result = bench.main(["--mbeir_root", str(root), "--checkpoint", "unused", "--mix",
                         "mscoco_task0:0.75,cirr_task7:0.25", "--queries", "20", "--output_dir", str(out)],
                        embedder=BagOfWordsEmbedder())
    assert result["pair_queries"] == {"mscoco_task0": 15, "cirr_task7": 5}  # 8 mscoco queries, repeated
    modes = result["modes"]
    assert list(modes) == ["direct", "always", "adaptive"] and all(m["qps"] > 0 for m in modes.values())
    assert modes["adaptive"]["share_reasoned"] == 0.25 and modes["always"]["share_reasoned"] == 1.0
    assert modes["adaptive"]["mean_generated_tokens"] == 0.25 * 7
    t_direct, t_always = modes["direct"]["seconds"] / 20, modes["always"]["seconds"] / 20
    ideal = 1 / (t_direct + 0.25 * (t_always - t_direct))
    assert modes["adaptive"]["ideal_qps"] == pytest.approx(ideal, rel=1e-3)
    assert modes["adaptive"]["ratio_to_ideal"] == pytest.approx(modes["adaptive"]["qps"] / ideal, abs=2e-3)
    assert modes["adaptive"]["ratio_to_direct"] == pytest.approx(modes["adaptive"]["qps"] / modes["direct"]["qps"],
                                                                 abs=2e-3)
    parts = modes["adaptive"]["parts"]  # direct and always over the 5 queries adaptive reasoned
    assert parts["queries"] == 5 and parts["always"]["seconds"] > 0 and parts["direct"]["seconds"] > 0
    parts_t = t_direct + (parts["always"]["seconds"] - parts["direct"]["seconds"]) / 20
    assert modes["adaptive"]["parts_ideal_qps"] == pytest.approx(1 / parts_t, rel=1e-3)
    assert modes["adaptive"]["ratio_to_parts_ideal"] == pytest.approx(parts_t / (modes["adaptive"]["seconds"] / 20),
                                                                      abs=2e-3)
    assert {"cpu_ratio_to_ideal", "cpu_ratio_to_direct", "cpu_ratio_to_parts_ideal"} <= set(modes["adaptive"])
    assert json.loads((out / "bench.json").read_text())["modes"] == modes
    assert "adaptive | " in capsys.readouterr().out


def test_parts_ideal_is_direct_when_nothing_reasons():
    modes = {"direct": {"seconds": 1.0}, "always": {"seconds": 3.0},
             "adaptive": {"seconds": 1.25, "share_reasoned": 0.0}}
    out = mix.ideal(modes, 10, parts={"queries": 0})
    assert out["parts_ideal_qps"] == out["ideal_qps"] == 10.0 and out["ratio_to_parts_ideal"] == 0.8


def test_bad_mix_is_one_line_exit_2(tmp_path, capsys):
    root = build_root(tmp_path / "mbeir")
    argv = ["--mbeir_root", str(root), "--checkpoint", "unused", "--output_dir", str(tmp_path / "b")]
    for value, message in (("mscoco_task0:0.5", "--mix shares sum to 0.5; make them sum to 1"),
                           ("mscoco_task0", "--mix item 'mscoco_task0' must be PAIR:SHARE"),
                           ("nosuch_task9:1", "nosuch_task9")):
        status = run_cli(lambda a: bench.main(a, embedder=BagOfWordsEmbedder()), [*argv, "--mix", value],
                         prog="python -m trainer.bench")
        err = capsys.readouterr().err
        assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert message in err, err
    status = run_cli(bench.main, [*argv, "--mix", "bypass96", "--queries", "0"], prog="python -m trainer.bench")
    assert status == 2 and "argument --queries: 0 is below the minimum 1" in capsys.readouterr().err
