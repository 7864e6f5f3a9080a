"""trace_config.json is checked at the door: every field's type and range, one line naming the file and the field,
exit 2 from every command that reads it (trainer.evaluate, trainer.train --resume, trainer.serve, trainer.release),
a ConfigError (a ValueError) from TraceEmbedder.from_pretrained."""

import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from common.cli import run_cli
from common.errors import ConfigError
from trainer.modeling.checkpoint import TRACE_CONFIG, ModelConfig, read_checkpoint, read_config
from trainer.modeling.config_check import MAX_CONFIG_BYTES

ROOT = Path(__file__).resolve().parents[3]
GOOD = {"base_model": "Qwen/Qwen2-VL-2B-Instruct", "lora_r": 8}


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / TRACE_CONFIG).write_text(text)
    return path


@pytest.mark.parametrize("change, message", [
    ({"lora_r": "8"}, 'field lora_r is "8" (a string), not an integer'),
    ({"lora_r": -1}, "field lora_r is -1: it must be 0 (full fine-tuning) or more"),
    ({"lora_r": 8.5}, "field lora_r is 8.5 (a number), not an integer"),
    ({"lora_r": True}, "field lora_r is true (a boolean), not an integer"),
    ({"lora_r": {"r": 8}}, 'field lora_r is {"r": 8} (an object), not an integer'),
    ({"lora_alpha": 0}, "field lora_alpha is 0: it must be above 0"),
    ({"lora_dropout": 1.5}, "field lora_dropout is 1.5: it must be in [0, 1)"),
    ({"lora_dropout": float("nan")}, "field lora_dropout is NaN (a non-finite number), not a finite number"),
    ({"max_text_tokens": 0}, "field max_text_tokens is 0: it must be at least 1"),
    ({"image_max_pixels": "big"}, 'field image_max_pixels is "big" (a string), not an integer or null'),
    ({"train_vision": "yes"}, 'field train_vision is "yes" (a string), not true or false'),
    ({"gradient_checkpointing": None}, "field gradient_checkpointing is null, not true or false"),
    ({"base_model": ["a"]}, 'field base_model is ["a"] (a list), not a string'),
    ({"base_model": " "}, 'field base_model is " ": it must be a model name or path, not empty'),
    ({"lora_rank": 8}, "unknown field 'lora_rank' (not a ModelConfig field)"),
    ({"base_model": None, "drop": True}, "unknown field 'drop' (not a ModelConfig field)"),
])
def test_a_wrong_value_is_one_error_naming_the_file_and_the_field(tmp_path, change, message):
    ckpt = _folder(tmp_path / "ckpt", json.dumps({**GOOD, **change}))
    with pytest.raises(ConfigError) as err:
        read_config(ckpt)
    text = str(err.value)
    assert text == f"--checkpoint {ckpt}: {TRACE_CONFIG} is not a checkpoint config: {message}", text


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "it holds a list, not a JSON object of ModelConfig fields"),
    ('{"lora_r": 8}', "field base_model is missing"),
    ("{not json", "not JSON (Expecting property name"),
    ('"\xff"'.encode("latin-1"), "not JSON ("),
    (" " * (MAX_CONFIG_BYTES + 1), f"over {MAX_CONFIG_BYTES} bytes"),
])
def test_a_file_that_is_no_config_is_one_error(tmp_path, text, message):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / TRACE_CONFIG).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=f"{TRACE_CONFIG} is not a checkpoint config: ") as err:
        read_config(ckpt, flag="--resume")
    assert message in str(err.value) and str(err.value).startswith(f"--resume {ckpt}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", [f.name for f in fields(ModelConfig)])
def test_every_field_is_type_checked(tmp_path, field):
    ckpt = _folder(tmp_path / "ckpt", json.dumps({**GOOD, field: {"wrong": "type"}}))
    with pytest.raises(ConfigError, match=f"field {field} is "):
        read_checkpoint(ckpt)


def test_a_saved_checkpoint_reads_back_and_the_api_refuses_a_bad_one(tiny_base, tmp_path):
    from trainer import TraceEmbedder

    ckpt = tmp_path / "saved"
    TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).save(ckpt)
    assert asdict(read_checkpoint(ckpt)) == json.loads((ckpt / TRACE_CONFIG).read_text())
    saved = json.loads((ckpt / TRACE_CONFIG).read_text())
    (ckpt / TRACE_CONFIG).write_text(json.dumps({**saved, "max_target_tokens": "512"}))
    with pytest.raises(ValueError, match='field max_target_tokens is "512"') as err:
        TraceEmbedder.from_pretrained(ckpt, device="cpu")
    assert isinstance(err.value, ConfigError)


def test_evaluate_exits_2_with_one_line(sample_root, tmp_path):
    ckpt = _folder(tmp_path / "ckpt", json.dumps({**GOOD, "lora_r": "8"}))
    proc = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--mbeir_root", sample_root, "--checkpoint",
                           str(ckpt), "--output_dir", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last == (f"python -m trainer.evaluate: error: --checkpoint {ckpt}: {TRACE_CONFIG} is not a checkpoint "
                    'config: field lora_r is "8" (a string), not an integer')


def test_train_resume_exits_2_with_one_line(sample_cot, tmp_path, capsys):
    from trainer.training.checkpoint import STATE_FILE
    from trainer.training.cli import PROG, main

    ckpt = _folder(tmp_path / "old" / "checkpoint-2", json.dumps({"base_model": ".", "lora_r": -4}))
    (ckpt / STATE_FILE).write_bytes(b"")
    argv = ["--data", sample_cot, "--lora_r", "0", "--output_dir", str(tmp_path / "out"), "--resume", str(ckpt)]
    assert run_cli(main, argv, prog=PROG) == 2
    assert capsys.readouterr().err.strip() == (
        f"{PROG}: error: --resume {ckpt}: {TRACE_CONFIG} is not a checkpoint config: field lora_r is -4: it must be "
        "0 (full fine-tuning) or more")
