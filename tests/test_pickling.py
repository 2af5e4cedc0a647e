"""Pickling (for subprocess workers): every env and export round-trips through ``pickle`` and
``cloudpickle`` mid-episode into an independent copy that steps exactly as the original (tensor
and opaque model states, start-state banks), lambda hooks need ``cloudpickle``, and the
Gymnasium env runs in ``AsyncVectorEnv`` workers. Worker-built envs (factories loading weights
in each process) are in ``test_multiprocess.py``."""

from __future__ import annotations

import pickle

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch

from models import VectorModel, reset_world_model, transition_world_model, vector_spaces
from harness import Driver
from reliability_models import OpaqueState, Scripted, action_for, add_one_reward, make, opaque_reset, opaque_transition


def _vector_kwargs():
    obs_space, act_space = vector_spaces()
    return dict(obs_space=obs_space, act_space=act_space, reset_fn=reset_world_model,
                transition_fn=transition_world_model, reward_fn=add_one_reward, max_episode_steps=3)


def _roll_torchrl(env, steps, n):
    g = torch.Generator().manual_seed(7)
    td = env.reset()
    outs = []
    for _ in range(steps):
        action = torch.rand((*((n,) if n else ()), 2), generator=g) * 2 - 1
        out, td = env.step_and_maybe_reset(td.set("action", action))
        outs.append(out.exclude("action"))
    return outs


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)],
                         ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("n", [None, 3])
def test_torchrl_env_pickle_round_trip(dumps, loads, n):
    bank = {"observation": torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) - 0.5}
    env = make("torchrl", VectorModel(), n=n, seed=4, start_states=bank, **_vector_kwargs())
    env.reset()
    clone = loads(dumps(env))
    assert clone.model is not env.model
    for a, b in zip(_roll_torchrl(env, 7, n), _roll_torchrl(clone, 7, n)):
        assert (a == b).all()


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_gym_env_pickle_round_trip_mid_episode(dumps):
    env = make("gym", VectorModel(), seed=1, **_vector_kwargs())
    env.reset()
    env.step(np.full(2, 0.3, dtype=np.float32))
    clone = pickle.loads(dumps(env))
    for i in range(5):  # crosses the time limit and the reset after it
        action = np.full(2, 0.1 * i, dtype=np.float32)
        a, b = env.step(action), clone.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            np.testing.assert_array_equal(env.reset()[0], clone.reset()[0])
    np.testing.assert_array_equal(env.action_space.sample(), clone.action_space.sample())


@pytest.mark.parametrize("export", ["vector", "sb3"])
def test_exports_pickle_round_trip(export):
    envs = make(export, VectorModel(), n=3, seed=2, **_vector_kwargs())
    driver = Driver(export, envs)
    driver.reset()
    clone = Driver(export, cloudpickle.loads(cloudpickle.dumps(envs)))
    for i in range(6):
        action = np.full((3, 2), 0.2 * i - 0.5, dtype=np.float32)
        for a, b in zip(driver.step(action)[:4], clone.step(action)[:4]):
            np.testing.assert_array_equal(a, b)


def test_lambda_hooks_need_cloudpickle():
    env = make("gym", Scripted(), transition_fn=lambda model, state, action: (state, state, 1.0))
    # the standard pickle cannot (AttributeError "Can't pickle local object" before Python 3.14)
    with pytest.raises((pickle.PicklingError, AttributeError), match="<lambda>"):
        pickle.dumps(env)
    clone = cloudpickle.loads(cloudpickle.dumps(env))
    clone.reset(seed=0)
    assert clone.step(action_for())[1] == 1.0


@pytest.mark.slow
def test_gym_env_runs_in_subprocess_workers():
    def make_env():
        return make("gym", VectorModel(), **_vector_kwargs())

    envs = gym.vector.AsyncVectorEnv([make_env, make_env], context="fork")
    local = make_env()
    try:
        obs, _ = envs.reset(seed=[0, 0])
        np.testing.assert_array_equal(obs[0], local.reset(seed=0)[0])
        obs, reward, terminated, truncated, _ = envs.step(np.zeros((2, 2), dtype=np.float32))
        expected = local.step(np.zeros(2, dtype=np.float32))
        assert obs.shape == (2, 6)
        np.testing.assert_array_equal(obs[0], expected[0])
        assert reward[0] == expected[1] and terminated[0] == expected[2] and truncated[0] == expected[3]
    finally:
        envs.close()


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_torchrl_env_with_opaque_state_pickles_mid_episode(dumps):
    env = make("torchrl", Scripted(), reset_fn=opaque_reset, transition_fn=opaque_transition)
    td = env.reset()
    action = torch.full((3,), 0.25)
    td = env.step_and_maybe_reset(td.set("action", action))[1]
    clone = pickle.loads(dumps(env))
    assert isinstance(clone._held_state, OpaqueState) and clone._held_state is not env._held_state
    a = env.step(td.clone().set("action", action))
    b = clone.step(td.clone().set("action", action))
    assert (a == b).all()
