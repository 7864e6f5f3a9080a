import json
import subprocess
import sys

import torch

from trainer.config import TrainConfig
from trainer.model import TraceEmbedder
from trainer.train import latest_checkpoint, main, parse_args


def test_cli_applies_tiny_defaults_and_paper_defaults():
    tiny = parse_args(["--data", "d", "--model", "tiny", "--lora_r", "4"])
    assert tiny.lora_r == 4 and tiny.global_batch == 16
    real = parse_args(["--data", "d", "--model", "Qwen/Qwen2.5-VL-7B-Instruct"])
    assert (real.lr, real.global_batch, real.lora_r, real.lora_alpha, real.temperature, real.warmup_ratio) == \
        (TrainConfig.lr, 1024, 128, 256, 0.05, 0.03)


def test_trainer_imports_neither_beam_nor_openai():
    code = ("import sys, trainer.train, trainer.model, trainer.data; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'openai', 'pipeline')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


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
    from trainer.interface import CandidateInput

    cands = [CandidateInput("a red circle on a white background", None, "text")]
    torch.testing.assert_close(emb.encode_candidates(cands), ckpt.encode_candidates(cands))


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
