"""training_state.pt is read without pickle: the random states round-trip exactly through torch.load(weights_only=True),
and a state that would need pickle (a crafted file that runs code, or an older version's numpy state) is refused
with one line, exit 2, without running anything."""

import contextlib
import json
import pickle
import random

import numpy as np
import pytest
import torch

from common.cli import run_cli
from common.errors import ConfigError
from trainer.training.checkpoint import STATE_FILE, load_state
from trainer.training.cli import PROG, main
from trainer.training.rng import generator_states, restore_generators


class WritesMarker:
    """Unpickling this creates the file at `path` (as any code a hostile checkpoint carries would run)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_random_states_round_trip_exactly_through_a_weights_only_load(tmp_path):
    random.gauss(0, 1)  # a cached Gaussian in both generators: part of the state too
    np.random.normal()
    torch.save({"rng": generator_states()}, tmp_path / "state.pt")
    drawn = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    restore_generators(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    assert again[:4] == drawn[:4]
    assert torch.equal(again[4], drawn[4])


def _full_checkpoint(tmp_path, state_writer) -> tuple[list[str], object]:
    """Flags that reach the resume check (a fully fine-tuned checkpoint of base `base`) and the checkpoint."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "hidden_size": 64}))
    ckpt = tmp_path / "old" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trace_config.json").write_text(json.dumps({"base_model": ".", "lora_r": 0}))
    (ckpt / "config.json").write_text((base / "config.json").read_text())
    (ckpt / "model.safetensors").write_text("")
    state_writer(ckpt / STATE_FILE)
    return ["--model", str(base), "--lora_r", "0", "--output_dir", str(tmp_path / "out"), "--resume", str(ckpt)], ckpt


@pytest.mark.parametrize("form", ["torch.save", "plain pickle"])
def test_a_state_that_would_run_code_is_refused_and_never_run(sample_cot, tmp_path, capsys, form):
    marker = tmp_path / "marker"
    evil = {"optimizer": {}, "scheduler": {}, "sampler": {"seed": 0}, "rng": WritesMarker(marker), "step": 2}

    def write(path):
        if form == "torch.save":
            torch.save(evil, path)
        else:
            path.write_bytes(pickle.dumps(evil, protocol=2))

    write(tmp_path / "probe.pt")  # the crafted file does run code when unpickled
    with contextlib.suppress(RuntimeError):  # the plain pickle is no torch file: torch.load says so afterwards
        torch.load(tmp_path / "probe.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    flags, ckpt = _full_checkpoint(tmp_path, write)
    assert run_cli(main, ["--data", sample_cot, *flags], prog=PROG) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"{PROG}: error: --resume {ckpt}: {STATE_FILE} was written by an older version or "
                           "elsewhere and is not loaded (it would need pickle); resume from a checkpoint written by "
                           "this version or start fresh")
    assert not marker.exists()
    with pytest.raises(ConfigError, match="would need pickle"):
        load_state(ckpt)  # what resume() reads it with
    assert not marker.exists()


def test_an_older_versions_state_is_refused_with_one_line(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    old_rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
               "cuda": None}
    torch.save({"optimizer": {}, "scheduler": {}, "sampler": {}, "rng": old_rng, "step": 2}, ckpt / STATE_FILE)
    with pytest.raises(ConfigError, match="written by an older version or elsewhere and is not loaded"):
        load_state(ckpt)


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 cut", "cannot be read"),
    (None, "holds a list, not a training state"),
])
def test_a_damaged_state_is_one_line(tmp_path, content, message):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    if content is None:
        torch.save([1, 2], ckpt / STATE_FILE)
    else:
        (ckpt / STATE_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_state(ckpt)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def trained(sample_cot, sample_root, tmp_path_factory):
    """Flags of a 1-step tiny run and its output folder (checkpoint-1 inside)."""
    out = tmp_path_factory.mktemp("trained")
    flags = ["--data", sample_cot, "--mbeir_root", sample_root, "--model", "tiny", "--global_batch", "4",
             "--micro_batch", "4", "--progress", "false"]
    assert main([*flags, "--max_steps", "1", "--output_dir", str(out)]) == 0
    return flags, out


@pytest.mark.parametrize("tamper, message", [
    (lambda state: state.pop("rng"), "lacks rng; it was not written by trainer.train"),
    (lambda state: state.update(rng={"torch": torch.zeros(3, dtype=torch.uint8)}),
     "does not fit this run (RuntimeError: Expected a CPUGeneratorImplState"),
])
def test_a_state_of_another_shape_is_one_line(trained, tmp_path, capsys, tamper, message):
    import shutil

    flags, out = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    state = load_state(copy / "checkpoint-1")
    tamper(state)
    torch.save(state, copy / "checkpoint-1" / STATE_FILE)
    capsys.readouterr()
    assert run_cli(main, [*flags, "--max_steps", "2", "--output_dir", str(copy), "--resume", "auto"], prog=PROG) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"{PROG}: error: --resume {copy / 'checkpoint-1'}: {STATE_FILE} ") and message in err, err
