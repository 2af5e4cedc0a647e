"""Smoke test: the core builds and steps on both paths with the shared toy model."""

import numpy as np
import torch
from torchrl.envs.utils import check_env_specs

from torchwm_rl import WorldModelEnv
from models import VectorModel, reset_world_model, transition_world_model, vector_spaces


def test_torchrl_and_gym_paths_step():
    obs_space, act_space = vector_spaces()
    env = WorldModelEnv(
        VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
        transition_fn=transition_world_model, max_episode_steps=4, seed=0,
    )
    check_env_specs(env)
    td = env.rollout(10)
    assert td["next", "truncated"].any() or td["next", "terminated"].any()
    gym_env = env.to_gymnasium()
    obs, info = gym_env.reset(seed=0)
    assert obs.dtype == np.float32 and info == {"source": "world_model"}  # the reset hook's info as is
    obs, reward, terminated, truncated, info = gym_env.step(act_space.sample())
    assert isinstance(reward, float) and isinstance(terminated, bool) and info["elapsed_steps"] == 1
    assert not isinstance(info["model_state"], torch.Tensor)
