"""``check_actions``: "clip" clips actions into the action space, "raise" refuses them naming
the space, the value and (batched) the env index; NaN actions are refused under both; by default
actions are not checked. On the TorchRL env AND the Gymnasium env (and on the vector / SB3
exports for batched cases)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

from harness import BATCHED, UNBATCHED, Driver, on_paths
from reliability_models import N, OBS, Scripted, action_for, make


@on_paths(UNBATCHED)
def test_check_actions_clip(path):
    clipped = Driver(path, make(path, Scripted(), check_actions="clip"))
    inside = Driver(path, make(path, Scripted()))
    clipped.reset(seed=0), inside.reset(seed=0)
    got = clipped.step(np.array([5.0, -5.0, 0.5], dtype=np.float32))
    expected = inside.step(np.array([1.0, -1.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(got[0], expected[0])


@on_paths(BATCHED)
def test_check_actions_clip_batched(path):
    clipped, inside = Driver(path, make(path, Scripted(), n=N, check_actions="clip")), Driver(path, make(path, Scripted(), n=N))
    clipped.reset(seed=0), inside.reset(seed=0)
    action = action_for(N)
    action[1, 0] = 7.0
    got = clipped.step(action)
    action[1, 0] = 1.0
    np.testing.assert_array_equal(got[0], inside.step(action)[0])


@on_paths(UNBATCHED)
def test_check_actions_raise(path):
    driver = Driver(path, make(path, Scripted(), check_actions="raise"))
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action: outside action_space Box(-1.0, 1.0, (3,), float32); got [5.0, 0.0, 0.0]")):
        driver.step(np.array([5.0, 0.0, 0.0], dtype=np.float32))


@on_paths(BATCHED)
def test_check_actions_raise_names_env_index(path):
    driver = Driver(path, make(path, Scripted(), n=N, check_actions="raise"))
    driver.reset(seed=0)
    action = action_for(N)
    action[3, 2] = -2.0
    with pytest.raises(ValueError, match=re.escape("outside action_space Box(-1.0, 1.0, (3,), float32) at env index [3]; got [0.5, 0.5, -2.0]")):
        driver.step(action)


@on_paths(UNBATCHED)
def test_check_actions_raise_on_wrong_shape(path):
    driver = Driver(path, make(path, Scripted(), check_actions="raise"))
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action: expected shape (3,), got (2,)")):
        driver.step(np.zeros(2, dtype=np.float32))


@on_paths(BATCHED)
def test_check_actions_raise_discrete_names_env_index(path):
    env = make(path, Scripted(), gym.spaces.Box(-100, 100, (3,), np.float32), gym.spaces.Discrete(3), n=N,
               transition_fn=lambda model, state, action: {"state": state, "observation": state},
               check_actions="raise")
    driver = Driver(path, env)
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action: outside action_space Discrete(3) at env index [1]; got 5")):
        driver.step(np.array([0, 5, 2, 1]))


@on_paths(UNBATCHED)
def test_check_actions_clip_discrete(path):
    seen = []

    def transition(model, state, action):
        seen.append(int(action))
        return {"state": state, "observation": state}

    env = make(path, Scripted(), OBS, gym.spaces.Discrete(3), transition_fn=transition, check_actions="clip")
    driver = Driver(path, env)
    driver.reset(seed=0)
    driver.step(np.array(7))
    driver.step(np.array(-1))
    assert seen == [2, 0]


def test_actions_are_not_checked_by_default():
    seen = []

    def transition(model, state, action):
        seen.append(action.clone())
        return {"state": state, "observation": state}

    env = make("gym", Scripted(), transition_fn=transition)
    env.reset(seed=0)
    env.step(np.array([5.0, 0.0, 0.0], dtype=np.float32))
    assert seen[0][0] == 5.0


@on_paths(UNBATCHED)
@pytest.mark.parametrize("mode", ["clip", "raise"])
def test_nan_actions_are_refused_when_checking(path, mode):
    driver = Driver(path, make(path, Scripted(), check_actions=mode))
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action: NaN in action_space")):
        driver.step(np.array([0.0, np.nan, 0.0], dtype=np.float32))


@on_paths(BATCHED)
def test_check_actions_clip_multidiscrete(path):
    seen = []

    def transition(model, state, action):
        seen.append(action.clone())
        return {"state": state, "observation": state}

    env = make(path, Scripted(), OBS, gym.spaces.MultiDiscrete([3, 5]), n=2, transition_fn=transition, check_actions="clip")
    driver = Driver(path, env)
    driver.reset(seed=0)
    driver.step(np.array([[7, -2], [1, 4]]))
    assert seen[-1].tolist() == [[2, 0], [1, 4]]
