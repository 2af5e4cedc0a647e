"""Next-step autoreset computes one model call for all N envs, including envs that restart on
this step; NaN in those thrown-away rows must not raise (or flag) anything."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import WorldModelEnv

OBS = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
ACT = gym.spaces.Box(-1, 1, (1,), np.float32)


def reset_fn(options=None):
    return torch.zeros(len(options["reset_mask"]), 1)


def transition_fn(state, action):
    """Env 0 counts up and terminates at 2; stepping a terminated state gives NaN."""
    nxt = state + torch.tensor([[1.0], [0.1]])
    nxt = torch.where(state >= 2, torch.full_like(state, float("nan")), nxt)
    return {"observation": nxt, "reward": torch.ones(len(state)), "terminated": nxt[:, 0] >= 2}


@pytest.mark.parametrize("nan_policy", ["raise", "truncate"])
def test_restarting_rows_are_not_nan_checked(nan_policy):
    env = WorldModelEnv(object(), OBS, ACT, reset_fn=reset_fn, transition_fn=transition_fn,
                        batch_size=(2,), nan_policy=nan_policy).to_gymnasium()
    env.reset(seed=0)
    actions = np.zeros((2, 1), np.float32)
    env.step(actions)
    obs, reward, terminated, truncated, info = env.step(actions)
    assert terminated.tolist() == [True, False]
    obs, reward, terminated, truncated, info = env.step(actions)  # env 0 restarts: its NaN step is discarded
    np.testing.assert_allclose(obs[:, 0], [0.0, 0.3], rtol=1e-6)
    assert reward.tolist() == [0.0, 1.0] and not truncated.any() and not terminated.any()
    assert "nonfinite" not in info


def test_nan_in_a_running_row_still_raises():
    def always_nan_for_env1(state, action):
        nxt = state + 1
        nxt[1] = float("nan")
        return nxt

    env = WorldModelEnv(object(), OBS, ACT, reset_fn=reset_fn, transition_fn=always_nan_for_env1,
                        batch_size=(2,)).to_gymnasium()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"NaN/inf.*env index \[1\]"):
        env.step(np.zeros((2, 1), np.float32))
