"""train_config.json read back (trainer.release reads it for the card): every field's type and trainer.train's own
ranges checked, one line naming the file and the field, exit 2."""

import json
from dataclasses import asdict, fields

import pytest

from common.errors import ConfigError
from trainer.training.config import TrainConfig
from trainer.training.config_file import read_train_config

WRITTEN = json.loads(json.dumps(asdict(TrainConfig(data="out/m-beir-cot"))))  # as trainer.train writes it


def _write(tmp_path, **change):
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps({**WRITTEN, **change}))
    return path


def test_a_written_config_reads_back_as_written(tmp_path):
    assert read_train_config(_write(tmp_path)) == WRITTEN
    partial = tmp_path / "partial.json"  # an older version's file may lack newer fields
    partial.write_text(json.dumps({"data": "d", "model": "tiny", "lr": 3e-4}))
    assert read_train_config(partial) == {"data": "d", "model": "tiny", "lr": 3e-4}


@pytest.mark.parametrize("change, message", [
    ({"lr": "2e-4"}, 'field lr is "2e-4" (a string), not a finite number'),
    ({"global_batch": 16.0}, "field global_batch is 16.0 (a number), not an integer"),
    ({"progress": 1}, "field progress is 1 (an integer), not true or false"),
    ({"mbeir_root": 3}, "field mbeir_root is 3 (an integer), not a string or null"),
    ({"lr": -1}, "--lr -1 is out of range: it must be above 0"),
    ({"negatives": "all"}, "--negatives 'all' is not one of global, micro"),
    ({"micro_batch": 64, "global_batch": 16}, "--micro_batch 64 is above --global_batch 16"),
    ({"learning_rate": 1e-4}, "unknown field 'learning_rate' (not a TrainConfig field)"),
])
def test_a_wrong_value_is_one_error_naming_the_file_and_the_field(tmp_path, change, message):
    path = _write(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        read_train_config(path)
    assert str(err.value).startswith(f"{path} is not a trainer.train config: {message}"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", [f.name for f in fields(TrainConfig)])
def test_every_field_is_type_checked(tmp_path, field):
    with pytest.raises(ConfigError, match=f"field {field} is "):
        read_train_config(_write(tmp_path, **{field: {"wrong": "type"}}))


def test_release_refuses_a_bad_train_config_with_one_line(tiny_base, tmp_path, capsys):
    from trainer import TraceEmbedder
    from trainer.release import upload

    ckpt = tmp_path / "ckpt"
    TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).save(ckpt)
    _write(ckpt, epochs="eight")
    capsys.readouterr()
    assert upload.main(["--checkpoint", str(ckpt), "--repo", "tester/x", "--dry_run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m trainer.release: error: {ckpt / 'train_config.json'} is not a trainer.train config: field "
        'epochs is "eight" (a string), not a finite number')
    _write(ckpt)
    (ckpt / "trace_config.json").write_text(json.dumps({"base_model": ".", "lora_r": 0, "lora_alpha": -1}))
    assert upload.main(["--checkpoint", str(ckpt), "--repo", "tester/x", "--dry_run"]) == 2
    assert "trace_config.json is not a checkpoint config: field lora_alpha is -1" in capsys.readouterr().err
