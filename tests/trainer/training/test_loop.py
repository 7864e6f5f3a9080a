"""The training driver end to end: exact resume, a skipped shard in the log and the summary, and a step's loss
independent of the micro-batch."""

import json

import torch

from trainer.inference.api import TraceEmbedder
from trainer.modeling.interface import CandidateInput
from trainer.training.checkpoint import latest_checkpoint
from trainer.training.cli import main


def _losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(path))}


def test_resume_gives_identical_next_step_losses_and_a_loadable_checkpoint(sample_cot, sample_root, tmp_path):
    torch.set_num_threads(1)
    common = ["--data", sample_cot, "--mbeir_root", sample_root, "--model", "tiny", "--global_batch", "8",
              "--micro_batch", "4", "--max_steps", "4", "--progress", "false", "--lora_dropout", "0.1"]
    main(common + ["--output_dir", str(tmp_path / "a"), "--save_every", "2"])
    full = _losses(tmp_path / "a" / "train_log.jsonl")
    assert latest_checkpoint(tmp_path / "a").name == "checkpoint-4"
    main(common + ["--output_dir", str(tmp_path / "a"), "--resume", str(tmp_path / "a" / "checkpoint-2")])
    lines = [json.loads(x) for x in open(tmp_path / "a" / "train_log.jsonl")]
    resumed = {r["step"]: r["loss"] for r in lines[4:]}
    assert sorted(resumed) == [3, 4]
    for s in (3, 4):
        assert resumed[s] == full[s], (s, resumed[s], full[s])
    emb = TraceEmbedder.load(tmp_path / "a", device="cpu")
    ckpt = TraceEmbedder.load(tmp_path / "a" / "checkpoint-4", device="cpu")
    cands = [CandidateInput("a red circle on a white background", None, "text")]
    torch.testing.assert_close(emb.encode_candidates(cands), ckpt.encode_candidates(cands))


def test_corrupt_shard_is_skipped_counted_in_the_log_and_the_summary(sample_cot, sample_root, tmp_path, capsys):
    import pyarrow.parquet as pq

    from tests.trainer.conftest import write_cot_shards
    from trainer.training.data import list_shards

    write_cot_shards(pq.read_table(list_shards(sample_cot)).to_pylist(), tmp_path / "data", n_shards=3)
    cut = tmp_path / "data/data/train-00001-of-00003.parquet"
    cut.write_bytes(cut.read_bytes()[:-200])
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data"), "--mbeir_root", sample_root, "--model", "tiny",
                 "--global_batch", "4", "--micro_batch", "4", "--max_steps", "1", "--progress", "false",
                 "--output_dir", str(out)]) == 0
    record = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert record["skipped"]["unreadable_shard"] == 1
    captured = capsys.readouterr()
    assert f"skipping shard {cut}: it is not a readable Parquet file" in captured.err
    assert f"trained to step 1 in {out}" in captured.out and "1 unreadable_shard" in captured.out


def test_step_loss_does_not_depend_on_the_micro_batch_and_the_log_says_how_many_negatives(
        sample_cot, sample_root, tmp_path):
    torch.set_num_threads(1)
    common = ["--data", sample_cot, "--mbeir_root", sample_root, "--model", "tiny", "--global_batch", "16",
              "--max_steps", "1", "--progress", "false"]
    logs = {}
    for name, extra in (("m16", ["--micro_batch", "16"]), ("m4", ["--micro_batch", "4"]),
                        ("micro", ["--micro_batch", "4", "--negatives", "micro"])):
        main(common + extra + ["--output_dir", str(tmp_path / name)])
        logs[name] = json.loads((tmp_path / name / "train_log.jsonl").read_text())
    for k in ("loss", "ce", "nce", "route"):
        assert abs(logs["m4"][k] - logs["m16"][k]) <= 1e-4 * abs(logs["m16"][k]), k
    assert logs["m16"]["nce_candidates"] == logs["m4"]["nce_candidates"] == 16
    assert logs["micro"]["nce_candidates"] == 4 and logs["micro"]["extra_pass_share"] == 0
    assert 0 < logs["m4"]["extra_pass_share"] < 1
