"""Every reset / transition return form, hook signature and model-method fallback the tutorial
promises, checked on BOTH paths (the TorchRL ``WorldModelEnv`` and the Gymnasium
``GymWorldModelEnv``): the adapter layer is shared, so both must agree.

The toy dynamics make state and observation distinguishable: ``obs = 2 * state`` unless a form
has no separate state (then the observation is the state).
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import harness
from harness import UNBATCHED, Driver, on_paths
from torchwm_rl import GymWorldModelEnv, WorldModelEnv

OBS_SPACE = gym.spaces.Box(-100.0, 100.0, shape=(3,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
S0 = torch.tensor([0.1, 0.2, 0.3])
ACTION = np.array([0.5, -0.5, 0.25], dtype=np.float32)
PATHS = UNBATCHED  # both unbatched paths


def _driver(path: str, model, **kwargs) -> Driver:
    """The harness driver on ``path`` ("torchrl" or "gym") for an env of ``model`` built with
    ``kwargs`` (the spaces default to this module's); its default action is :data:`ACTION`."""
    obs_space = kwargs.pop("observation_space", OBS_SPACE)
    act_space = kwargs.pop("action_space", ACT_SPACE)
    return Driver(path, harness.make(path, model, obs_space, act_space, **kwargs), action=ACTION)


def next_state(state, action):
    return torch.as_tensor(state) + torch.as_tensor(action, dtype=torch.float32)


class Recorder:
    """Holds the transition calls' (state, action) so tests can see what the model got."""

    def __init__(self):
        self.calls = []

    def record(self, state, action):
        self.calls.append((state, action))


# ------------------------------------------------------------------------------ reset forms
RESET_FORMS = {
    "obs": (lambda: S0.clone(), False, {}),
    "(obs, info)": (lambda: (S0.clone(), {"k": 1}), False, {"k": 1}),
    "(state, obs)": (lambda: (S0.clone(), 2 * S0), True, {}),
    "(state, obs, info)": (lambda: (S0.clone(), 2 * S0, {"k": 1}), True, {"k": 1}),
    "mapping": (lambda: {"state": S0.clone(), "observation": 2 * S0, "info": {"k": 1}}, True, {"k": 1}),
    "mapping latent/obs": (lambda: {"latent": S0.clone(), "obs": 2 * S0}, True, {}),
    "mapping image": (lambda: {"model_state": S0.clone(), "image": 2 * S0}, True, {}),
    "mapping pixels": (lambda: {"pixels": 2 * S0}, False, {}),
}


@on_paths(PATHS)
@pytest.mark.parametrize("form", list(RESET_FORMS))
def test_reset_return_form(path, form):
    make, has_state, info = RESET_FORMS[form]
    rec = Recorder()

    def transition(model, state, action):
        rec.record(state, action)
        return {"state": next_state(state, action), "observation": 2 * next_state(state, action)}

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda model, seed=None, options=None: make(),
               transition_fn=transition)
    obs = d.reset()
    got_info = d.reset_info
    expected_obs = (2 * S0 if has_state or form == "mapping pixels" else S0).numpy()
    np.testing.assert_allclose(obs, expected_obs)
    if path == "gym":
        assert got_info == info  # the reset hook's info exactly, as TorchWM (nothing added)
    d.step()
    state_given = rec.calls[-1][0]
    # without a separate state, the observation serves as the state
    expected_state = S0 if has_state else torch.as_tensor(expected_obs)
    torch.testing.assert_close(torch.as_tensor(state_given), expected_state)


@on_paths(PATHS)
def test_reset_without_state_uses_initial_state(path):
    rec = Recorder()

    def transition(model, state, action):
        rec.record(state, action)
        return {"state": next_state(state, action), "observation": 2 * next_state(state, action)}

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda model: 2 * S0, transition_fn=transition,
               initial_state=S0.clone())
    d.reset()
    d.step()
    torch.testing.assert_close(rec.calls[-1][0], S0)


@on_paths(PATHS)
def test_initial_observation_without_reset_fn(path):
    model = nn.Linear(1, 1)  # no reset method: initial values serve
    d = _driver(path, model, transition_fn=lambda s, a: next_state(s, a), initial_observation=S0.numpy(),
               initial_state=S0.clone())
    obs = d.reset()
    np.testing.assert_allclose(obs, S0.numpy())
    obs, *_ = d.step()
    np.testing.assert_allclose(obs, (S0 + torch.as_tensor(ACTION)).numpy())


# ------------------------------------------------------------------------- transition forms
def _s1():
    return next_state(S0, ACTION)


TRANSITION_FORMS = {
    # name: (fn(state, action) -> return value, reward, terminated, truncated, has_state)
    "mapping state/observation": (
        lambda s, a: {"state": next_state(s, a), "observation": 2 * next_state(s, a), "reward": 1.5,
                      "terminated": True, "truncated": False, "info": {}},
        1.5, True, False, True),
    "mapping next_state/obs": (
        lambda s, a: {"next_state": next_state(s, a), "obs": 2 * next_state(s, a), "reward": 1.5}, 1.5, False, False, True),
    "mapping image/done": (
        lambda s, a: {"state": next_state(s, a), "image": 2 * next_state(s, a), "done": True}, 0.0, True, False, True),
    "mapping pixels/truncated": (
        lambda s, a: {"state": next_state(s, a), "pixels": 2 * next_state(s, a), "reward": torch.tensor(2.0),
                      "truncated": np.bool_(True)}, 2.0, False, True, True),
    "gymnasium 5-tuple": (
        lambda s, a: (next_state(s, a), 1.5, False, True, {}), 1.5, False, True, False),
    "gym 4-tuple": (lambda s, a: (next_state(s, a), 1.5, True, {}), 1.5, True, False, False),
    # as gymnasium.utils.step_api_compatibility: a time-limit "done" is a truncation only
    "gym 4-tuple TimeLimit.truncated": (
        lambda s, a: (next_state(s, a), 1.5, True, {"TimeLimit.truncated": True}), 1.5, False, True, False),
    "gym 4-tuple TimeLimit.truncated=False": (
        lambda s, a: (next_state(s, a), 1.5, True, {"TimeLimit.truncated": False}), 1.5, True, False, False),
    "(state, obs, reward)": (
        lambda s, a: (next_state(s, a), 2 * next_state(s, a), torch.tensor([1.5])), 1.5, False, False, True),
    # what a (state, obs) 2-tuple said before 2-tuples were refused (see the test below)
    "mapping state/observation only": (
        lambda s, a: {"state": next_state(s, a), "observation": 2 * next_state(s, a)}, 0.0, False, False, True),
    # as TorchWM: the Gymnasium / Gym tuples take the next state from info["model_state"]
    "gymnasium 5-tuple info model_state": (
        lambda s, a: (2 * next_state(s, a), 1.5, False, False, {"model_state": next_state(s, a)}),
        1.5, False, False, True),
    "gym 4-tuple info model_state": (
        lambda s, a: (2 * next_state(s, a), 1.5, False, {"model_state": next_state(s, a)}), 1.5, False, False, True),
    "6-tuple": (
        lambda s, a: (next_state(s, a), 2 * next_state(s, a), 1.5, torch.tensor(True), False, {"x": 1}),
        1.5, True, False, True),
    "bare next obs": (lambda s, a: next_state(s, a), 0.0, False, False, False),
}


@on_paths(PATHS)
@pytest.mark.parametrize("form", list(TRANSITION_FORMS))
def test_transition_return_form(path, form):
    fn, reward, terminated, truncated, has_state = TRANSITION_FORMS[form]
    rec = Recorder()

    def transition(state, action):
        rec.record(state, action)
        return fn(state, action)

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: (S0.clone(), S0.clone()), transition_fn=transition)
    d.reset()
    obs, r, term, trunc, _ = d.step()
    expected_obs = 2 * _s1() if has_state else _s1()
    np.testing.assert_allclose(obs, expected_obs.numpy(), rtol=1e-6)
    assert (r, term, trunc) == (reward, terminated, truncated)
    assert type(r) is float and type(term) is bool and type(trunc) is bool
    if term or trunc:
        d.reset()
        return
    d.step()
    # the next call gets the state the model returned (s1, not the observation 2 * s1), or the
    # observation (s1) when the form carries no state
    torch.testing.assert_close(torch.as_tensor(rec.calls[-1][0]), _s1())


@on_paths(PATHS)
def test_transition_2_tuple_is_refused(path):
    """``(state, obs)`` and ``(obs, reward)`` cannot be told apart: a 2-tuple is refused, and the
    message names the forms to return instead."""
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: (S0.clone(), S0.clone()),
               transition_fn=lambda s, a: (next_state(s, a), 2 * next_state(s, a)))
    d.reset()
    message = (
        "transition_fn returned a 2-tuple, which could be (state, obs) or (obs, reward); return "
        "{'state': ..., 'observation': ...} or (state, obs, reward) instead."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        d.step()


@on_paths(["gym"])
def test_transition_info_reaches_gym_info(path):
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
               transition_fn=lambda s, a: (next_state(s, a), 0.0, False, False, {"diag": 7}))
    d.reset()
    *_, info = d.step()
    assert info["diag"] == 7


@on_paths(PATHS)
def test_mapping_with_unknown_key_is_refused(path):
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
               transition_fn=lambda s, a: {"observation": s, "rewrd": 1.0})
    d.reset()
    with pytest.raises(ValueError, match="rewrd"):
        d.step()


# ------------------------------------------------------------------- reward/terminal fallbacks
@on_paths(PATHS)
def test_missing_reward_and_flag_default_to_zero_and_false(path):
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
               transition_fn=lambda s, a: {"observation": next_state(s, a)})
    d.reset()
    _, r, term, trunc, _ = d.step()
    assert (r, term, trunc) == (0.0, False, False)


@on_paths(PATHS)
def test_missing_reward_and_flag_come_from_reward_fn_and_terminal_fn(path):
    seen = {}

    # TorchWM's full list (model, next_state, obs, action); the state before the step by name
    def reward_fn(model, next_state, obs, action, prev_state):
        seen["reward"] = (prev_state, action, next_state, obs)
        return next_state.sum()

    def terminal_fn(model, next_state, obs, action, prev_state):
        seen["terminal"] = (prev_state, action, next_state, obs)
        return next_state[0] > 0.5

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: (S0.clone(), S0.clone()),
               transition_fn=lambda s, a: {"state": next_state(s, a), "observation": 2 * next_state(s, a)},
               reward_fn=reward_fn, terminal_fn=terminal_fn)
    d.reset()
    _, r, term, trunc, _ = d.step()
    assert r == pytest.approx(float(_s1().sum()))
    assert term is True and trunc is False  # 0.1 + 0.5 > 0.5
    for key in ("reward", "terminal"):
        state, action, nxt, obs = seen[key]
        torch.testing.assert_close(state, S0)
        torch.testing.assert_close(torch.as_tensor(action), torch.as_tensor(ACTION))
        torch.testing.assert_close(nxt, _s1())  # the model's next state, not the observation
        torch.testing.assert_close(torch.as_tensor(obs), 2 * _s1())  # the observation reached


@on_paths(PATHS)
def test_returned_reward_and_flag_win_over_reward_fn_and_terminal_fn(path):
    calls = []
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
               transition_fn=lambda s, a: {"observation": next_state(s, a), "reward": 3.0, "terminated": False},
               reward_fn=lambda model, next_state, obs, action: calls.append("r") or 99.0,
               terminal_fn=lambda model, next_state, obs, action: calls.append("t") or True)
    d.reset()
    with pytest.warns(UserWarning, match=r"reward_fn is not called: transition_fn returns a reward itself"):
        _, r, term, _, _ = d.step()
    assert (r, term, calls) == (3.0, False, [])


@on_paths(PATHS)
def test_a_dead_reward_fn_or_terminal_fn_is_named_once_and_shown_in_the_repr(path):
    """Issue 25: an explicit reward_fn / terminal_fn the transition's own value overrides (as in
    TorchWM) was silently dead while repr(env) and ``torchwm-rl check`` listed it as bound."""
    import warnings

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
                transition_fn=lambda s, a: {"observation": next_state(s, a), "reward": 3.0},
                reward_fn=lambda model, next_state, obs, action: 99.0,
                terminal_fn=lambda model, next_state, obs, action: False)
    d.reset()
    assert "reward_fn" in repr(d.env) and "not stepped yet" in repr(d.env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            d.step()
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len([m for m in messages if m.startswith("reward_fn is not called")]) == 1  # once, not per step
    assert not [m for m in messages if m.startswith("terminal_fn")]  # the transition gives no flag: in use
    lines = d.env.adapter.describe_bindings()
    reward_line = next(line for line in lines if line.startswith("reward_fn"))
    terminal_line = next(line for line in lines if line.startswith("terminal_fn"))
    assert "NOT CALLED: transition_fn returns the reward, which is used" in reward_line
    assert "in use: transition_fn returns no terminated flag" in terminal_line
    assert reward_line in repr(d.env)


@on_paths(PATHS)
def test_a_terminated_flag_of_none_is_no_flag_as_a_reward_of_none_is_no_reward(path):
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
                transition_fn=lambda s, a: {"observation": next_state(s, a), "reward": None, "terminated": None},
                reward_fn=lambda model, next_state, obs, action: 5.0,
                terminal_fn=lambda model, next_state, obs, action: True)
    d.reset()
    _, r, term, _, _ = d.step()
    assert (r, term) == (5.0, True)


# --------------------------------------------------------------------------- call signatures
class SigModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))


SIGNATURES = {
    "fn(state, action)": lambda s, a: next_state(s, a),
    "fn(model, state, action)": lambda model, s, a: next_state(s, a) * model.scale.detach(),
    "fn(*args)": lambda *args: next_state(args[-2], args[-1]),
}


@on_paths(PATHS)
@pytest.mark.parametrize("sig", list(SIGNATURES))
def test_transition_fn_signatures(path, sig):
    d = _driver(path, SigModel(), reset_fn=lambda: S0.clone(), transition_fn=SIGNATURES[sig])
    d.reset()
    obs, *_ = d.step()
    np.testing.assert_allclose(obs, _s1().numpy(), rtol=1e-6)


RESET_SIGNATURES = {
    "fn()": lambda: S0.clone(),
    "fn(model)": lambda model: S0.clone() * model.scale.detach(),
    "fn(model, seed=None, options=None)": lambda model, seed=None, options=None: S0.clone() + (seed or 0),
    "fn(seed=None)": lambda seed=None: S0.clone() + (seed or 0),
    # as TorchWM: no positional parameter, so no argument (seed/options are not keywords)
    "fn(**kwargs)": lambda **kwargs: S0.clone() + (kwargs.get("seed") or 0) + 10 * len(kwargs),
}


@on_paths(PATHS)
@pytest.mark.parametrize("sig", list(RESET_SIGNATURES))
def test_reset_fn_signatures(path, sig):
    d = _driver(path, SigModel(), reset_fn=RESET_SIGNATURES[sig], transition_fn=next_state)
    obs = d.reset(seed=2)
    uses_seed = "seed" in sig
    np.testing.assert_allclose(obs, (S0 + (2 if uses_seed else 0)).numpy(), rtol=1e-6)


@on_paths(PATHS)
def test_reward_fn_and_terminal_fn_signatures(path):
    """TorchWM's ``fn(model, next_state, obs, action)`` down to a leading part of it; a lone
    ``next_state`` is bound by name."""
    d = _driver(path, SigModel(), reset_fn=lambda: (S0.clone(), S0.clone()),
               transition_fn=lambda s, a: {"state": next_state(s, a), "observation": next_state(s, a)},
               reward_fn=lambda next_state: next_state.sum(),
               terminal_fn=lambda model, next_state: next_state[0] > 100 * model.scale)
    d.reset()
    _, r, term, _, _ = d.step()
    assert r == pytest.approx(float(_s1().sum())) and term is False


@on_paths(PATHS)
def test_hook_parameters_named_like_the_hook_args_are_matched_by_name(path):
    """``reward_fn(state, action)`` gets the state the step reached (``state`` in a reward
    hook, as in TorchWM) and the action, not the positional (model, next_state);
    ``terminal_fn(next_state, action)`` (the tutorial's head order) gets its own order;
    ``render_fn(model, state)`` keeps TorchWM's positional binding."""
    seen = {}
    d = _driver(path, SigModel(), reset_fn=lambda: (S0.clone(), S0.clone()),
               transition_fn=lambda s, a: {"state": next_state(s, a), "observation": 2 * next_state(s, a)},
               reward_fn=lambda state, action: seen.setdefault("reward", (state, action)) and 0.0,
               terminal_fn=lambda next_state, action: seen.setdefault("terminal", (next_state, action)) and False,
               render_fn=lambda model, state: seen.setdefault("render", state))
    d.reset()
    d.step()
    torch.testing.assert_close(seen["reward"][0], _s1())  # the state reached, not the observation
    torch.testing.assert_close(seen["reward"][1], torch.as_tensor(ACTION))
    torch.testing.assert_close(seen["terminal"][0], _s1())
    torch.testing.assert_close(seen["terminal"][1], torch.as_tensor(ACTION))
    if path == "gym":
        d.env.render()
        torch.testing.assert_close(seen["render"], _s1())


# ---------------------------------------------------------------------- model-method fallbacks
class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.used = []


def _model_with(reset_name: str | None, step_name: str | None):
    """A module whose reset/transition live under the given method names."""

    def reset(self, seed=None, options=None):
        self.used.append(reset_name)
        return S0.clone()

    def step(self, state, action):
        self.used.append(step_name)
        return next_state(state, action)

    attrs = {}
    if reset_name:
        attrs[reset_name] = reset
    if step_name == "__call__":
        attrs["forward"] = step  # nn.Module's __call__ runs forward
    elif step_name:
        attrs[step_name] = step
    return type(f"Model_{reset_name}_{step_name}", (_Base,), attrs)()


@on_paths(PATHS)
@pytest.mark.parametrize("reset_name", ["reset_env", "reset_state", "reset"])
def test_model_reset_method_fallback(path, reset_name):
    model = _model_with(reset_name, "env_step")
    d = _driver(path, model)
    obs = d.reset()
    np.testing.assert_allclose(obs, S0.numpy())
    assert reset_name in model.used


@on_paths(PATHS)
@pytest.mark.parametrize(
    "step_name", ["env_step", "step", "predict_step", "predict", "imagine_step", "transition", "__call__"]
)
def test_model_transition_method_fallback(path, step_name):
    model = _model_with("reset", step_name)
    d = _driver(path, model)
    d.reset()
    obs, *_ = d.step()
    np.testing.assert_allclose(obs, _s1().numpy(), rtol=1e-6)
    assert model.used[-1] == step_name


def test_model_method_priority():
    """reset_env before reset_state before reset; env_step before step ... before __call__."""
    names = ["env_step", "step", "predict_step", "predict", "imagine_step", "transition"]

    def make_step(name):
        def fn(self, state, action):
            self.used.append(name)
            return next_state(state, action)
        return fn

    def make_reset(name):
        def fn(self, seed=None, options=None):
            self.used.append(name)
            return S0.clone()
        return fn

    attrs = {n: make_step(n) for n in names}
    attrs.update({n: make_reset(n) for n in ("reset_env", "reset_state", "reset")})
    attrs["forward"] = make_step("__call__")
    for path in PATHS:
        for i in range(len(names) + 1):
            cls = type("M", (_Base,), {k: v for k, v in attrs.items() if k not in names[:i]})
            model = cls()
            d = _driver(path, model)
            d.reset()
            d.step()
            assert model.used[0] == "reset_env"
            assert model.used[-1] == (names[i] if i < len(names) else "__call__")


@pytest.mark.parametrize("cls", [WorldModelEnv, GymWorldModelEnv])
def test_model_without_transition_is_refused_at_construction(cls):
    class NoDynamics:
        def reset(self, seed=None, options=None):
            return S0.clone()

    with pytest.raises(TypeError, match="transition_fn"):
        cls(NoDynamics(), OBS_SPACE, ACT_SPACE)


@pytest.mark.parametrize("cls", [WorldModelEnv, GymWorldModelEnv])
def test_module_without_forward_or_transition_is_refused_at_construction(cls):
    """Every nn.Module is callable, but one without forward has no transition either."""

    class NoForward(nn.Module):
        def reset(self, seed=None, options=None):
            return S0.clone()

    with pytest.raises(TypeError, match="transition_fn"):
        cls(NoForward(), OBS_SPACE, ACT_SPACE)


@pytest.mark.parametrize("cls", [WorldModelEnv, GymWorldModelEnv])
def test_explicit_hooks_win_over_model_methods(cls):
    model = _model_with("reset", "step")
    env = cls(model, OBS_SPACE, ACT_SPACE, reset_fn=lambda: 3 * S0, transition_fn=lambda s, a: s)
    assert env.adapter.reset_hook.name == "reset_fn" and env.adapter.transition_hook.name == "transition_fn"
    assert model.used == []


# ----------------------------------------------------------------------- states handed back
class Opaque:
    """A Python state object the env cannot put in a TensorDict."""

    def __init__(self, value):
        self.value = value


def _state_trace(path, initial, advance, to_obs):
    """Run reset + 2 steps; returns (states the reset/transition returned, states the model got)."""
    returned, received = [], []

    def reset():
        returned.append(initial)
        return initial, to_obs(initial)

    def transition(state, action):
        received.append(state)
        nxt = advance(state)
        returned.append(nxt)
        return {"state": nxt, "observation": to_obs(nxt)}

    d = _driver(path, nn.Linear(1, 1), reset_fn=reset, transition_fn=transition)
    returned.clear()  # the TorchRL env probes the reset hook once at construction
    d.reset()
    d.step()
    d.step()
    return returned, received, d


@on_paths(PATHS)
def test_numpy_state_stays_numpy(path):
    returned, received, d = _state_trace(
        path, np.array([0.1, 0.2, 0.3]), lambda s: s + 1.0, lambda s: s.astype(np.float32)
    )
    assert len(received) == 2
    for got, ret in zip(received, returned[:2]):
        assert type(got) is np.ndarray and got.dtype == np.float64
        np.testing.assert_array_equal(got, ret)
    if path == "gym":
        assert received[0] is returned[0] and received[1] is returned[1]
        assert d.env.state is returned[-1]


@on_paths(PATHS)
def test_opaque_state_is_handed_back_as_is(path):
    returned, received, d = _state_trace(
        path, Opaque(S0.clone()), lambda s: Opaque(s.value + 1), lambda s: s.value
    )
    assert received[0] is returned[0] and received[1] is returned[1]


@on_paths(PATHS)
def test_dict_state_stays_a_plain_dict(path):
    initial = {"h": S0.clone(), "z": {"c": torch.zeros(2, dtype=torch.float64)}}

    def advance(s):
        return {"h": s["h"] + 1, "z": {"c": s["z"]["c"] + 1}}

    returned, received, d = _state_trace(path, initial, advance, lambda s: s["h"])
    for got, ret in zip(received, returned[:2]):
        assert type(got) is dict and type(got["z"]) is dict  # not a TensorDict
        assert set(got) == {"h", "z"}
        torch.testing.assert_close(got["h"], ret["h"])
        torch.testing.assert_close(got["z"]["c"], ret["z"]["c"])  # dtype float64 kept
    if path == "torchrl":
        # a dict-of-tensors state travels in the TensorDict, as the design says
        assert ("model_state", "h") in d.td.keys(True)
    else:
        assert received[1] is returned[1]


@on_paths(PATHS)
def test_tensor_state_dtype_and_values_kept(path):
    returned, received, d = _state_trace(
        path, torch.arange(3, dtype=torch.float64), lambda s: s * 2, lambda s: s.float()
    )
    for got, ret in zip(received, returned[:2]):
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        torch.testing.assert_close(got, ret)


# ------------------------------------------------------------------------------- actions
@on_paths(PATHS)
def test_action_transform_output_reaches_model_as_is(path):
    sentinel = []

    def transform(action):
        obj = {"encoded": action, "tag": object()}
        sentinel.append(obj)
        return obj

    got = []

    def transition(state, action):
        got.append(action)
        return next_state(state, action["encoded"])

    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(), transition_fn=transition,
               action_transform_fn=transform)
    d.reset()
    d.step()
    assert got[-1] is sentinel[-1]


@on_paths(PATHS)
def test_action_transform_sees_the_library_action_as_given(path):
    """As TorchWM: the transform gets the action the path was given, with no tensor conversion
    (``torch_actions`` applies only without a transform): the TorchRL path's action is the
    TensorDict's tensor, the Gymnasium path's the caller's numpy array, as a copy the env owns (a
    transform or model that keeps it is not changed when the caller refills its buffer)."""
    seen, got = [], []
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(),
               transition_fn=lambda s, a: got.append(a) or next_state(s, torch.as_tensor(a)),
               action_transform_fn=lambda model, a: seen.append(a) or a)
    d.reset()
    d.step(ACTION)
    if path == "gym":
        assert type(seen[-1]) is np.ndarray and seen[-1].dtype == ACTION.dtype  # not converted to a tensor
        np.testing.assert_array_equal(seen[-1], ACTION)
        assert not np.shares_memory(seen[-1], ACTION)  # the env's own copy
    else:
        assert isinstance(seen[-1], torch.Tensor) and seen[-1].dtype == torch.float32
        torch.testing.assert_close(seen[-1], torch.as_tensor(ACTION))
    assert got[-1] is seen[-1]  # and the transform's output reaches the model as is


def test_torch_actions_true_converts_library_actions_to_tensors():
    got = []
    env = GymWorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=lambda: S0.clone(),
                           transition_fn=lambda s, a: got.append(a) or next_state(s, a))
    env.reset()
    env.step([0.5, -0.5, 0.25])  # a list, as a user might pass
    env.step(ACTION.astype(np.float64))
    for action in got:
        assert isinstance(action, torch.Tensor)
        assert action.dtype == torch.float32  # the action space's dtype
        assert action.device == torch.device("cpu")  # the model's device
        torch.testing.assert_close(action, torch.as_tensor(ACTION))


def test_torch_actions_discrete_become_int64_tensors():
    got = []
    env = GymWorldModelEnv(nn.Linear(1, 1), OBS_SPACE, gym.spaces.Discrete(3), reset_fn=lambda: S0.clone(),
                           transition_fn=lambda s, a: got.append(a) or s)
    env.reset()
    env.step(2)
    env.step(np.int64(1))
    assert [a.dtype for a in got] == [torch.int64, torch.int64] and [int(a) for a in got] == [2, 1]


def test_torch_actions_false_passes_library_actions_through():
    got = []
    env = GymWorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=lambda: S0.clone(),
                           transition_fn=lambda s, a: got.append(a) or next_state(s, a), torch_actions=False)
    env.reset()
    as_list = [0.5, -0.5, 0.25]
    env.step(ACTION)
    env.step(as_list)
    assert type(got[0]) is np.ndarray and got[1] is as_list  # not converted
    np.testing.assert_array_equal(got[0], ACTION)
    assert not np.shares_memory(got[0], ACTION)  # an array is passed as the env's own copy


def test_torch_actions_false_on_torchrl_path_passes_the_tensordict_action():
    got = []
    env = WorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=lambda: S0.clone(),
                        transition_fn=lambda s, a: got.append(a) or next_state(s, a), torch_actions=False)
    td = env.reset()
    action = torch.as_tensor(ACTION)
    td["action"] = action
    env.step(td)
    assert isinstance(got[-1], torch.Tensor)
    torch.testing.assert_close(got[-1], action)


def test_batched_gym_4_tuple_splits_done_like_gymnasium():
    """``done`` + ``info["TimeLimit.truncated"]`` per env, as Gymnasium's step-API converter."""
    from gymnasium.utils.step_api_compatibility import convert_to_terminated_truncated_step_api

    done = np.array([True, True, False])
    time_limit = np.array([True, False, False])

    def reset(seed=None, options=None):
        return torch.zeros(3, 3)

    def transition(state, action):
        return state, torch.zeros(3), torch.as_tensor(done), {"TimeLimit.truncated": torch.as_tensor(time_limit)}

    env = WorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=reset, transition_fn=transition,
                        batch_size=(3,))
    out = env.rand_step(env.reset())["next"]
    _, _, terminated, truncated, _ = convert_to_terminated_truncated_step_api(
        (None, None, done, {"TimeLimit.truncated": time_limit}), is_vector_env=True
    )
    assert out["terminated"].squeeze(-1).tolist() == terminated.tolist() == [False, True, False]
    assert out["truncated"].squeeze(-1).tolist() == truncated.tolist() == [True, False, False]


# ------------------------------------------------------------- TensorDicts as return values
def _td_transition(kind):
    from tensordict import TensorDict

    def transition(model, state, action):
        nxt = next_state(state, action)
        if kind == "record":
            return TensorDict({"state": nxt, "observation": 2 * nxt, "reward": nxt.sum(-1),
                               "terminated": torch.zeros(nxt.shape[:-1], dtype=torch.bool)}, batch_size=nxt.shape[:-1])
        if kind == "gymnasium-info":
            info = TensorDict({"model_state": nxt}, batch_size=nxt.shape[:-1])
            return 2 * nxt, nxt.sum(-1), False, False, info
        raise ValueError(kind)

    return transition


@on_paths(PATHS)
@pytest.mark.parametrize("kind", ["record", "gymnasium-info"])
def test_a_tensordict_record_reads_like_a_mapping(path, kind):
    """Issue 25: a TensorDict returned as the transition record crashed with
    ``unhashable type: 'TensorDict'``."""
    d = _driver(path, nn.Linear(1, 1), reset_fn=lambda: S0.clone(), transition_fn=_td_transition(kind))
    d.reset()
    obs, r, term, trunc, _ = d.step()
    expected = next_state(S0, ACTION)
    torch.testing.assert_close(torch.as_tensor(obs), 2 * expected)
    assert r == pytest.approx(float(expected.sum())) and not term and not trunc
    obs, _, _, _, _ = d.step()  # stepped from the record's state, not from the observation
    torch.testing.assert_close(torch.as_tensor(obs), 2 * next_state(expected, ACTION))


DICT_SPACE = gym.spaces.Dict({"pos": gym.spaces.Box(-100.0, 100.0, (2,), np.float32),
                              "vel": gym.spaces.Box(-100.0, 100.0, (1,), np.float32)})


@pytest.mark.parametrize("path", ["torchrl", "gym", "vector", "sb3"])
@pytest.mark.parametrize("where", ["bare", "in-a-record", "reset"])
def test_a_tensordict_dict_observation_reads_like_a_dict(path, where):
    from tensordict import TensorDict

    n = None if path in ("torchrl", "gym") else 2
    batch = () if n is None else (n,)

    def obs_of(state):
        return TensorDict({"pos": state[..., :2], "vel": state[..., 2:]}, batch_size=batch)

    def reset(batch_size=()):
        state = torch.zeros(*batch, 3)
        if where == "bare":  # the observation is the state
            return obs_of(state).clone()
        if where == "reset":
            return state, obs_of(state).clone()
        return state, {"pos": state[..., :2].clone(), "vel": state[..., 2:].clone()}

    def transition(model, state, action):
        if where == "bare":
            return obs_of(torch.cat([state["pos"], state["vel"]], -1) + 1.0).clone()
        nxt = state + 1.0
        return {"state": nxt, "observation": obs_of(nxt).clone(), "reward": nxt[..., 0]}

    act = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    env = harness.make(path, None, DICT_SPACE, act, n=n, reset_fn=reset, transition_fn=transition)
    d = Driver(path, env, action=np.zeros((*batch, 3), np.float32))
    first = d.reset(seed=0) if path != "sb3" else d.reset()
    np.testing.assert_array_equal(np.asarray(first["pos"]), np.zeros((*batch, 2), np.float32))
    obs = d.step()[0]
    np.testing.assert_array_equal(np.asarray(obs["pos"]), np.ones((*batch, 2), np.float32))
    np.testing.assert_array_equal(np.asarray(obs["vel"]), np.ones((*batch, 1), np.float32))


# --------------------------------------------- the state is the model's value, not its cast
F32 = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)


def _logistic(model, state, action):
    """A chaotic map: float32 rounding of its state would drift from a float64 loop quickly."""
    return 3.9 * state * (1.0 - state)


def _logistic_reset(batch_size=()):
    return torch.full((*batch_size, 1), 0.3, dtype=torch.float64)


def _float64_loop(steps):
    x, out = torch.tensor([0.3], dtype=torch.float64), []
    for _ in range(steps):
        x = 3.9 * x * (1.0 - x)
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("path", ["torchrl", "torchrl-step", "gym", "vector", "sb3"])
def test_a_float64_model_is_stepped_from_its_float64_state_not_its_float32_observation(path):
    """Issue 25: with no separate state, the env stepped the model from the observation after
    its cast to the space's dtype: a float64 model was rounded to float32 every step (a chaotic
    map drifted 0.42 from a float64 loop by step 40)."""
    steps = 40
    expected = _float64_loop(steps)
    n = None if path in ("torchrl", "torchrl-step", "gym") else 2
    base = "torchrl" if path == "torchrl-step" else path
    env = harness.make(base, None, F32, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), n=n,
                       reset_fn=_logistic_reset, transition_fn=_logistic)
    if path == "torchrl":
        assert env.state_spec["model_state"].dtype == torch.float64  # the model's dtype
        td = env.rollout(steps, break_when_any_done=False)
        states, observations = td["next", "model_state"], td["next", "observation"]
        assert states.dtype == torch.float64 and observations.dtype == torch.float32
        torch.testing.assert_close(states[:, 0], expected[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(observations[:, 0], expected[:, 0].float(), rtol=0, atol=0)
        return
    d = Driver(base, env, action=np.zeros((1,) if n is None else (n, 1), np.float32))
    d.reset(seed=0) if base != "sb3" else d.reset()
    got = []
    for _ in range(steps):
        obs = d.step()[0]
        got.append(np.asarray(obs).reshape(-1)[0])
    np.testing.assert_array_equal(np.array(got, np.float32), expected[:, 0].float().numpy())
    state = env.state if base in ("gym", "vector") else (
        env._snapshot.state if base == "sb3" else d.td["model_state"])
    assert state.dtype == torch.float64
    assert float(state.reshape(-1)[0]) == float(expected[-1, 0])


def test_integer_dynamics_never_wrap_in_the_observation_dtype():
    """An int64 counter observed as uint8: stepped from its uint8 cast it wrapped at 256 and
    the env never said; stepped from its own value, the observation's cast refuses 256."""
    space = gym.spaces.Box(0, 255, shape=(1,), dtype=np.uint8)
    env = WorldModelEnv(None, space, gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                        reset_fn=lambda: torch.tensor([250], dtype=torch.int64),
                        transition_fn=lambda model, state, action: state + 3)
    td = env.reset()
    assert td["model_state"].dtype == torch.int64 and td["observation"].dtype == torch.uint8
    td = env.rollout(1, break_when_any_done=False)
    assert td["next", "model_state"].tolist() == [[253]]
    with pytest.raises(ValueError, match=re.escape("observation: values in [256, 256] (torch.int64) do not fit")):
        env.rollout(2, break_when_any_done=False)


def test_partial_resets_and_given_states_of_the_models_dtype():
    from tensordict import TensorDict

    env = WorldModelEnv(None, F32, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), reset_fn=_logistic_reset,
                        transition_fn=lambda model, state, action: {
                            "observation": state + 1.0, "terminated": (state[..., 0] > 1.5) & (torch.arange(3) == 1)},
                        batch_size=(3,))
    td = env.rollout(4, break_when_any_done=False)  # env 1 ends at its 3rd step and restarts
    assert td["model_state"].dtype == torch.float64
    assert td["model_state"][1, :, 0].tolist() == [0.3, 0.3 + 1.0, 0.3 + 1.0 + 1.0, 0.3]
    assert td["model_state"][0, :, 0].tolist() == [0.3, 0.3 + 1.0, 0.3 + 1.0 + 1.0, 0.3 + 1.0 + 1.0 + 1.0]
    given = torch.tensor([[0.1], [0.2], [0.4]], dtype=torch.float64)
    td = env.reset(TensorDict({"model_state": given}, batch_size=[3]), set_state=True)
    assert td["observation"].dtype == torch.float32
    torch.testing.assert_close(td["observation"], given.float())
    # float32 start states (what replay buffers store) are widened to the float64 state exactly;
    # a narrowing cast is refused (test_ownership_battery)
    widened = env.reset(TensorDict({"model_state": given.float()}, batch_size=[3]), set_state=True)
    assert widened["model_state"].dtype == torch.float64
    assert widened["model_state"].tolist() == given.float().double().tolist()
