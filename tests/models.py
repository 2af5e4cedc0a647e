"""Small world models with trainable parameters, shared by the tests.

Each is a real ``torch.nn.Module`` (so grad-tracking tensors can leak if a path forgets
``no_grad``), deterministic under a seed, and works batched (leading dim N) or unbatched.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

OBS_DIM, ACT_DIM = 6, 2


def _randn(shape, seed):
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return torch.randn(shape, generator=g)


def _batch(options):
    """N for a batched reset (from options["reset_mask"]), None for an unbatched one."""
    mask = (options or {}).get("reset_mask")
    return None if mask is None else int(mask.shape[0])


class VectorModel(nn.Module):
    """Latent dynamics over a vector observation; reward and terminal heads."""

    def __init__(self, obs_dim=OBS_DIM, act_dim=ACT_DIM, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.dynamics = nn.Linear(obs_dim + act_dim, obs_dim)
        self.reward_head = nn.Linear(obs_dim, 1)
        self.num_actions = act_dim

    # tutorial-style method names
    def sample_initial_state(self, seed=None, n=None):
        shape = (self.obs_dim,) if n is None else (n, self.obs_dim)
        # clamped so the decoded observation always lies in vector_spaces()' Box(-1, 1)
        return (0.5 * _randn(shape, seed)).clamp(-1.0, 1.0)

    def decode_observation(self, latent):
        return latent

    def predict_next_state(self, state, action):
        action = torch.as_tensor(action, dtype=torch.float32)
        return torch.tanh(self.dynamics(torch.cat([state, action], -1)))

    def predict_reward(self, next_state, action):
        return self.reward_head(next_state).squeeze(-1)

    def predict_terminal(self, next_state):
        return next_state[..., 0] > 0.95

    def forward(self, state, action):
        return self.predict_next_state(state, action)


def vector_spaces(obs_dim=OBS_DIM, act_dim=ACT_DIM):
    return (
        gym.spaces.Box(-1.0, 1.0, shape=(obs_dim,), dtype=np.float32),
        gym.spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32),
    )


def reset_world_model(model, seed=None, options=None):
    """The tutorial's reset adapter (mapping form), batched when options carry a reset_mask."""
    latent = model.sample_initial_state(seed=seed, n=_batch(options))
    return {"state": latent, "observation": model.decode_observation(latent), "info": {"source": "world_model"}}


def transition_world_model(model, state, action):
    """The tutorial's transition adapter (mapping form)."""
    next_state = model.predict_next_state(state, action)
    return {
        "state": next_state,
        "observation": model.decode_observation(next_state),
        "reward": model.predict_reward(next_state, action),
        "terminated": model.predict_terminal(next_state),
    }


class DictModel(VectorModel):
    """Dict observations: {"position": Box(obs_dim), "step_phase": Box(1)}."""

    def observe(self, state):
        return {"position": state, "step_phase": state[..., :1].abs()}


def dict_spaces(obs_dim=OBS_DIM, act_dim=ACT_DIM):
    obs = gym.spaces.Dict(
        {
            "position": gym.spaces.Box(-1.0, 1.0, shape=(obs_dim,), dtype=np.float32),
            "step_phase": gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
        }
    )
    return obs, gym.spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)


def dict_reset(model, seed=None, options=None):
    latent = model.sample_initial_state(seed=seed, n=_batch(options))
    return latent, model.observe(latent), {}


def dict_transition(model, state, action):
    nxt = model.predict_next_state(state, action)
    terminated = model.predict_terminal(nxt)
    # one truncated flag per env (a batched env refuses a scalar)
    return nxt, model.observe(nxt), model.predict_reward(nxt, action), terminated, torch.zeros_like(terminated), {}


class ImageModel(VectorModel):
    """Decodes the latent into a channel-first uint8 image (3 x 36 x 36, CnnPolicy-sized)."""

    IMAGE_SHAPE = (3, 36, 36)

    def __init__(self, obs_dim=OBS_DIM, act_dim=ACT_DIM, seed=0):
        super().__init__(obs_dim, act_dim, seed)
        self.decoder = nn.Linear(obs_dim, 3 * 6 * 6)

    def decode_image(self, latent):
        small = torch.sigmoid(self.decoder(latent)).reshape(*latent.shape[:-1], 3, 6, 6)
        big = small.repeat_interleave(6, -1).repeat_interleave(6, -2)
        return (big * 255).to(torch.uint8)


def image_spaces(act_dim=ACT_DIM):
    return (
        gym.spaces.Box(0, 255, shape=ImageModel.IMAGE_SHAPE, dtype=np.uint8),
        gym.spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32),
    )


def image_reset(model, seed=None, options=None):
    latent = model.sample_initial_state(seed=seed, n=_batch(options))
    return {"state": latent, "image": model.decode_image(latent)}


def image_transition(model, state, action):
    nxt = model.predict_next_state(state, action)
    return {"next_state": nxt, "pixels": model.decode_image(nxt), "reward": model.predict_reward(nxt, action)}


class DiscreteModel(VectorModel):
    """Takes one-hot actions; the library sees Discrete(num_actions)."""

    def __init__(self, obs_dim=OBS_DIM, num_actions=3, seed=0):
        super().__init__(obs_dim, num_actions, seed)


def one_hot_action(model, action):
    """The tutorial's action transform, batched-aware."""
    index = torch.as_tensor(action).long()
    return torch.nn.functional.one_hot(index, model.num_actions).float()
