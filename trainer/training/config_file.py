"""train_config.json: the TrainConfig a run writes into its output folder (trainer/training/loop.py), read back
with every field's type and range checked; trainer.release reads it for the model card."""

from __future__ import annotations

from pathlib import Path

from common.errors import ConfigError
from trainer.modeling.config_check import checked_fields, read_json_object
from trainer.training.config import TrainConfig, validate


def read_train_config(path: Path) -> dict:
    """The file's settings, as written; ConfigError naming the file and the field when one has the wrong type,
    is unknown, or is a value trainer.train refuses (the flags' own ranges and rules, config.validate)."""
    where = f"{path} is not a trainer.train config"
    data = read_json_object(path, where)
    cfg = TrainConfig(**checked_fields(data, TrainConfig, where))
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return data
