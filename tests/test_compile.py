"""compile=True: the step's model hooks through torch.compile (torchwm_rl.compiled).

Compiling is slow on a small shared CPU, so the models are tiny and the compiling tests are
marked slow. Compiled float math may fuse and reorder ops: compiled and uncompiled rollouts
agree to float32 rounding (rtol 1e-5, atol 1e-6), with the same keys, shapes and dtypes, and
exactly on every integer and bool entry (done flags, step counts: the same episode ends).
"""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule

from torchwm_rl import GymWorldModelEnv, ModelAdapter, WorldModelEnv
from torchwm_rl.compiled import CompiledCall

N, DIM = 6, 4
BOX = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
ACTION = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(DIM + 1, DIM)

    def forward(self, state, action):
        return torch.tanh(self.net(torch.cat([state, action], -1))) * 1.05


def reset_fn(model, seed=None, options=None, batch_size=()):
    return 0.1 * torch.arange(1, DIM + 1, dtype=torch.float32).expand(*batch_size, DIM).clone()


def reward_fn(model, next_state):
    return -next_state.pow(2).sum(-1)


def terminal_fn(model, next_state):
    return next_state[..., 0] > 0.6


def breaking_reward_fn(model, next_state):
    """A reward hook torch.compile cannot take as one graph."""
    reward = -next_state.pow(2).sum(-1)
    torch._dynamo.graph_break()
    return reward


def make_env(**options) -> WorldModelEnv:
    options.setdefault("reward_fn", reward_fn)
    return WorldModelEnv(Model(), BOX, ACTION, reset_fn=reset_fn, terminal_fn=terminal_fn,
                         max_episode_steps=torch.tensor([3, 4, 5, 6, 7, 50]), batch_size=(N,), seed=0, **options)


def rollout(env, steps=12):
    torch.manual_seed(1)
    policy = TensorDictModule(torch.nn.Linear(DIM, 1), in_keys=["observation"], out_keys=["action"])
    with torch.no_grad():
        return env.rollout(steps, policy, break_when_any_done=False)


def assert_close_rollouts(compiled, eager):
    assert compiled.batch_size == eager.batch_size
    keys = set(eager.keys(True, True))
    assert set(compiled.keys(True, True)) == keys
    for key in keys:
        a, b = compiled.get(key), eager.get(key)
        assert (a.shape, a.dtype) == (b.shape, b.dtype), key
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
        else:
            assert torch.equal(a, b), key


@pytest.mark.slow
def test_a_compiled_rollout_gives_the_uncompiled_numbers():
    """compile=True (TorchRL's constructor keyword, taken by WorldModelEnv.compile): the model,
    reward_fn and terminal_fn run compiled, the fast rollout is kept, and the trajectory (with
    partial resets) is the uncompiled one to float32 rounding; env.eager() undoes it."""
    env = make_env(compile=True)
    assert all(isinstance(hook.fn, CompiledCall) for hook in
               (env.adapter.transition_hook, env.adapter.reward_hook, env.adapter.terminal_hook))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no hook falls back
        compiled = rollout(env)
        again = rollout(env)  # the compiled code reused
    eager = rollout(make_env())
    done = eager["next", "done"].squeeze(-1)
    assert bool((done.any(0) & ~done.all(0)).any())  # partial resets happened
    assert_close_rollouts(compiled, eager)
    assert_close_rollouts(again, eager)
    env.eager()
    assert not isinstance(env.adapter.transition_hook.fn, CompiledCall)
    assert_close_rollouts(rollout(env), eager)


@pytest.mark.slow
def test_a_hook_that_cannot_be_compiled_warns_once_and_runs_uncompiled():
    """A reward_fn with a graph break: one RuntimeWarning naming reward_fn and the reason, then
    it runs uncompiled (the model still compiled): the uncompiled numbers."""
    env = make_env(compile=True, reward_fn=breaking_reward_fn)
    with pytest.warns(RuntimeWarning, match=r"compile=True: reward_fn cannot be compiled \(Unsupported"):
        compiled = rollout(env)
    assert env.adapter.reward_hook.fn.compiled is None
    assert env.adapter.transition_hook.fn.compiled is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # once only
        rollout(env)
    assert_close_rollouts(compiled, rollout(make_env(reward_fn=breaking_reward_fn)))


@pytest.mark.slow
def test_the_gymnasium_env_takes_compile_too():
    env = GymWorldModelEnv(Model(), BOX, ACTION, reset_fn=reset_fn, reward_fn=reward_fn, compile=True, seed=0)
    plain = GymWorldModelEnv(Model(), BOX, ACTION, reset_fn=reset_fn, reward_fn=reward_fn, seed=0)
    for e in (env, plain):
        e.reset(seed=0)
    for _ in range(3):
        a, b = env.step(np.array([0.5], np.float32)), plain.step(np.array([0.5], np.float32))
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
        assert a[1] == pytest.approx(b[1], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_compile_is_validated(value):
    with pytest.raises(TypeError, match="compile: expected True or False"):
        ModelAdapter(Model(), BOX, ACTION, reset_fn=reset_fn, compile=value)


def test_a_compiled_call_pickles_as_its_function():
    call = CompiledCall(reward_fn, "reward_fn", "cpu")
    copy = pickle.loads(pickle.dumps(call))
    assert isinstance(copy, CompiledCall) and copy.eager is reward_fn and copy.name == "reward_fn"


class NoisyModel(Model):
    """A stochastic world model: its transition draws noise from the global random stream."""

    def forward(self, state, action):
        return torch.tanh(self.net(torch.cat([state, action], -1))) + 0.1 * torch.randn_like(state)


@pytest.mark.slow
def test_a_stochastic_model_compiled_draws_the_uncompiled_numbers():
    """A transition that samples (torch.randn_like on the global stream, as a stochastic world
    model does) gives the uncompiled samples for the same seed: inductor's own random kernels
    draw other numbers (fallback_random is set). Before: observations off by up to ~0.4, no warning."""
    def make(**options):
        return WorldModelEnv(NoisyModel(), BOX, ACTION, reset_fn=reset_fn, reward_fn=reward_fn, terminal_fn=terminal_fn,
                             max_episode_steps=torch.tensor([3, 4, 5, 6, 7, 50]), batch_size=(N,), seed=0, **options)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
        compiled = rollout(make(compile=True), steps=6)
    assert_close_rollouts(compiled, rollout(make(), steps=6))
