"""Parity: for the same model, seed and actions, the TorchRL path (``WorldModelEnv.step`` /
``rollout``) and the Gymnasium path (``to_gymnasium()`` and a directly built
``GymWorldModelEnv``) give IDENTICAL observations, rewards and flags, across terminations and
time-limit truncations (the Gymnasium side resets when an episode ends, as a user would; the
TorchRL side auto-resets inside ``rollout``). The traces and their exact comparison are the
harness's; each comparison also runs the library's own parity check
(``torchwm_rl.app.check.check_parity``, what ``torchwm-rl check`` reports as ``parity``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from harness import (
    assert_library_parity,
    assert_traces_equal,
    sample_actions,
    trace_gym,
    trace_torchrl_rollout,
    trace_torchrl_step,
)
from torchwm_rl import GymWorldModelEnv, WorldModelEnv

from models import (
    DictModel,
    DiscreteModel,
    VectorModel,
    dict_reset,
    dict_spaces,
    dict_transition,
    one_hot_action,
    reset_world_model,
    transition_world_model,
    vector_spaces,
)

T = 24
MAX_STEPS = 5


def _terminal(next_state):
    return next_state[..., 0] > 0.0  # fires now and then under the fixed actions below


def _terminal_high(next_state):
    return next_state[..., 0] > 0.6


def _kwargs(kind: str) -> dict:
    if kind == "vector":
        obs_space, act_space = vector_spaces()
        return dict(model=VectorModel(), observation_space=obs_space, action_space=act_space,
                    reset_fn=reset_world_model, transition_fn=lambda m, s, a: {
                        "state": m.predict_next_state(s, a), "observation": m.predict_next_state(s, a)}, reward_fn=lambda model, next_state, action: model.predict_reward(next_state, action),
                    terminal_fn=_terminal)
    if kind == "dict":
        obs_space, act_space = dict_spaces()
        return dict(model=DictModel(), observation_space=obs_space, action_space=act_space,
                    reset_fn=dict_reset, transition_fn=dict_transition)
    if kind == "discrete":
        obs_space, _ = vector_spaces()
        return dict(model=DiscreteModel(num_actions=3), observation_space=obs_space,
                    action_space=gym.spaces.Discrete(3), reset_fn=reset_world_model,
                    transition_fn=lambda model, state, action: (
                        model.predict_next_state(state, action), model.predict_next_state(state, action),
                        model.predict_reward(model.predict_next_state(state, action), action)),
                    action_transform_fn=one_hot_action, terminal_fn=_terminal_high)
    raise ValueError(kind)


def _actions(space, n=T, seed=0):
    return sample_actions(space, n, seed)


@pytest.mark.parametrize("kind", ["vector", "dict", "discrete"])
def test_torchrl_and_gymnasium_paths_agree(kind):
    seed = 7
    kwargs = _kwargs(kind)
    model = kwargs.pop("model")
    actions = _actions(kwargs["action_space"])
    trl = WorldModelEnv(model, max_episode_steps=MAX_STEPS, **kwargs)
    by_rollout = trace_torchrl_rollout(trl, actions, seed)
    by_step = trace_torchrl_step(WorldModelEnv(model, max_episode_steps=MAX_STEPS, **kwargs), actions, seed)
    gym_env = trl.to_gymnasium()
    # one shared model and hooks; the export's own episode state and streams (EpisodeLogic.fork)
    assert isinstance(gym_env, GymWorldModelEnv) and gym_env.model is trl.model and gym_env.logic is not trl.logic
    assert gym_env.adapter.transition_hook is trl.adapter.transition_hook
    exported = trace_gym(gym_env, actions, seed)
    direct = trace_gym(GymWorldModelEnv(model, max_episode_steps=MAX_STEPS, **kwargs), actions, seed)

    assert_traces_equal(by_rollout, by_step)
    assert_traces_equal(by_rollout, exported)
    assert_traces_equal(by_rollout, direct)
    # and the library's own parity check (``torchwm-rl check``) passes on the same env
    assert_library_parity(WorldModelEnv(model, max_episode_steps=MAX_STEPS, **kwargs), steps=T, seed=seed)
    # the run crossed at least one time-limit truncation, so the reset path was compared too
    truncations = [t for t, x in enumerate(by_rollout) if x[4]]
    assert truncations, "no truncation in the compared run"
    if kind in ("vector", "discrete"):
        assert any(x[3] for x in by_rollout), "no termination in the compared run"
    # Gymnasium TimeLimit semantics: truncated exactly when the step count hits the limit
    steps = 0
    for x in by_rollout:
        steps += 1
        assert x[4] == (steps == MAX_STEPS), steps  # terminated on the last step stays truncated too
        if x[3] or x[4]:
            steps = 0


def test_gym_types_match_torchrl_values():
    """The Gymnasium side's types are the contract's; the values are the TorchRL tensors'."""
    kwargs = _kwargs("vector")
    model = kwargs.pop("model")
    trl = WorldModelEnv(model, max_episode_steps=MAX_STEPS, **kwargs)
    actions = _actions(kwargs["action_space"], n=6)
    for obs, nxt, reward, terminated, truncated in trace_gym(trl.to_gymnasium(), actions, 0):
        assert isinstance(nxt, np.ndarray) and nxt.dtype == np.float32
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool


def test_batched_torchrl_env_agrees_with_its_gymnasium_vector_export():
    """Batched (N=3) TorchRL env vs ``to_gymnasium()`` (a Gymnasium VectorEnv, SAME_STEP
    autoreset) over several episodes: same next observations, rewards, flags; and the vector
    env's reset rows equal the TorchRL auto-reset rows."""
    n, seed = 3, 5
    obs_space, act_space = vector_spaces()
    kwargs = dict(observation_space=obs_space, action_space=act_space, reset_fn=reset_world_model,
                  transition_fn=transition_world_model, terminal_fn=_terminal,
                  max_episode_steps=torch.tensor([3, 4, 5]), batch_size=(n,))
    model = VectorModel()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(12, n, act_space.shape[0])).astype(np.float32)

    trl = WorldModelEnv(model, **kwargs)
    trl.set_seed(seed)
    it = iter(actions)
    td = trl.rollout(len(actions), lambda td: td.set("action", torch.as_tensor(next(it))),
                     break_when_any_done=False)  # rollout's batch dims: [N, T]

    venv = WorldModelEnv(model, **kwargs).to_gymnasium(autoreset_mode=AutoresetMode.SAME_STEP)
    assert venv.num_envs == n
    obs, _ = venv.reset(seed=seed)
    np.testing.assert_array_equal(obs, td[:, 0]["observation"].detach().numpy())
    ended = 0
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, info = venv.step(action)
        nxt = td[:, t]["next"]
        np.testing.assert_array_equal(reward, nxt["reward"].squeeze(-1).detach().numpy().astype(np.float64))
        np.testing.assert_array_equal(terminated, nxt["terminated"].squeeze(-1).numpy())
        np.testing.assert_array_equal(truncated, nxt["truncated"].squeeze(-1).numpy())
        done = terminated | truncated
        for i in range(n):
            final = info["final_obs"][i] if done[i] else obs[i]
            np.testing.assert_array_equal(final, nxt["observation"][i].detach().numpy())
        if t + 1 < len(actions):  # the obs the policy sees next: reset rows included
            np.testing.assert_array_equal(obs, td[:, t + 1]["observation"].detach().numpy())
        ended += int(done.sum())
    assert ended >= n  # every env ended at least once
    # and the library's own parity check (``torchwm-rl check``) passes on the same env
    assert_library_parity(WorldModelEnv(model, **kwargs), steps=len(actions), seed=seed)


class _NoisyModel(VectorModel):
    """Samples from the global torch RNG in reset and step (a stochastic latent model)."""

    def reset(self, seed=None, options=None):
        latent = torch.rand(6) * 2 - 1
        return latent, latent

    def step(self, state, action):
        nxt = (self.predict_next_state(state, action) + 0.2 * torch.randn_like(state)).clamp(-1, 1)
        return nxt, nxt, self.predict_reward(nxt, action), nxt[..., 0] > 0.3, False, {}


def test_paths_agree_for_a_stochastic_model_under_the_same_seed():
    """Seeded, both paths give the model the same torch RNG stream, so even a model that samples
    reproduces identically on the TorchRL and Gymnasium paths (across resets too)."""
    obs_space, act_space = vector_spaces()
    kwargs = dict(observation_space=obs_space, action_space=act_space, max_episode_steps=MAX_STEPS)
    model = _NoisyModel()
    actions = _actions(act_space)
    by_rollout = trace_torchrl_rollout(WorldModelEnv(model, **kwargs), actions, 3)
    direct = trace_gym(GymWorldModelEnv(model, **kwargs), actions, 3)
    assert_traces_equal(by_rollout, direct)
    # and the library's own parity check (``torchwm-rl check``) passes on the same model
    assert_library_parity(WorldModelEnv(model, **kwargs), steps=T, seed=3)
    other_seed = trace_gym(GymWorldModelEnv(model, **kwargs), actions, 4)
    assert not np.array_equal(direct[0][0], other_seed[0][0])
