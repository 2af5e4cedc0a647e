"""The stand-in world model the tutorial scripts train in, with its adapters and spaces.

``PointMassWorldModel`` stands in for YOUR trained checkpoint, and the ``reset_*`` /
``transition_*`` functions for the adapters you write once to connect your model to
``WorldModelEnv`` (one pair per observation kind: vector, Dict, image). To train your own
model, swap in your checkpoint and adapters here; the scripts only import these names.

This is a module, not a script: every tutorial script imports it (``from point_mass import
...``; a script's folder is on ``sys.path`` when run as ``python tutorials/X.py``), and so do
the worker processes that build envs from it (see multiprocess_workers.py).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn


# --------------------------------------------------------------------------- the world model
class PointMassWorldModel(nn.Module):
    """A point pushed around the square [-1, 1]^2; the goal is the centre.

    Latent state ``(x, y, vx, vy)``. ``residual`` is a small MLP playing the part of learned
    dynamics error; the decoders turn the latent into the three observation kinds.
    """

    IMAGE_SIZE = 36  # SB3's NatureCNN needs at least 36 x 36

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.residual = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        grid = torch.linspace(-1.0, 1.0, self.IMAGE_SIZE)
        self.register_buffer("grid_y", grid.view(-1, 1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.register_buffer("grid_x", grid.view(1, -1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.generator = torch.Generator().manual_seed(seed)

    def sample_initial_state(self, seed=None, n=None):
        if seed is not None:
            self.generator.manual_seed(int(seed))
        shape = (4,) if n is None else (n, 4)
        position = torch.rand(shape[:-1] + (2,), generator=self.generator) * 1.6 - 0.8
        return torch.cat([position, torch.zeros_like(position)], -1)

    def predict_next_state(self, state, action):
        position, velocity = state[..., :2], state[..., 2:]
        action = action.to(state.dtype).clamp(-1.0, 1.0)
        velocity = 0.8 * velocity + 0.2 * action
        drift = 0.02 * self.residual(torch.cat([state, action], -1))
        position = (position + 0.1 * velocity + drift).clamp(-1.0, 1.0)
        return torch.cat([position, velocity], -1)

    def predict_reward(self, state):
        return -state[..., :2].norm(dim=-1)

    def predict_terminal(self, state):
        return state[..., :2].norm(dim=-1) < 0.1

    def decode_dict(self, state):
        return {"position": state[..., :2], "velocity": state[..., 2:]}

    def decode_image(self, state):
        """Channel-first uint8 image: the point as a blob in channel 0, the goal in channel 1."""
        x, y = state[..., 0, None, None], state[..., 1, None, None]
        blob = torch.exp(-((self.grid_x - x) ** 2 + (self.grid_y - y) ** 2) / 0.02)
        goal = torch.exp(-(self.grid_x**2 + self.grid_y**2) / 0.01).expand_as(blob)
        image = torch.stack([blob, goal, torch.zeros_like(blob)], -3)
        return (image * 255).to(torch.uint8)


# ------------------------------------------------------------------------------ the adapters
def rows(batch_size):
    """N for a batched env, None for an unbatched one (``batch_size`` is () or (N,))."""
    return batch_size[0] if batch_size else None


def reset_vector(model, seed=None, options=None, batch_size=()):
    state = model.sample_initial_state(seed, rows(batch_size))
    return {"state": state, "observation": state}


def transition_vector(model, state, action):
    next_state = model.predict_next_state(state, action)
    return {
        "state": next_state,
        "observation": next_state,
        "reward": model.predict_reward(next_state),
        "terminated": model.predict_terminal(next_state),
    }


def reset_dict(model, seed=None, options=None, batch_size=()):
    state = model.sample_initial_state(seed, rows(batch_size))
    return {"state": state, "observation": model.decode_dict(state)}


def transition_dict(model, state, action):
    out = transition_vector(model, state, action)
    out["observation"] = model.decode_dict(out["state"])
    return out


def reset_image(model, seed=None, options=None, batch_size=()):
    state = model.sample_initial_state(seed, rows(batch_size))
    return {"state": state, "observation": model.decode_image(state)}


def transition_image(model, state, action):
    out = transition_vector(model, state, action)
    out["observation"] = model.decode_image(out["state"])
    return out


# -------------------------------------------------------------------------------- the spaces
ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
VECTOR_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
DICT_SPACE = gym.spaces.Dict(
    {
        "position": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        "velocity": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
    }
)
IMAGE_SPACE = gym.spaces.Box(0, 255, shape=(3, 36, 36), dtype=np.uint8)
