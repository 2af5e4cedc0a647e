"""Dict action spaces: with torch_actions=True each entry reaches the model as a tensor."""

import gymnasium as gym
import numpy as np
import torch

from torchwm_rl import GymWorldModelEnv


def test_dict_action_entries_become_tensors():
    seen = {}

    def transition(state, action):
        seen.update(action)
        return state + action["push"].float().sum() + action["mode"].float()

    env = GymWorldModelEnv(
        object(),
        gym.spaces.Box(-10, 10, (2,), np.float32),
        gym.spaces.Dict({"push": gym.spaces.Box(-1, 1, (2,), np.float32), "mode": gym.spaces.Discrete(3)}),
        reset_fn=lambda: np.zeros(2, np.float32),
        transition_fn=transition,
    )
    env.reset(seed=0)
    obs, *_ = env.step({"push": np.array([0.5, 0.25], np.float32), "mode": 2})
    assert set(seen) == {"push", "mode"}
    assert all(isinstance(v, torch.Tensor) for v in seen.values())
    np.testing.assert_allclose(obs, [2.75, 2.75])
