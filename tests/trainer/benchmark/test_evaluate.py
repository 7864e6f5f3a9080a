"""The evaluator end to end on a crafted mini M-BEIR root with a small deterministic embedder."""

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.cli import run_cli
from trainer.benchmark import evaluate
from trainer.modeling.interface import EncodeResult

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
REASONING_DATASETS = {"cirr", "fashioniq", "oven", "infoseek"}


class BagOfWordsEmbedder:
    """Fixed model: hashed bag of words (64 dims) + colour votes (4 dims) from colour words or image pixels."""

    fingerprint = "bow-colour-v1"

    def __init__(self):
        self.candidates_embedded = 0

    def _embed(self, text, image) -> torch.Tensor:
        v = torch.zeros(68)
        for w in (text or "").lower().replace(".", " ").split():
            v[zlib.crc32(w.encode()) % 64] += 0.2
            if w in COLOURS:
                v[64 + list(COLOURS).index(w)] += 1.0
        if image is not None:
            r, g, b = (sum(c) / len(c) for c in zip(*image.getdata(), strict=True))
            best = min(COLOURS, key=lambda n: sum((x - y) ** 2 for x, y in zip(COLOURS[n], (r, g, b), strict=True)))
            v[64 + list(COLOURS).index(best)] += 1.0
        return torch.nn.functional.normalize(v, dim=0) if v.any() else v

    def encode_queries(self, queries, mode="adaptive", max_new_tokens=128, batch_size=8):
        reasoned = [mode == "always" or (mode == "adaptive" and q.dataset in REASONING_DATASETS) for q in queries]
        return EncodeResult(torch.stack([self._embed(q.text, q.image) for q in queries]), reasoned,
                            [7 if r else 0 for r in reasoned], ["" for _ in queries])

    def encode_candidates(self, candidates, batch_size=32):
        self.candidates_embedded += len(candidates)
        return torch.stack([self._embed(c.text, c.image) for c in candidates])


def _jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _img(root: Path, rel: str, colour: str):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), COLOURS[colour]).save(root / rel)


def build_root(root: Path) -> Path:
    """mscoco_task0 (t→i), webqa_task1 (t→t), cirr_task7 ((i,t)→i): pools, queries, qrels, union pool."""
    colours = list(COLOURS)
    pools = {}
    # MSCOCO t→i: 8 image candidates (2 per colour); query n asks for a colour, positive is 9:(n).
    pools["mscoco_task0"] = [{"did": f"9:{i}", "txt": None, "img_path": f"mbeir_images/mscoco_images/{i}.jpg",
                              "modality": "image", "src_content": None} for i in range(8)]
    for i in range(8):
        _img(root, f"mbeir_images/mscoco_images/{i}.jpg", colours[i % 4])
    # one candidate whose image is missing: counted, never a crash
    pools["mscoco_task0"].append({"did": "9:8", "txt": None, "img_path": "mbeir_images/mscoco_images/gone.jpg",
                                  "modality": "image", "src_content": None})
    mscoco_q = [{"qid": f"9:{n}", "query_txt": f"a {colours[n % 4]} picture", "query_img_path": None,
                 "query_modality": "text", "query_src_content": None, "pos_cand_list": [f"9:{n}"],
                 "neg_cand_list": [], "task_id": 0} for n in range(8)]
    # WebQA t→t: documents about animals.
    animals = ["cat", "dog", "horse", "owl", "shark", "snake"]
    pools["webqa_task1"] = [{"did": f"2:{i}", "txt": f"The {a} is an animal that lives somewhere.",
                             "img_path": None, "modality": "text", "src_content": None}
                            for i, a in enumerate(animals)]
    webqa_q = [{"qid": f"2:{n}", "query_txt": f"where does the {a} live", "query_img_path": None,
                "query_modality": "text", "query_src_content": None, "pos_cand_list": [f"2:{n}"],
                "neg_cand_list": [], "task_id": 1} for n, a in enumerate(animals)]
    webqa_q.append({**webqa_q[0], "qid": "2:99", "pos_cand_list": ["2:12345"]})  # positive outside the pool
    # CIRR (i,t)→i: reference image + edit; the target has the requested colour.
    pools["cirr_task7"] = [{"did": f"8:{i}", "txt": None, "img_path": f"mbeir_images/cirr_images/t{i}.jpg",
                            "modality": "image", "src_content": None} for i in range(4)]
    for i in range(4):
        _img(root, f"mbeir_images/cirr_images/t{i}.jpg", colours[i])
        _img(root, f"mbeir_images/cirr_images/r{i}.jpg", colours[(i + 1) % 4])
    cirr_q = [{"qid": f"8:{n}", "query_txt": f"make it {colours[n]}",
               "query_img_path": f"mbeir_images/cirr_images/r{n}.jpg", "query_modality": "image,text",
               "query_src_content": None, "pos_cand_list": [f"8:{n}"], "neg_cand_list": [], "task_id": 7}
              for n in range(4)]
    cirr_q.append({**cirr_q[0], "qid": "8:9", "query_img_path": "mbeir_images/cirr_images/missing.jpg"})
    queries = {"mscoco_task0": mscoco_q, "webqa_task1": webqa_q, "cirr_task7": cirr_q}
    pool_files = {"mscoco_task0": "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl",
                  "webqa_task1": "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl",
                  "cirr_task7": "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl"}
    for pair, rows in queries.items():
        _jsonl(root / f"query/test/mbeir_{pair}_test.jsonl", rows)
        _jsonl(root / pool_files[pair], pools[pair])
        (root / f"qrels/test/mbeir_{pair}_test_qrels.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"qrels/test/mbeir_{pair}_test_qrels.txt").write_text(
            "".join(f"{q['qid']} 0 {d} 1 {q['task_id']}\n" for q in rows for d in q["pos_cand_list"]))
    union = sorted((c for rows in pools.values() for c in rows),
                   key=lambda c: tuple(map(int, c["did"].split(":"))))
    _jsonl(root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl", union)
    tsv = ["query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2",
           "text\timage\tMSCOCO\t9\tFind me an everyday image that matches the given caption.\tShow an image.",
           "text\ttext\tWebQA\t2\tRetrieve passages from Wikipedia that answer the question\tFind a passage.",
           "image,text\timage\tCIRR\t8\tRetrieve a day-to-day image that aligns with the modification\tEdit it."]
    (root / "instructions").mkdir(parents=True, exist_ok=True)
    (root / "instructions/query_instructions.tsv").write_text("\n".join(tsv) + "\n")
    return root


PAIRS = ["mscoco_task0", "webqa_task1", "cirr_task7"]


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return build_root(tmp_path_factory.mktemp("mbeir"))


@pytest.fixture(scope="module")
def evaluated(mini_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    emb = BagOfWordsEmbedder()
    argv = ["--mbeir_root", str(mini_root), "--checkpoint", "unused", "--pool", "both", "--pairs", *PAIRS,
            "--output_dir", str(out), "--seed", "0"]
    results = evaluate.main(argv, embedder=emb)
    return out, results, emb, argv


def test_evaluator_numbers_equal_scorer_on_its_run_files(evaluated, mini_root, capsys):
    out, results, _, _ = evaluated
    for pair in PAIRS:
        for tag, pool in (("local", "local"), ("union", "global")):
            run = out / "runs" / f"mbeir_{pair}_test_{tag}_run.txt"
            scored = evaluate.main(["score", "--run", str(run), "--qrels", str(mini_root / "qrels/test"),
                                    "--k", "1,5,10"])
            assert scored["pairs"][pair] == {k: results["pairs"][pair][pool][k]
                                             for k in ("Recall@1", "Recall@5", "Recall@10")}
    printed = capsys.readouterr().out
    assert '"pairs"' in printed


def test_results_are_sensible(evaluated):
    out, results, _, _ = evaluated
    mscoco, webqa, cirr = (results["pairs"][p] for p in PAIRS)
    # 8 queries, 2 same-colour images each in the local pool: R@5 finds the positive whenever colour is right.
    assert mscoco["queries"] == 8 and mscoco["local"]["Recall@5"] == 1.0
    # the query with its positive outside the pool is a miss: 6 of 7 at best
    assert webqa["queries"] == 7 and webqa["local"]["Recall@10"] == pytest.approx(6 / 7, abs=1e-4)
    # the CIRR query whose image is missing is still embedded and scored; it is counted
    assert cirr["queries"] == 5 and cirr["query_read"]["missing_images"] == 1
    assert results["pools"]["mscoco_task0"]["missing_images"] == 1
    assert results["pools"]["mscoco_task0"]["count"] == 8
    assert cirr["routing"] == {"share_reasoned": 1.0, "mean_generated_tokens": 7.0}
    assert mscoco["routing"]["share_reasoned"] == 0.0
    # the global pool holds everything: never better than the local pool for these queries
    for e in results["pairs"].values():
        assert e["global"]["Recall@10"] <= e["local"]["Recall@10"] + 1e-9
    assert results["average"]["local"] == pytest.approx(
        sum(e["local"]["Recall@5"] for e in results["pairs"].values()) / 3, abs=1e-4)


def test_output_files(evaluated):
    out, results, _, _ = evaluated
    tsv = (out / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["TaskID", "Task", "Dataset", "Split", "Metric", "CandPool", "Value",
                                  "UnionPool", "UnionValue"]
    cirr_r5 = next(r.split("\t") for r in tsv if "\tcirr_task7\t" in r and "\tRecall@5\t" in r)
    assert cirr_r5[0] == "7" and cirr_r5[2] == "CIRR"
    assert float(cirr_r5[6]) == pytest.approx(100 * results["pairs"]["cirr_task7"]["local"]["Recall@5"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["pairs"].keys() == results["pairs"].keys()
    line = (out / "runs/mbeir_cirr_task7_test_local_run.txt").read_text().splitlines()[0].split()
    assert len(line) == 7 and line[1] == "Q0" and line[3] == "1" and line[6] == "7"
    table = evaluate.format_table(results)
    assert "TRACE (paper)" in table and "this run (global)" in table and "(3/16 pairs)" in table


def test_candidate_cache_reused(evaluated, tmp_path):
    out, first, emb, argv = evaluated
    assert emb.candidates_embedded > 0
    emb.candidates_embedded = 0
    argv2 = [a if a != str(out) else str(tmp_path) for a in argv] + ["--cache_dir", str(out / "embedding_cache")]
    again = evaluate.main(argv2, embedder=emb)
    assert emb.candidates_embedded == 0
    assert all(p["from_cache"] for p in again["pools"].values())
    assert {p: e["local"] for p, e in again["pairs"].items()} == {p: e["local"] for p, e in first["pairs"].items()}


def test_seed_fixes_instructions(mini_root, tmp_path):
    a = evaluate.main(["--mbeir_root", str(mini_root), "--checkpoint", "x", "--pairs", "webqa_task1",
                       "--output_dir", str(tmp_path / "a")], embedder=BagOfWordsEmbedder())
    b = evaluate.main(["--mbeir_root", str(mini_root), "--checkpoint", "x", "--pairs", "webqa_task1",
                       "--output_dir", str(tmp_path / "b")], embedder=BagOfWordsEmbedder())
    assert (tmp_path / "a/runs/mbeir_webqa_task1_test_local_run.txt").read_text() == \
        (tmp_path / "b/runs/mbeir_webqa_task1_test_local_run.txt").read_text()
    assert a["pairs"]["webqa_task1"]["local"] == b["pairs"]["webqa_task1"]["local"]


def test_unknown_pair_is_a_clear_error(mini_root, tmp_path):
    with pytest.raises(ValueError, match="unknown pairs"):
        evaluate.main(["--mbeir_root", str(mini_root), "--checkpoint", "x", "--pairs", "cirr_task9",
                       "--output_dir", str(tmp_path)], embedder=BagOfWordsEmbedder())


def test_import_does_not_pull_beam_or_openai():
    code = "import sys, trainer.benchmark.evaluate, trainer.benchmark.bench; print(sorted({'apache_beam', 'openai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]"


def test_reading_mbeir_files_does_not_pull_beam():
    code = "import sys, trainer.benchmark.evalset as e; e.read_queries; import pipeline.mbeir.parse; print('apache_beam' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False"


# ---- bad input: one line naming the flag or file, exit 2 (3 for output), no traceback ----
def eval_cli(capsys, argv, main=evaluate.main, prog="python -m trainer.evaluate") -> tuple[int, str]:
    status = run_cli(main, argv, prog=prog)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), err
    return status, lines[0]


def _copy_root(src: Path, dst: Path, drop: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if drop:
        target = dst / drop
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return dst


def _fake_checkpoint(path: Path, **cfg) -> Path:
    path.mkdir(parents=True)
    (path / "trace_config.json").write_text(json.dumps({"base_model": "Qwen/Qwen2-VL-2B-Instruct", **cfg}))
    return path


@pytest.mark.parametrize("drop, extra, message", [
    ("query/test/mbeir_cirr_task7_test.jsonl", [], "lacks 1 file(s) of the test split: "
                                                   "query/test/mbeir_cirr_task7_test.jsonl; download them"),
    ("qrels/test", [], "lacks 3 file(s) of the test split: qrels/test/mbeir_mscoco_task0_test_qrels.txt"),
    ("cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl", [], "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl"),
    ("cand_pool/global", ["--pool", "global"], "cand_pool/global/mbeir_union_test_cand_pool.jsonl"),
    ("mbeir_images", [], "has no mbeir_images/ folder, and the selected pairs have images"),
])
def test_root_lacking_what_evaluation_reads(mini_root, tmp_path, capsys, drop, extra, message):
    root = _copy_root(mini_root, tmp_path / "root", drop)
    status, line = eval_cli(capsys, ["--mbeir_root", str(root), "--checkpoint", "x", "--pairs", *PAIRS,
                                     "--output_dir", str(tmp_path / "out"), *extra])
    assert status == 2 and f"--mbeir_root {root} " in line and message in line


def test_text_only_pair_needs_no_images(mini_root, tmp_path):
    root = _copy_root(mini_root, tmp_path / "root", "mbeir_images")
    evaluate.main(["--mbeir_root", str(root), "--checkpoint", "x", "--pairs", "webqa_task1", "--output_dir",
                   str(tmp_path / "out")], embedder=BagOfWordsEmbedder())


def test_bad_flags_paths_and_devices(mini_root, tmp_path, capsys):
    base = ["--mbeir_root", str(mini_root), "--checkpoint", "x", "--pairs", "webqa_task1", "--output_dir",
            str(tmp_path / "out")]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (["--mbeir_root", str(tmp_path / "nowhere"), *base[2:]], 2, f"--mbeir_root {tmp_path / 'nowhere'} is not a folder"),
        (["--mbeir_root", "hf://TIGER-Lab/M-BEIR", *base[2:]], 2, "evaluation reads a local M-BEIR folder"),
        ([*base, "--device", "cuda"], 2, "--device cuda: no CUDA GPU is visible here"),
        ([*base, "--device", "gpu"], 2, "--device 'gpu' is not a device"),
        ([*base, "--pairs", "cirr_task9"], 2, "--pairs: unknown pairs ['cirr_task9']"),
        ([*base, "--mode", "sometimes"], 2, "argument --mode: invalid choice: 'sometimes'"),
        ([*base, "--query_batch", "0"], 2, "argument --query_batch: 0 is below the minimum 1"),
        ([*base, "--cand_batch", "many"], 2, "argument --cand_batch: 'many' is not an integer"),
        ([*base, "--top_k", "-3"], 2, "argument --top_k: -3 is below the minimum 1"),
        ([*base, "--k", "1,x"], 2, "argument --k: '1,x': give comma-separated whole numbers"),
        ([*base, "--max_new_tokens", "-1"], 2, "argument --max_new_tokens: -1 is below the minimum 0"),
        ([*base, "--query-batch", "4"], 2, "unknown flag --query-batch (did you mean --query_batch?)"),
        ([*base, "--encode_chunk", "0"], 2, "argument --encode_chunk: 0 is below the minimum 1"),
        ([*base, "--num_workers", "-1"], 2, "argument --num_workers: -1 is below the minimum 0"),
        ([*base, "--progress", "maybe"], 2, "argument --progress: 'maybe' is not a boolean: use true or false"),
        ([*base, "--num_shards", "2"], 2, "--num_shards and --shard_index go together"),
        ([*base, "--num_shards", "2", "--shard_index", "2"], 2, "--shard_index 2: must be in 0..1"),
        ([*base, "--output_dir", str(blocker / "out")], 3, f"--output_dir {blocker / 'out'}: cannot write there"),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if "CUDA" not in c[2]]
    for argv, want, message in cases:
        status, line = eval_cli(capsys, argv)
        assert status == want and message in line, (argv, line)


def test_shard_flags_under_torchrun_are_one_line(mini_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, line = eval_cli(capsys, ["--mbeir_root", str(mini_root), "--checkpoint", "x", "--pairs", "webqa_task1",
                                     "--output_dir", str(tmp_path), "--num_shards", "2", "--shard_index", "0"])
    assert status == 2 and "under torchrun the ranks already share the work: drop the shard flags" in line


def test_flag_defaults_are_evalconfigs():
    a = evaluate.build_parser().parse_args(["--mbeir_root", "r", "--checkpoint", "c", "--output_dir", "o"])
    assert evaluate.config_from_args(a) == evaluate.EvalConfig(mbeir_root=Path("r"), output_dir=Path("o"))


def test_checkpoint_that_is_not_one(mini_root, tmp_path, capsys):
    base = ["--mbeir_root", str(mini_root), "--pairs", "webqa_task1", "--output_dir", str(tmp_path / "out")]
    trained = tmp_path / "trained"
    _fake_checkpoint(trained / "checkpoint-40", lora_r=8)
    cases = [
        (tmp_path / "missing", "is not a folder: give a checkpoint folder written by trainer.train"),
        (trained, "is not a TRACE checkpoint: no trace_config.json (it holds checkpoint-40/)"),
        (trained / "checkpoint-40", "is incomplete: no adapter/adapter_config.json"),
        (_fake_checkpoint(tmp_path / "full", lora_r=0), "is incomplete: no model weights"),
        (_fake_checkpoint(tmp_path / "odd", lora_rank=8), "trace_config.json is not a checkpoint config"),
        (_fake_checkpoint(tmp_path / "moved", lora_r=8, base_model="../tiny_base"),
         "was trained from the base model at '../tiny_base'"),
    ]
    (tmp_path / "moved" / "adapter").mkdir()
    (tmp_path / "moved" / "adapter" / "adapter_config.json").write_text("{}")
    for ckpt, message in cases:
        status, line = eval_cli(capsys, [*base, "--checkpoint", str(ckpt)])
        assert status == 2 and f"--checkpoint {ckpt}" in line and message in line, line


def test_cli_subprocess_wiring(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--mbeir_root", str(tmp_path / "none"),
                           "--checkpoint", "x", "--output_dir", str(tmp_path / "o")], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"python -m trainer.evaluate: error: --mbeir_root {tmp_path / 'none'}")


def test_checkpoint_with_cut_weights_is_one_line(mini_root, tiny_base, tmp_path, capsys):
    ckpt = tmp_path / "cut"
    shutil.copytree(tiny_base, ckpt)
    (ckpt / "trace_config.json").write_text(json.dumps({"base_model": ".", "lora_r": 0}))
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-copied checkpoint
    status, line = eval_cli(capsys, ["--mbeir_root", str(mini_root), "--pairs", "webqa_task1", "--checkpoint",
                                     str(ckpt), "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert status == 2 and f"cannot load the model at {ckpt}" in line
