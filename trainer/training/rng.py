"""Random state: seeding a run, every generator's state for a checkpoint, and the gradient cache's replay of a
forward's dropout (RandContext, after GradCache's)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator_states() -> dict:
    """Every generator a run draws from (Python, NumPy, torch CPU, every GPU), as a checkpoint stores it: tensors,
    lists, numbers and strings only, so that torch.load(weights_only=True) reads it back (no pickled objects)."""
    version, internal, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "python": {"version": version, "state": list(internal), "gauss": gauss},
            "numpy": {"algorithm": algorithm, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_generators(state: dict) -> None:
    """The generators as generator_states() found them."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["algorithm"], np.array(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandContext:
    """The state of the generators dropout draws from (the CPU's, and on GPU the device's own) when it is made;
    `with context:` draws the same numbers again, then leaves the generators as it found them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state = self._get()

    def _get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def _set(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def __enter__(self) -> RandContext:
        self._outer = self._get()
        self._set(self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._set(self._outer)
