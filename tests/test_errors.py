"""Clear errors for bad use and bad model output (each names the key, expected and got), and
the inference-hygiene guarantees of the Gymnasium path (no autograd graph, nothing
grad-tracking in ``info``).

Every adapter output passes through the one validation layer (``torchwm_rl.validation`` via
``ModelAdapter``), so each error is asserted on the TorchRL env AND the Gymnasium env (and on the
vector / SB3 exports for batched cases), at reset and at step where both can produce it: the same
key, expected and received value in the message. (NaN/inf errors are part of the NaN policy:
see ``test_nan_policy.py``; out-of-space actions: ``test_action_checks.py``.)
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDictBase
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.spaces import numpy_to_torch_dtype

from models import (
    VectorModel,
    reset_world_model,
    transition_world_model,
    vector_spaces,
)
from harness import ALL_PATHS as PUBLIC_PATHS
from harness import BATCHED, UNBATCHED, Driver, base_path, is_batched, on_paths
from reliability_models import (
    SOURCES,
    Scripted,
    action_for,
    first_reset,
    first_step,
    make,
    source_kwargs,
    with_value,
)

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
S0 = torch.tensor([0.1, 0.2, 0.3])
ACTION = np.zeros(3, dtype=np.float32)
CLASSES = [WorldModelEnv, GymWorldModelEnv]

N = 4
# every path, unbatched and batched ("torchrl-batched": the TorchRL env with batch_size (N,))
ALL_PATHS = ["torchrl", "gym", "torchrl-batched", "vector", "sb3"]


def _env(cls, transition=lambda s, a: s + a, reset=lambda: S0.clone(), **kwargs):
    return cls(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=reset, transition_fn=transition, **kwargs)


def _step(env, action=ACTION):
    """One step on either path after a reset."""
    if isinstance(env, GymWorldModelEnv):
        env.reset()
        return env.step(action)
    td = env.reset()
    td["action"] = torch.as_tensor(action)
    return env.step(td)


# -------------------------------------------------------------------------- step before reset
def test_gym_step_before_reset_says_to_call_reset():
    env = _env(GymWorldModelEnv)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        env.step(ACTION)


def test_gym_step_after_close_says_to_call_reset():
    env = _env(GymWorldModelEnv)
    env.reset()
    env.close()
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        env.step(ACTION)


def test_gym_vector_step_before_reset_says_to_call_reset():
    obs_space, act_space = vector_spaces()
    venv = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                         transition_fn=transition_world_model, batch_size=(2,)).to_gymnasium()
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        venv.step(np.zeros((2, 2), dtype=np.float32))


# ------------------------------------------------------------------------ missing observation
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("reset", [lambda: None, lambda: {"state": S0.clone()}, lambda: (S0.clone(), None)],
                         ids=["None", "mapping without observation", "(state, None)"])
def test_reset_without_observation(cls, reset):
    with pytest.raises(ValueError, match=re.escape("reset produced no observation: return one from reset_fn")):
        env = _env(cls, reset=reset)  # the TorchRL env probes reset at construction
        env.reset()


@on_paths(UNBATCHED)
@pytest.mark.parametrize("source", SOURCES)
def test_step_without_observation_names_the_hook(path, source):
    def drop_observation(out):
        return {"state": out["state"], "reward": out["reward"]}

    with pytest.raises(ValueError, match=re.escape(f"{source} returned no observation")):
        first_step(path, drop_observation, **source_kwargs(source))


# ------------------------------------------------------------------------------ wrong shapes
@on_paths(UNBATCHED)
@pytest.mark.parametrize("phase,shape", [("reset", (4,)), ("step", (4,)), ("step", (2, 3))],
                         ids=["reset-(4,)", "step-(4,)", "step-(2,3)"])
def test_observation_of_wrong_shape_names_key_expected_and_got(path, phase, shape):
    with pytest.raises(ValueError, match=re.escape(f"observation: expected shape (3,), got {shape}")):
        if phase == "reset":
            first_reset(path, torch.zeros(shape))
        else:
            first_step(path, with_value("observation", torch.zeros(shape)))


# the exports are built on a TorchRL env, which probes the reset when built: a bad batched reset
# fails there, whichever export is asked for, so the reset case runs once
@pytest.mark.parametrize("path,phase", [("torchrl", "reset"), ("torchrl", "step"), ("vector", "step"), ("sb3", "step")])
def test_batched_observation_without_batch_dim_names_expected_and_got(path, phase):
    with pytest.raises(ValueError, match=re.escape(f"observation: expected shape ({N}, 3), got (3,)")):
        if phase == "reset":
            first_reset(path, torch.zeros(3), n=N)
        else:
            first_step(path, with_value("observation", torch.zeros(3)), n=N)


DICT = gym.spaces.Dict(
    {
        "position": gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32),
        "phase": gym.spaces.Box(0.0, 10.0, shape=(1,), dtype=np.float32),
    }
)


def _dict_model(observe):
    """A Scripted model whose observations are ``observe(state)`` (a dict)."""

    class Model(Scripted):
        def reset(self, seed=None, options=None):
            out = super().reset(seed, options)
            s = out["state"]
            return s, {"position": s, "phase": s[..., :1]}

        def step(self, state, action):
            out = super().step(state, action)
            return out["state"], observe(out["state"]), out["reward"], out["terminated"], False, {}

    return Model()


@on_paths(ALL_PATHS)
def test_dict_observation_entry_of_wrong_shape_names_the_entry(path):
    observe = lambda s: {"position": s, "phase": s}  # noqa: E731  (phase should be (..., 1))
    n = N if is_batched(path) else None
    expected, got = ((N, 1), (N, 3)) if n else ((1,), (3,))
    with pytest.raises(ValueError, match=re.escape(f"observation['phase']: expected shape {expected}, got {got}")):
        first_step(base_path(path), None, n=n, obs_space=DICT, model=_dict_model(observe))


@on_paths(UNBATCHED)
@pytest.mark.parametrize("phase", ["reset", "step"])
def test_dict_observation_missing_key(path, phase):
    message = "observation: Dict observation keys differ: missing ['phase'], unexpected []"
    model = _dict_model(lambda s: {"position": s})
    with pytest.raises(ValueError, match=re.escape(message)):
        if phase == "reset":
            first_reset(path, {"state": torch.zeros(3), "observation": {"position": torch.zeros(3)}},
                        obs_space=DICT, model=model)
        else:
            first_step(path, None, obs_space=DICT, model=model)


@on_paths(UNBATCHED)
def test_dict_observation_extra_key(path):
    observe = lambda s: {"position": s, "phase": s[..., :1], "velocity": s}  # noqa: E731
    with pytest.raises(ValueError, match=re.escape("missing [], unexpected ['velocity']")):
        first_step(path, None, obs_space=DICT, model=_dict_model(observe))


@on_paths(UNBATCHED)
def test_non_dict_observation_for_dict_space(path):
    message = "observation: the observation space is a Dict with keys ['phase', 'position'], got Tensor"
    with pytest.raises(TypeError, match=re.escape(message)):
        first_step(path, None, obs_space=DICT, model=_dict_model(lambda s: s))


# ---------------------------------------------------------------------------- rewards and flags
@on_paths(UNBATCHED)
def test_unbatched_reward_must_be_a_scalar(path):
    with pytest.raises(ValueError, match=re.escape("reward: expected a scalar, got shape (3,)")):
        first_step(path, with_value("reward", torch.ones(3)))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("reward", [1.5, np.float32(1.5), torch.tensor(1.5), torch.tensor([1.5]), np.array([1.5])],
                         ids=["float", "np.float32", "0-d tensor", "(1,) tensor", "(1,) array"])
def test_scalar_reward_forms_in_unbatched_env(cls, reward):
    out = _step(_env(cls, transition=lambda s, a: (s, s + a, reward)))
    value = out[1] if isinstance(out, tuple) else float(out["next", "reward"])
    assert value == 1.5


def test_batched_reward_shapes_that_are_accepted():
    obs_space, act_space = vector_spaces()

    def make_rollout(reward):
        def transition(model, state, action):
            nxt = model.predict_next_state(state, action)
            return nxt, nxt, reward(nxt)
        env = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                            transition_fn=transition, batch_size=(4,))
        return env.rollout(2)

    rollout = make_rollout(lambda n: n[:, 0])
    torch.testing.assert_close(rollout.get(("next", "reward")), rollout.get(("next", "observation"))[..., :1])
    rollout = make_rollout(lambda n: n[:, :1])
    torch.testing.assert_close(rollout.get(("next", "reward")), rollout.get(("next", "observation"))[..., :1])
    # a constant is given per env
    torch.testing.assert_close(make_rollout(lambda n: torch.full((4,), 0.5)).get(("next", "reward")),
                               torch.full((4, 2, 1), 0.5))
    # a Python constant is refused: one value for the whole batch (a 0-d tensor too: see below)
    message = (
        "transition_fn (read as (state, obs, reward)): reward: a batched env needs one value per env, "
        "shape (4,) or (4, 1); got a scalar (float)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        make_rollout(lambda n: 0.5)


@on_paths(BATCHED)
@pytest.mark.parametrize("reward,got", [
    # a reduction over the batch: a bug, refused
    (lambda out: out["reward"].sum(),
     f"a batched env needs one value per env, shape ({N},) or ({N}, 1); got a scalar (Tensor)"),
    (lambda out: out["state"], f"expected shape ({N},) or ({N}, 1), got shape ({N}, 3)"),
    (lambda out: torch.zeros(N - 1), f"expected shape ({N},) or ({N}, 1), got shape ({N - 1},)"),
], ids=["0-d tensor", "one per feature", "too short"])
def test_batched_reward_of_wrong_shape_names_expected_and_got(path, reward, got):
    # the error names the hook and how its output was read
    expected = f"model.step (read as a mapping): reward: {got}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        first_step(path, with_value("reward", reward), n=N)


@on_paths(ALL_PATHS)
@pytest.mark.parametrize("flag", ["terminated", "truncated"])
def test_float_flags_are_refused(path, flag):
    # unbatched: a 0-d float32 tensor; batched: a float64 numpy array (one per env)
    n = N if is_batched(path) else None
    value, dtype = (np.full(N, 0.7), torch.float64) if n else (torch.tensor(0.7), torch.float32)
    with pytest.raises(TypeError, match=re.escape(f"{flag}: expected a bool flag, got floating dtype {dtype}")):
        first_step(base_path(path), with_value(flag, value), n=n)


@on_paths(ALL_PATHS)
def test_integer_flags_other_than_0_and_1_are_refused(path):
    n = N if is_batched(path) else None
    value = torch.tensor([0, 1, 2, 1][:N]) if n else torch.tensor(2)
    with pytest.raises(ValueError, match=re.escape("terminated: expected a bool flag (or integers 0/1), got torch.int64 values [2]")):
        first_step(base_path(path), with_value("terminated", value), n=n)


@on_paths(ALL_PATHS)
def test_integer_0_1_flags_are_read_as_bools(path):
    n = N if is_batched(path) else None
    value = np.array([0, 1, 0, 1][:N]) if n else 1
    terminated = first_step(base_path(path), with_value("terminated", value), n=n)[2]
    assert np.atleast_1d(terminated).tolist() == ([False, True, False, True][:N] if n else [True])


@on_paths(BATCHED)
def test_batched_flag_of_wrong_shape(path):
    with pytest.raises(ValueError, match=re.escape(f"truncated: expected shape ({N},) or ({N}, 1), got shape (2,)")):
        first_step(path, with_value("truncated", torch.zeros(2, dtype=torch.bool)), n=N)


# ------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64, np.float64],
                         ids=["torch.float64", "torch.float16", "torch.bfloat16", "torch.int64", "numpy.float64"])
def test_observation_of_another_numeric_dtype_is_cast_to_the_space_dtype(cls, dtype):
    if isinstance(dtype, torch.dtype):
        zeros, ones = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    else:
        zeros, ones = np.zeros(3, dtype=dtype), np.ones(3, dtype=dtype)
    env = _env(cls, transition=lambda s, a: ones, reset=lambda: zeros)
    out = _step(env)
    if cls is GymWorldModelEnv:
        assert out[0].dtype == np.float32 and env.observation_space.contains(out[0])
        np.testing.assert_array_equal(out[0], np.ones(3, dtype=np.float32))
    else:
        assert out["next", "observation"].dtype == torch.float32
        assert out["observation"].dtype == torch.float32
        torch.testing.assert_close(out["next", "observation"], torch.ones(3))
        torch.testing.assert_close(out["observation"], torch.zeros(3))


UINT8 = gym.spaces.Box(0, 255, shape=(3,), dtype=np.uint8)


def _uint8_model(bad):
    class Model(Scripted):
        def reset(self, seed=None, options=None):
            out = super().reset(seed, options)
            out["observation"] = (out["observation"] * 255).to(torch.uint8)
            return out

    return Model(bad=bad)


@on_paths(UNBATCHED)
@pytest.mark.parametrize("phase", ["reset", "step"])
def test_float_observation_for_uint8_space_is_refused(path, phase):
    message = "observation: expected dtype torch.uint8, got floating dtype torch.float32"
    with pytest.raises(TypeError, match=re.escape(message)):
        if phase == "reset":
            first_reset(path, torch.zeros(3), obs_space=UINT8)
        else:
            first_step(path, None, obs_space=UINT8, model=_uint8_model(with_value("observation", lambda o: o["state"])))


@pytest.mark.parametrize("cls", CLASSES)
def test_integer_observation_that_overflows_the_space_dtype_is_refused(cls):
    """int64 pixels of 300 for a uint8 image space would wrap to 44: refuse, naming the key."""
    space = gym.spaces.Box(0, 255, shape=(2,), dtype=np.uint8)

    def build(values):
        return cls(object(), space, gym.spaces.Discrete(2), reset_fn=lambda: torch.tensor(values),
                   transition_fn=lambda state, action: state)

    with pytest.raises(ValueError, match=r"observation: values in \[1, 300\] \(torch.int64\) do not fit the space's dtype torch.uint8"):
        build([300, 1]).reset()  # the TorchRL env already raises when built (it probes reset)
    out = build([255, 0]).reset()
    obs = out[0] if cls is GymWorldModelEnv else out["observation"]
    assert obs.tolist() == [255, 0] and obs.dtype in (np.uint8, torch.uint8)


@on_paths(UNBATCHED)
@pytest.mark.parametrize("phase", ["reset", "step"])
def test_non_numeric_observation_is_refused(path, phase):
    with pytest.raises(TypeError, match=re.escape("observation: expected numbers, got ")):
        if phase == "reset":
            first_reset(path, ["a", "b", "c"])
        else:
            first_step(path, with_value("observation", "three floats"))


# ----------------------------------------------------------------------- record structure
@on_paths(UNBATCHED)
def test_unknown_record_key_is_named(path):
    with pytest.raises(ValueError, match=re.escape("unknown key(s) ['rewrad']")):
        first_step(path, with_value("rewrad", 1.0))


@on_paths(UNBATCHED)
def test_tuple_of_unsupported_length_is_named(path):
    with pytest.raises(ValueError, match=re.escape("model.step returned a tuple of length 7")):
        first_step(path, lambda out: (1, 2, 3, 4, 5, 6, 7))


@on_paths(UNBATCHED)
def test_info_that_is_not_a_dict_is_named(path):
    with pytest.raises(TypeError, match=re.escape("model.step returned info of type list; expected a dict")):
        first_step(path, lambda out: (out["observation"], out["reward"], False, False, ["not", "a", "dict"]))


@pytest.mark.parametrize("n", [None, N])
def test_torchrl_refuses_a_state_that_changes_structure(n):
    def transition(model, state, action):
        return {"state": {"h": state, "c": state}, "observation": state}  # reset gave a tensor state

    with pytest.raises(TypeError, match=re.escape("model state: the first reset gave a tensor state, this call gave a dict (dict)")):
        first_step("torchrl", None, n=n, transition_fn=transition)


# ------------------------------------------------------------------- no autograd on Gym path
def test_gym_path_builds_no_autograd_graph_with_an_nn_module():
    obs_space, act_space = vector_spaces()
    model = VectorModel()
    assert all(p.requires_grad for p in model.parameters())
    env = GymWorldModelEnv(model, obs_space, act_space, reset_fn=reset_world_model,
                           transition_fn=transition_world_model, max_episode_steps=5)
    assert torch.is_grad_enabled()
    _, info = env.reset(seed=0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(act_space.sample())
    assert torch.is_grad_enabled()  # the env restored the caller's grad mode
    # the state the model produced inside the env tracks no graph
    assert isinstance(env.state, torch.Tensor) and not env.state.requires_grad and env.state.grad_fn is None
    _assert_no_grad_tensors(info)
    assert isinstance(info["model_state"], np.ndarray)
    assert type(reward) is float and isinstance(obs, np.ndarray)


def test_info_model_state_dict_and_user_info_hold_no_grad_tensors():
    """A dict state and user info with tensors (a grad-tracking Parameter among them): everything
    in info is handed out, and detached."""
    model = VectorModel()

    def reset(model, seed=None, options=None):
        h = model.sample_initial_state(seed=seed)
        return {"state": {"h": h, "aux": model.reward_head.weight}, "observation": h,
                "info": {"w": model.dynamics.weight}}

    def transition(model, state, action):
        h = model.predict_next_state(state["h"], action)
        return {"state": {"h": h, "aux": state["aux"]}, "observation": h,
                "info": {"logits": model.reward_head(h), "w": [model.dynamics.weight]}}

    obs_space, act_space = vector_spaces()
    env = GymWorldModelEnv(model, obs_space, act_space, reset_fn=reset, transition_fn=transition)
    _, info = env.reset(seed=0)
    # the walk below proves nothing about keys that were dropped: they must all be there (the
    # reset info is the hook's info exactly, as in TorchWM: no model_state added)
    assert set(info) == {"w"}
    np.testing.assert_array_equal(np.asarray(info["w"]), model.dynamics.weight.detach().numpy())
    _assert_no_grad_tensors(info)
    _, _, _, _, info = env.step(act_space.sample())
    assert set(info) == {"logits", "w", "model_state", "elapsed_steps"}
    assert len(info["w"]) == 1 and np.asarray(info["logits"]).shape == (1,)
    _assert_no_grad_tensors(info)
    assert set(info["model_state"]) == {"h", "aux"}
    assert not env.state["h"].requires_grad


def test_gym_vector_path_builds_no_graph():
    obs_space, act_space = vector_spaces()
    venv = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                         transition_fn=transition_world_model, batch_size=(3,)).to_gymnasium()
    _, info = venv.reset(seed=0)
    _assert_no_grad_tensors(info)
    obs, reward, _, _, infos = venv.step(venv.action_space.sample())
    assert torch.is_grad_enabled()  # the export restored the caller's grad mode
    assert isinstance(venv.state, torch.Tensor) and not venv.state.requires_grad and venv.state.grad_fn is None
    assert isinstance(obs, np.ndarray) and isinstance(reward, np.ndarray)
    _assert_no_grad_tensors(infos)


def test_gym_path_returns_python_scalars_and_numpy_arrays():
    env = make("gym", Scripted())
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action_for())
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == (3,)
    assert type(info["elapsed_steps"]) is int


def test_vector_path_returns_numpy_batches():
    envs = make("vector", Scripted(), n=N)
    envs.reset(seed=0)
    obs, reward, terminated, truncated, _ = envs.step(action_for(N))
    assert obs.shape == (N, 3) and obs.dtype == np.float32
    assert reward.shape == (N,) and terminated.dtype == bool and truncated.dtype == bool


def _assert_no_grad_tensors(value, where="info"):
    if isinstance(value, torch.Tensor):
        assert not value.requires_grad, where
    elif isinstance(value, TensorDictBase):
        _assert_no_grad_tensors(value.to_dict(), where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_no_grad_tensors(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_no_grad_tensors(v, f"{where}[{i}]")


# ------------------------------------------------------------------------- construction errors
def test_spaces_are_required():
    with pytest.raises(TypeError, match="WorldModelEnv needs observation_space and action_space"):
        WorldModelEnv(VectorModel())
    with pytest.raises(TypeError, match="observation_space: expected a gymnasium space or a TorchRL spec, got tuple"):
        GymWorldModelEnv(VectorModel(), (6,), ACT_SPACE, reset_fn=reset_world_model)


def test_model_without_reset_is_refused():
    """The TorchRL env builds its specs from a first reset, so it refuses at construction."""
    message = (
        "WorldModelEnv builds its TensorDict specs from one reset at construction: "
        "Linear has no reset: pass reset_fn=(model, seed, options), initial_observation=..., start_states=..."
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        WorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, transition_fn=lambda s, a: s)


def test_gym_env_without_reset_constructs_and_its_reset_says_what_to_pass():
    """As TorchWM, the Gymnasium env constructs without a reset source; ``reset`` raises the
    TypeError naming what to pass, and ``step`` before a reset raises RuntimeError."""
    env = GymWorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, transition_fn=lambda s, a: s)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        env.step(ACTION)
    message = "Linear has no reset: pass reset_fn=(model, seed, options), initial_observation=..., start_states=..."
    with pytest.raises(TypeError, match=re.escape(message)):
        env.reset(seed=0)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        env.step(ACTION)  # the failed reset started no episode


def _bank_step(state, action):
    return state + 0.1 * action


def test_no_reset_source_is_refused_naming_the_options():
    """A start-state bank is a reset source on its own (``test_batched.py``); without any reset
    source the TorchRL env is refused at construction and the Gymnasium env's reset is."""
    # the TorchRL env builds its specs from a first reset: refused at construction
    with pytest.raises(TypeError, match="from one reset at construction: object has no reset: "
                                        "pass reset_fn.*initial_observation.*start_states"):
        WorldModelEnv(object(), OBS_SPACE, ACT_SPACE, transition_fn=_bank_step)
    # the Gymnasium env constructs (as TorchWM's); its reset names the options
    gym_env = GymWorldModelEnv(object(), OBS_SPACE, ACT_SPACE, transition_fn=_bank_step)
    with pytest.raises(TypeError, match="object has no reset: pass reset_fn.*initial_observation.*start_states"):
        gym_env.reset(seed=0)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        gym_env.step(np.zeros(3, np.float32))


@pytest.mark.parametrize("cls", CLASSES)
def test_non_callable_hook_is_refused(cls):
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        _env(cls, reward_fn=1.0)


@pytest.mark.parametrize("state", [torch.zeros(3), {"h": torch.zeros(2, 3), "c": torch.zeros(3)}],
                         ids=["tensor", "dict"])
def test_batched_state_without_batch_dim_names_the_state_key(state):
    def reset(seed=None, options=None):
        return state, torch.zeros(2, 3)

    key = "model_state" if isinstance(state, torch.Tensor) else "model_state['c']"
    with pytest.raises(ValueError, match=re.escape(f"{key}: a batched env needs a model state with leading dims (2,), got shape (3,)")):
        WorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=reset,
                      transition_fn=lambda s, a: {"state": s, "observation": s}, batch_size=(2,))


# ------------------------------------------------ values read unambiguously, or refused by name
_U8 = gym.spaces.Box(0, 255, (3,), np.uint8)
_F32 = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)


@pytest.mark.parametrize("value, space, expected", [
    (np.array([1, 2, 3], dtype=np.uint16), _U8, [1, 2, 3]),
    (np.array([1, 2, 3], dtype=np.uint64), _U8, [1, 2, 3]),
    (np.arange(3.0, dtype=np.float32)[::-1], _F32, [2.0, 1.0, 0.0]),  # negative strides
    (np.arange(3.0).astype(">f4"), _F32, [0.0, 1.0, 2.0]),  # big-endian
], ids=["uint16 image", "uint64 image", "negative strides", "big-endian"])
def test_values_that_read_one_way_are_converted(value, space, expected):
    from torchwm_rl.validation import to_observation

    out = to_observation(value, space, (), torch.device("cpu"))
    assert out.dtype == numpy_to_torch_dtype(space.dtype)
    assert out.tolist() == expected


@pytest.mark.parametrize("value, space, error, message", [
    (np.array([1, 2, 300], dtype=np.uint32), _U8, ValueError,
     "observation: values in [1, 300] (torch.uint32) do not fit the space's dtype torch.uint8 [0, 255]"),
    (torch.tensor([1 + 1j, 2, 3]), _F32, TypeError, "observation: expected real numbers, got a complex tensor"),
    (np.array([1e300, 0.0, 0.0]), _F32, ValueError,
     "observation: finite values up to 1e+300 (torch.float64) overflow the space's dtype torch.float32"),
], ids=["uint32 out of range", "complex", "finite float64 overflowing float32"])
def test_values_that_would_be_mangled_are_refused_by_name(value, space, error, message):
    from torchwm_rl.validation import to_observation

    with pytest.raises(error, match=re.escape(message)):
        to_observation(value, space, (), torch.device("cpu"))


@on_paths(PUBLIC_PATHS)  # explicit, not the fixture: keeps the ids [mode-path]
@pytest.mark.parametrize("mode", [None, "raise", "clip"])
def test_integer_actions_are_checked_before_any_cast_the_same_on_every_path(path, mode):
    """A Discrete action of 1.7 never reaches the model as 1: refused by default and with
    "raise" (named), rounded then clipped with "clip" (2.5 -> 2, 3.4 -> 2), on every path."""
    box = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    seen = []

    def reset(model, batch_size=()):
        return torch.zeros(*batch_size, 1)

    def transition(model, state, action):
        seen.append(torch.as_tensor(action).clone())
        return {"state": state, "observation": state}

    n = None if path in ("torchrl", "gym") else 4
    kwargs = dict(reset_fn=reset, transition_fn=transition, check_actions=mode)
    actions = np.array([1.7]) if n is None else np.array([0.4, 1.6, 2.5, 3.4])
    driver = Driver(path, make(path, object(), box, gym.spaces.Discrete(3), n=n, **kwargs),
                    action=actions[0] if n is None else actions)
    driver.reset()
    step = driver.step
    if mode == "clip":
        step()
        assert seen[-1].reshape(-1).tolist() == ([2] if n is None else [0, 2, 2, 2])
    else:
        message = "non-integral values" if mode is None else re.escape("outside action_space Discrete(3)")
        with pytest.raises(ValueError, match=message):
            step()
        assert not seen


def test_check_observations_refuses_values_outside_the_space_and_is_off_by_default(path):
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(model, batch_size=()):
        return torch.zeros(*batch_size, 2)

    def transition(model, state, action):
        nxt = state + 0.75
        return {"state": nxt, "observation": nxt}

    def run(check):
        kwargs = dict(reset_fn=reset, transition_fn=transition, check_observations=check)
        n = None if path in ("torchrl", "gym") else 3
        driver = Driver(path, make(path, object(), space, space, n=n, **kwargs),
                        action=np.zeros((2,) if n is None else (n, 2), np.float32))
        driver.reset()
        return driver.step

    step = run(False)
    step(), step()  # 0.75, then 1.5: outside the Box, accepted without the check (the default)
    step = run(True)
    step()
    with pytest.raises(ValueError, match=re.escape("transition_fn (read as a mapping): observation: outside observation_space Box(-1.0, 1.0, (2,), float32)")):
        step()
