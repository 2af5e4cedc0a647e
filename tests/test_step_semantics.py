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


# ------------------------------------------------------------- nan_policy="truncate"
def _nan_hooks(separate_state: bool):
    """Counting dynamics; env 1's third step is NaN. With ``separate_state`` the observation is
    twice the state (so it is not the state)."""

    def reset(batch_size=()):
        state = torch.zeros(*batch_size, 2)
        return (state, 2 * state) if separate_state else state

    def transition(state, action):
        nxt = state + 1.0
        obs = 2 * nxt if separate_state else nxt.clone()
        if obs.ndim == 2:
            obs[1] = torch.where(nxt[1, 0] == 3.0, float("nan"), obs[1])
        elif nxt[0] == 3.0:
            obs = obs * float("nan")
        return {"state": nxt, "observation": obs, "reward": nxt.sum(-1)}

    return dict(reset_fn=reset, transition_fn=transition, nan_policy="truncate")


def _last_finite(separate_state: bool) -> list:
    return [4.0, 4.0] if separate_state else [2.0, 2.0]  # the observation at step 2


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast-rollout", "EnvBase.rollout"])
def test_truncate_hands_out_the_last_finite_observation_torchrl(separate_state, fast):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    policy = lambda td: td.set("action", torch.zeros(N, 2))  # noqa: E731
    td = (env.rollout(3, policy, break_when_any_done=False) if fast
          else EnvBase.rollout(env, 3, policy, break_when_any_done=False))
    nxt = td["next"][:, 2]
    assert nxt["truncated"][:, 0].tolist() == [False, True, False]
    assert nxt["nonfinite"][:, 0].tolist() == [False, True, False]
    assert nxt["observation"][1].tolist() == _last_finite(separate_state)
    scale = 2.0 if separate_state else 1.0
    assert nxt["observation"][0].tolist() == [3.0 * scale] * 2  # other envs untouched


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
def test_truncate_hands_out_the_last_finite_observation_gym(separate_state):
    env = GymWorldModelEnv(None, BOX, ACT, **_nan_hooks(separate_state))
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.zeros(2, np.float32))
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and info["nonfinite"]
    np.testing.assert_array_equal(obs, np.array(_last_finite(separate_state), np.float32))


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_truncate_hands_out_the_last_finite_observation_vector(separate_state, mode):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    venv = env.to_gymnasium(autoreset_mode=mode)
    venv.reset(seed=0)
    for _ in range(2):
        venv.step(np.zeros((N, 2), np.float32))
    obs, reward, terminated, truncated, info = venv.step(np.zeros((N, 2), np.float32))
    assert truncated.tolist() == [False, True, False]
    final = obs[1] if mode is AutoresetMode.NEXT_STEP else info["final_obs"][1]
    np.testing.assert_array_equal(final, np.array(_last_finite(separate_state), np.float32))


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
def test_truncate_hands_out_the_last_finite_observation_sb3(separate_state):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    venv = env.to_sb3()
    venv.reset()
    for _ in range(2):
        venv.step(np.zeros((N, 2), np.float32))
    obs, rewards, dones, infos = venv.step(np.zeros((N, 2), np.float32))
    assert dones.tolist() == [False, True, False]
    assert infos[1]["TimeLimit.truncated"] and infos[1]["nonfinite"]
    np.testing.assert_array_equal(infos[1]["terminal_observation"],
                                  np.array(_last_finite(separate_state), np.float32))
    np.testing.assert_array_equal(obs[1], np.zeros(2, np.float32))  # the env restarted
