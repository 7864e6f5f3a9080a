import random

import numpy as np
import torch

from trainer.training.rng import RandContext, generator_states, restore_generators


def test_rand_context_replays_the_draws_and_leaves_the_generators_as_found():
    torch.manual_seed(3)
    state = RandContext(torch.device("cpu"))
    first = torch.rand(4)
    after_first = torch.get_rng_state()
    with state:
        again = torch.rand(4)
    torch.testing.assert_close(again, first)
    assert torch.equal(torch.get_rng_state(), after_first)


def test_generator_states_round_trip_every_generator():
    saved = generator_states()
    drawn = (torch.rand(2), random.random(), np.random.rand())
    restore_generators(saved)
    again = (torch.rand(2), random.random(), np.random.rand())
    torch.testing.assert_close(again[0], drawn[0])
    assert again[1:] == drawn[1:]
