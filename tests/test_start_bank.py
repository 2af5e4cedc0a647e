"""A start-state bank is a reset source on its own; without any reset source the env is refused."""

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
    with pytest.raises(TypeError, match="reset_fn.*initial_observation.*start_states"):
        WorldModelEnv(object(), OBS, ACT, transition_fn=step)
    with pytest.raises(TypeError, match="start_states"):
        GymWorldModelEnv(object(), OBS, ACT, transition_fn=step)
