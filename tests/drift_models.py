"""A tiny deterministic world model for the batched-imagination tests.

``DriftModel`` moves a 2-d point by ``0.1 * action`` and terminates when ``x >= 0.45``. Every
operation is elementwise, so a batched step and N single steps give bit-identical results:
the tests can compare the batched env with N single envs exactly.

``Hooks`` are the reset/transition callables; they record every call (the reset mask, the
state's shape) so tests can count adapter calls. A reset gives env ``i`` the start ``START[i]``,
so a restarted row is recognisable and a row that was wrongly restarted is caught.
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

N = 5
# env i: start x, per-env time limit. With action (1, 0) every step, episodes last
# env0: 2 (time limit), env1: 3 (limit), env2: 5 (limit; x=0.4 < 0.45),
# env3: 5 (terminated AND truncated at step 5), env4: 3 (terminated; limit far away).
START = torch.tensor([[-0.3, 0.0], [-0.2, 0.05], [-0.1, 0.1], [0.0, 0.15], [0.2, 0.2]])
LIMITS = [2, 3, 5, 5, 100]
EPISODE_LENGTHS = [2, 3, 5, 5, 3]
PUSH = np.array([1.0, 0.0], dtype=np.float32)  # the action that produces EPISODE_LENGTHS

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


class DriftModel(nn.Module):
    """next = clamp(state + gain * action); reward = x + y; terminated when x >= 0.45."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.1))

    def forward(self, state, action):
        nxt = torch.clamp(state + self.gain * action, -1.0, 1.0)
        return {"state": nxt, "observation": nxt, "reward": nxt[..., 0] + nxt[..., 1], "terminated": nxt[..., 0] >= 0.45}

    def describe(self, suffix=""):
        return "drift" + suffix


class Hooks:
    """reset_fn / transition_fn that record their calls. ``row`` picks one env's start (a
    single env); None gives the whole batch (the mask's length)."""

    def __init__(self, row: Optional[int] = None, with_info: bool = False):
        self.row, self.with_info = row, with_info
        self.reset_masks: list = []  # options["reset_mask"] of every reset call (None: unbatched)
        self.transition_shapes: list = []  # state shape of every transition call

    def reset(self, model, seed=None, options=None):
        mask = (options or {}).get("reset_mask")
        self.reset_masks.append(None if mask is None else mask.clone())
        start = START[self.row].clone() if self.row is not None else START[: mask.shape[0]].clone()
        if self.with_info:  # one entry per env (leading dim N when batched) and a shared one
            return start, start.clone(), {"start_y": start[..., 1].clone(), "source": "reset", "gain": model.gain}
        return start, start.clone()

    def transition(self, model, state, action):
        self.transition_shapes.append(tuple(state.shape))
        out = model(state, action)
        if self.with_info:
            out["info"] = {"x": out["state"][..., 0], "source": "step", "gain": model.gain}
        return out


def batched_env(n: int = N, limits=LIMITS, model=None, with_info: bool = False, **kwargs):
    """A batched ``WorldModelEnv`` of ``n`` drift envs, and its recording hooks."""
    hooks = Hooks(with_info=with_info)
    env = WorldModelEnv(
        model if model is not None else DriftModel(), OBS_SPACE, ACT_SPACE,
        reset_fn=hooks.reset, transition_fn=hooks.transition,
        max_episode_steps=None if limits is None else torch.tensor(limits[:n]),
        batch_size=(n,), **kwargs,
    )
    return env, hooks


def single_env(row: int, max_episode_steps=None, model=None, with_info: bool = False, **kwargs) -> GymWorldModelEnv:
    """One Gymnasium drift env that starts at ``START[row]``."""
    hooks = Hooks(row, with_info=with_info)
    return GymWorldModelEnv(
        model if model is not None else DriftModel(), OBS_SPACE, ACT_SPACE,
        reset_fn=hooks.reset, transition_fn=hooks.transition, max_episode_steps=max_episode_steps, **kwargs,
    )
