"""A start-state bank is a reset source on its own; without any reset source the TorchRL env
is refused at construction and the Gymnasium env's reset is."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

OBS = gym.spaces.Box(-5, 5, (3,), np.float32)
ACT = gym.spaces.Box(-1, 1, (3,), np.float32)


def step(state, action):
    return state + 0.1 * action


def test_bank_alone_resets_both_paths_and_observations_are_copies():
    bank = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    original = bank.clone()
    env = WorldModelEnv(object(), OBS, ACT, transition_fn=step, start_states=bank, seed=3)
    td = env.reset()
    assert any(torch.equal(td["observation"], row) for row in bank)
    td["observation"].mul_(0)  # caller writes into its observation
    gym_env = GymWorldModelEnv(object(), OBS, ACT, transition_fn=step, start_states=bank, seed=3)
    obs, _ = gym_env.reset()
    obs *= 0
    assert torch.equal(bank, original)


def test_no_reset_source_is_refused_naming_the_options():
    # the TorchRL env builds its specs from a first reset: refused at construction
    with pytest.raises(TypeError, match="from one reset at construction: object has no reset: "
                                        "pass reset_fn.*initial_observation.*start_states"):
        WorldModelEnv(object(), OBS, ACT, transition_fn=step)
    # the Gymnasium env constructs (as TorchWM's); its reset names the options
    gym_env = GymWorldModelEnv(object(), OBS, ACT, transition_fn=step)
    with pytest.raises(TypeError, match="object has no reset: pass reset_fn.*initial_observation.*start_states"):
        gym_env.reset(seed=0)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        gym_env.step(np.zeros(3, np.float32))
