"""``check_actions``: "clip" clips actions into the action space, "raise" refuses them naming
the space, the value and (batched) the env index; NaN actions are refused under both; by default
action values are not checked. On the TorchRL env AND the Gymnasium env (and on the vector / SB3
exports for batched cases).

The shape (batch dims included), the cast to the space's dtype and ownership of the caller's
buffer are checked on every path by default (one converter, ``validation.to_action``): the
tests after ``# --- the action boundary``."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import WorldModelEnv

from harness import ALL_PATHS, BATCHED, UNBATCHED, Driver, is_batched, on_paths
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


# ---------------------------------------------------------------------------- the action boundary
def _recording(obs_space=OBS, act_space=gym.spaces.Box(-1.0, 1.0, (3,), np.float32), n=None, path="torchrl", **kwargs):
    """An env whose transition records the action it gets (as it gets it) and adds its sum over
    the action dims to the state; with its list of actions."""
    seen = []

    def reset(model, batch_size=()):
        return torch.zeros(*batch_size, *obs_space.shape)

    def transition(model, state, action):
        seen.append(action)
        step = torch.as_tensor(action).float()
        return {"state": state + (step.sum(-1, keepdim=True) if step.ndim else step),
                "observation": state + (step.sum(-1, keepdim=True) if step.ndim else step)}

    env = make(path, object(), obs_space, act_space, n=n, reset_fn=reset, transition_fn=transition, **kwargs)
    return env, seen


@on_paths(BATCHED)
@pytest.mark.parametrize("hooked", [False, True])
def test_one_envs_action_is_not_broadcast_to_every_env(path, hooked):
    """Gymnasium's SyncVectorEnv refuses one env's action for a batch; so does every path here,
    by default (the model would broadcast it to every env). Also through action_transform_fn."""
    kwargs = {"action_transform_fn": lambda model, a: torch.as_tensor(a)} if hooked else {}
    env, seen = _recording(path=path, n=N, **kwargs)
    driver = Driver(path, env)
    driver.reset(seed=0)
    message = ("action: expected shape (4, 3), got (3,) (the batch (4,), then one env's action shape (3,)); "
               "this is one env's action: it is not broadcast to every env; pass one action per env")
    bad_actions = [np.zeros(3, np.float32), np.zeros((2,), np.float32), np.zeros((N, 1, 3), np.float32),
                   np.zeros((N, 2), np.float32), np.zeros((1, 3), np.float32), np.float32(0.5)]
    if path == "torchrl":  # a TensorDict refuses actions whose leading dims are not its batch itself
        bad_actions = [a for a in bad_actions if a.shape[:1] == (N,)]
    for bad in bad_actions:
        with pytest.raises(ValueError, match=re.escape(message) if bad.shape == (3,) else r"action: expected shape \(4, 3\)"):
            driver.step(bad)
    assert not seen


@on_paths(UNBATCHED)
def test_an_unbatched_env_refuses_a_batch_of_actions(path):
    env, seen = _recording(path=path)
    driver = Driver(path, env)
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("action: expected shape (3,), got (1, 3) (the action space's shape (3,)); "
                                                   "pass one action of shape (3,)")):
        driver.step(np.zeros((1, 3), np.float32))
    assert not seen


@on_paths(BATCHED)
@pytest.mark.parametrize("mode", ["convert", "transform", "as_given"])
def test_one_number_per_env_for_a_one_element_box_reaches_each_env(path, mode):
    """[N] for a Box(1,) space is one number per env: reshaped to the space's [N, 1], so a model
    that broadcasts ``state [N, 3] + action`` gives env i its own action (an [N] action would
    add action j to env i's entry j). Also for an action passed on as given."""
    kwargs = {"transform": {"action_transform_fn": lambda model, a: a},
              "as_given": {"torch_actions": False}}.get(mode, {})
    env, seen = _recording(path=path, n=3, act_space=gym.spaces.Box(-5, 5, (1,), np.float32), **kwargs)
    driver = Driver(path, env)
    driver.reset(seed=0)
    obs = driver.step(np.array([1.0, 2.0, 3.0], np.float32))[0]
    assert tuple(seen[-1].shape) == (3, 1)
    np.testing.assert_array_equal(obs, np.repeat([[1.0], [2.0], [3.0]], 3, axis=1))


@pytest.mark.parametrize("shape", [(N,), (N, 1)])
def test_discrete_actions_as_n_or_n_by_1_reach_the_model_as_the_spec_shape(shape):
    """TorchRL policies give a Discrete index as [N] (the Categorical spec) or [N, 1]: both read
    one index per env and reach the model as [N], as on the exports."""
    env, seen = _recording(n=N, act_space=gym.spaces.Discrete(3))
    td = env.reset()
    env.step(td.set("action", torch.arange(N).reshape(shape) % 3))
    assert seen[-1].shape == (N,) and seen[-1].tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("action,expected", [(2, ()), ([0.5, 0.5, 0.5], (3,)), (np.array([1]), ())])
def test_unbatched_actions_as_python_values_still_work(action, expected):
    space = gym.spaces.Discrete(3) if expected == () else gym.spaces.Box(-1, 1, (3,), np.float32)
    env, seen = _recording(path="gym", act_space=space)
    env.reset(seed=0)
    env.step(action)
    assert tuple(seen[-1].shape) == expected


@on_paths(ALL_PATHS)
@pytest.mark.parametrize("mode", ["convert", "transform", "as_given"])
def test_a_refilled_caller_buffer_does_not_change_what_the_model_kept(path, mode):
    """A model that keeps its last action (an RSSM's input, a smoothness penalty) keeps the
    values it was given: the env hands it its own copy, whatever the caller then writes into
    the buffer it passed (one preallocated buffer refilled each step, numpy or torch)."""
    kwargs = {"transform": {"action_transform_fn": lambda model, a: a},
              "as_given": {"torch_actions": False}}.get(mode, {})
    n = N if path in ("vector", "sb3") else None
    env, seen = _recording(path=path, n=n, **kwargs)
    driver = Driver(path, env)
    driver.reset(seed=0)
    buffer = np.full((3,) if n is None else (n, 3), 0.25, np.float32)
    if path == "torchrl":  # the tensordict's action tensor, refilled in place (SerialEnv's shared buffers)
        buffer = torch.as_tensor(buffer)
        td = driver.td.clone(False).set("action", buffer)
        env.step(td)
    else:
        driver.step(buffer)
    kept = seen[-1]
    buffer[...] = -1.0
    np.testing.assert_array_equal(np.asarray(kept), np.full(buffer.shape, 0.25, np.float32))


@on_paths(ALL_PATHS)
def test_an_integer_cast_that_would_wrap_is_refused_on_every_path(path):
    """300 for a uint8 action space would reach the model as 44 after a cast: refused on every
    path with the message observations get (the TorchRL path used to pass 300 uncast)."""
    n = N if is_batched(path) else None
    env, seen = _recording(path=path, n=n, act_space=gym.spaces.Box(0, 255, (1,), np.uint8))
    driver = Driver(path, env)
    driver.reset(seed=0)
    action = np.array([300]) if n is None else np.array([[300], [1], [2], [3]])
    with pytest.raises(ValueError, match=re.escape("action: values in [") + r"\d+" + re.escape(", 300] (torch.int64) do not "
                       "fit the space's dtype torch.uint8 [0, 255]")):
        driver.step(action)
    assert not seen
    driver.step(action % 256)  # values that fit pass, as the space's dtype, on every path
    assert seen[-1].dtype == torch.uint8 and seen[-1].reshape(-1).tolist()[0] == 44


@on_paths(ALL_PATHS)
@pytest.mark.parametrize("value,message", [
    (1.5, "action: non-integral values [1.5]"),
    (np.nan, "action: non-integral values [nan]"),
])
def test_floats_that_are_not_integral_are_refused_for_a_discrete_space(path, value, message):
    n = N if is_batched(path) else None
    env, seen = _recording(path=path, n=n, act_space=gym.spaces.Discrete(3))
    driver = Driver(path, env)
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        driver.step(np.array(value) if n is None else np.array([0.0, value, 1.0, 2.0]))
    assert not seen
    driver.step(np.array(2.0) if n is None else np.array([0.0, 1.0, 2.0, 1.0]))  # integral floats: accepted
    assert seen[-1].dtype == torch.int64


@on_paths(ALL_PATHS)
def test_a_float_action_that_overflows_the_space_dtype_is_refused(path):
    n = N if is_batched(path) else None
    env, seen = _recording(path=path, n=n)
    driver = Driver(path, env)
    driver.reset(seed=0)
    action = np.zeros((3,) if n is None else (n, 3))
    action[..., 0] = 1e300
    with pytest.raises(ValueError, match=re.escape("action: finite values up to 1e+300 (torch.float64) overflow")):
        driver.step(action)
    assert not seen


class _Shifted(torch.nn.Module):
    """The next state is the state plus the action (an integer, read as a float)."""

    def forward(self, state, action):
        return state + action.to(state.dtype).reshape(*state.shape[:-1], 1)


@pytest.mark.parametrize("space, given, expected", [
    (gym.spaces.Discrete(300), [100, 7], [100, 7]),  # both inside: unchanged
    (gym.spaces.Box(10, 300, (1,), np.int64), [5, 200], [10, 200]),  # row 0 clipped, row 1 inside
], ids=["discrete-inside", "box-one-row-outside"])
def test_clip_keeps_actions_of_a_narrower_integer_dtype_inside_the_space(space, given, expected):
    """check_actions="clip" with uint8 actions for a space whose bound does not fit uint8 (300):
    the action reaches the model clipped into the space, the same on env.step and in a rollout
    (its deferred check). Before: the bound was cast to uint8 (300 -> 44) for the clamp, so a
    rollout's deferred clip turned 100 into 44 and the step's clip (once a row was outside)
    turned 200 into 44, silently."""
    def make_env():
        return WorldModelEnv(_Shifted(), gym.spaces.Box(-1e6, 1e6, (1,), np.float32), space,
                             reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(*batch_size, 1),
                             reward_fn=lambda next_state: next_state.sum(-1), batch_size=(2,), check_actions="clip")

    def policy(tensordict):
        action = torch.tensor(given, dtype=torch.uint8)
        return tensordict.set("action", action if isinstance(space, gym.spaces.Discrete) else action[:, None])

    env = make_env()
    stepped = env.step(policy(env.reset()))["next", "observation"].flatten().tolist()
    rolled = make_env().rollout(1, policy)["next", "observation"].flatten().tolist()
    assert stepped == expected and rolled == expected
