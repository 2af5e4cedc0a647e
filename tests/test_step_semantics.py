"""What a step gives in the corner cases of issue 13: TorchRL's ``"_step"`` mask on a direct
``env.step(td)``, bfloat16/float16 latents on every path, and the final observation of an
episode truncated by ``nan_policy="truncate"`` (what a bootstrapping learner reads)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from torchrl.envs import EnvBase

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

BOX = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 3


def _counting_env(**kwargs):
    return WorldModelEnv(
        None, BOX, ACT,
        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
        transition_fn=lambda state, action: {"state": state + 1.0, "observation": state + 1.0,
                                             "reward": (state + 1.0).sum(-1)},
        batch_size=(N,), **kwargs)


# ---------------------------------------------------------------------------- "_step"
def test_a_direct_step_with_a_step_mask_leaves_the_masked_out_rows_as_they_were():
    env = _counting_env(max_episode_steps=10)
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    td = env.step(td)["next"].clone()  # every env at step 1
    td["action"] = torch.zeros(N, 2)
    td["_step"] = torch.tensor([True, False, True])
    out = env.step(td)
    nxt = out["next"]
    # stepped rows moved on
    assert nxt["observation"][[0, 2], 0].tolist() == [2.0, 2.0]
    assert nxt["elapsed_steps"][[0, 2], 0].tolist() == [2, 2]
    assert nxt["reward"][[0, 2], 0].tolist() == [4.0, 4.0]
    # the masked-out row is TorchRL's skipped step: its state, observation and count as they were
    assert nxt["observation"][1].tolist() == [1.0, 1.0]
    assert nxt["model_state"][1].tolist() == [1.0, 1.0]
    assert nxt["elapsed_steps"][1, 0].item() == 1
    assert nxt["reward"][1, 0].item() == 2.0  # TorchRL's skipped step copies what the input has
    assert not nxt["done"][1, 0].item()


def test_a_step_mask_row_never_raises_for_a_nan_it_does_not_take():
    def transition(state, action):
        nxt = state + 1.0
        nxt[1] = float("nan")  # env 1 is past its domain; it is masked out
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1)}

    env = WorldModelEnv(None, BOX, ACT, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
                        transition_fn=transition, batch_size=(N,))
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    td["_step"] = torch.tensor([True, False, True])
    nxt = env.step(td)["next"]
    assert nxt["observation"][1].tolist() == [0.0, 0.0]
    assert torch.isfinite(nxt["observation"]).all()


def test_break_when_all_done_keeps_ended_envs_where_they_ended():
    env = WorldModelEnv(
        None, BOX, ACT,
        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
        transition_fn=lambda state, action: {"state": state + 1.0, "observation": state + 1.0,
                                             "terminated": (state[..., 0] + 1.0) >= torch.tensor([1.0, 3.0, 2.0])},
        batch_size=(N,))
    td = env.rollout(5, break_when_any_done=False, break_when_all_done=True)
    final = td["next", "observation"][:, -1, 0].tolist()
    assert final == [1.0, 3.0, 2.0]  # each env stops at its own end
