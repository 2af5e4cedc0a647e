"""Clear errors for bad use and bad model output (each names the key, expected and got), and
the inference-hygiene guarantees of the Gymnasium path (no autograd graph, nothing
grad-tracking in ``info``)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

from models import (
    DictModel,
    VectorModel,
    dict_reset,
    dict_spaces,
    dict_transition,
    reset_world_model,
    transition_world_model,
    vector_spaces,
)

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
S0 = torch.tensor([0.1, 0.2, 0.3])
ACTION = np.zeros(3, dtype=np.float32)
CLASSES = [WorldModelEnv, GymWorldModelEnv]


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
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(ACTION)


def test_gym_step_after_close_says_to_call_reset():
    env = _env(GymWorldModelEnv)
    env.reset()
    env.close()
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(ACTION)


def test_gym_vector_step_before_reset_says_to_call_reset():
    obs_space, act_space = vector_spaces()
    venv = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                         transition_fn=transition_world_model, batch_size=(2,)).to_gymnasium()
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        venv.step(np.zeros((2, 2), dtype=np.float32))


# ------------------------------------------------------------------------ missing observation
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("reset", [lambda: None, lambda: {"state": S0.clone()}, lambda: (S0.clone(), None)],
                         ids=["None", "mapping without observation", "(state, None)"])
def test_reset_without_observation(cls, reset):
    with pytest.raises(ValueError, match="no observation"):
        env = _env(cls, reset=reset)  # the TorchRL env probes reset at construction
        env.reset()


@pytest.mark.parametrize("cls", CLASSES)
def test_transition_without_observation(cls):
    env = _env(cls, transition=lambda s, a: {"state": s, "reward": 1.0})
    with pytest.raises(ValueError, match="transition_fn returned no observation"):
        _step(env)


# ------------------------------------------------------------------------------ wrong shapes
@pytest.mark.parametrize("cls", CLASSES)
def test_reset_observation_of_wrong_shape_names_key_expected_and_got(cls):
    with pytest.raises(ValueError, match=re.escape("observation: expected shape (3,), got (4,)")):
        _env(cls, reset=lambda: torch.zeros(4)).reset()


@pytest.mark.parametrize("cls", CLASSES)
def test_step_observation_of_wrong_shape_names_key_expected_and_got(cls):
    env = _env(cls, transition=lambda s, a: torch.zeros(2, 3))
    with pytest.raises(ValueError, match=re.escape("observation: expected shape (3,), got (2, 3)")):
        _step(env)


@pytest.mark.parametrize("cls", CLASSES)
def test_dict_observation_of_wrong_shape_names_the_dict_key(cls):
    obs_space, act_space = dict_spaces()

    def transition(model, state, action):
        out = list(dict_transition(model, state, action))
        out[1] = {**out[1], "step_phase": torch.zeros(2)}
        return tuple(out)

    env = cls(DictModel(), obs_space, act_space, reset_fn=dict_reset, transition_fn=transition)
    with pytest.raises(ValueError, match=re.escape("observation['step_phase']: expected shape (1,), got (2,)")):
        _step(env, np.zeros(2, dtype=np.float32))


@pytest.mark.parametrize("cls", CLASSES)
def test_dict_observation_with_missing_key_names_it(cls):
    obs_space, act_space = dict_spaces()
    with pytest.raises(ValueError, match=r"missing \['step_phase'\]"):
        env = cls(DictModel(), obs_space, act_space, transition_fn=dict_transition,
                  reset_fn=lambda model: {"state": S0, "observation": {"position": torch.zeros(6)}})
        env.reset()


def test_batched_observation_without_batch_dim_names_expected_and_got():
    obs_space, act_space = vector_spaces()
    with pytest.raises(ValueError, match=re.escape("observation: expected shape (4, 6), got (6,)")):
        WorldModelEnv(VectorModel(), obs_space, act_space, batch_size=(4,),
                      reset_fn=lambda model: model.sample_initial_state(), transition_fn=transition_world_model)


# ------------------------------------------------------------------------------------ rewards
@pytest.mark.parametrize("cls", CLASSES)
def test_non_scalar_reward_in_unbatched_env(cls):
    env = _env(cls, transition=lambda s, a: (s, s + a, torch.ones(3)))
    with pytest.raises(ValueError, match=re.escape("reward: expected a scalar, got shape (3,)")):
        _step(env)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("reward", [1.5, np.float32(1.5), torch.tensor(1.5), torch.tensor([1.5]), np.array([1.5])],
                         ids=["float", "np.float32", "0-d tensor", "(1,) tensor", "(1,) array"])
def test_scalar_reward_forms_in_unbatched_env(cls, reward):
    out = _step(_env(cls, transition=lambda s, a: (s, s + a, reward)))
    value = out[1] if isinstance(out, tuple) else float(out["next", "reward"])
    assert value == 1.5


def test_batched_reward_shapes():
    obs_space, act_space = vector_spaces()

    def make(reward):
        def transition(model, state, action):
            nxt = model.predict_next_state(state, action)
            return nxt, nxt, reward(nxt)
        env = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                            transition_fn=transition, batch_size=(4,))
        return env.rollout(2)

    assert make(lambda n: n[:, 0]).get(("next", "reward")).shape == (4, 2, 1)
    assert make(lambda n: n[:, :1]).get(("next", "reward")).shape == (4, 2, 1)
    # a Python constant holds for every env ...
    torch.testing.assert_close(make(lambda n: 0.5).get(("next", "reward")), torch.full((4, 2, 1), 0.5))
    # ... but a 0-d tensor in a batched env is a reduction bug: refused
    with pytest.raises(ValueError, match=re.escape("reward: expected shape (4,) or (4, 1), got shape ()")):
        make(lambda n: n.sum())
    with pytest.raises(ValueError, match=re.escape("reward: expected shape (4,) or (4, 1), got shape (4, 6)")):
        make(lambda n: n)


@pytest.mark.parametrize("cls", CLASSES)
def test_float_flag_is_refused(cls):
    env = _env(cls, transition=lambda s, a: {"observation": s, "terminated": torch.tensor(0.7)})
    with pytest.raises(TypeError, match="terminated: expected a bool flag"):
        _step(env)


# -------------------------------------------------------------------------------- NaN / inf
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_observation_raises_naming_it(cls, bad):
    env = _env(cls, transition=lambda s, a: torch.tensor([0.0, bad, 0.0]))
    with pytest.raises(ValueError, match=re.escape("NaN/inf in ['observation']")):
        _step(env)


@pytest.mark.parametrize("cls", CLASSES)
def test_nonfinite_reward_raises_naming_it(cls):
    env = _env(cls, transition=lambda s, a: (s, s, float("nan")))
    with pytest.raises(ValueError, match=re.escape("NaN/inf in ['reward']")):
        _step(env)


@pytest.mark.parametrize("cls", CLASSES)
def test_nonfinite_reset_raises(cls):
    with pytest.raises(ValueError, match="NaN/inf"):
        _env(cls, reset=lambda: torch.tensor([0.0, float("nan"), 0.0])).reset()


@pytest.mark.parametrize("cls", CLASSES)
def test_nonfinite_dict_observation_names_the_key(cls):
    obs_space, act_space = dict_spaces()

    def transition(model, state, action):
        out = list(dict_transition(model, state, action))
        out[1] = {**out[1], "position": torch.full((6,), float("nan"))}
        return tuple(out)

    env = cls(DictModel(), obs_space, act_space, reset_fn=dict_reset, transition_fn=transition)
    with pytest.raises(ValueError, match=re.escape("observation['position']")):
        _step(env, np.zeros(2, dtype=np.float32))


def test_nonfinite_in_batched_env_names_the_env_index():
    obs_space, act_space = vector_spaces()

    def transition(model, state, action):
        nxt = model.predict_next_state(state, action).clone()
        nxt[2, 1] = float("nan")
        return nxt, nxt

    env = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                        transition_fn=transition, batch_size=(4,))
    with pytest.raises(ValueError, match=re.escape("at env index [2]")):
        env.rollout(1)


# ------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_observation_of_another_numeric_dtype_is_cast_to_the_space_dtype(cls, dtype):
    env = _env(cls, transition=lambda s, a: torch.ones(3, dtype=dtype), reset=lambda: torch.zeros(3, dtype=dtype))
    out = _step(env)
    if cls is GymWorldModelEnv:
        assert out[0].dtype == np.float32 and env.observation_space.contains(out[0])
    else:
        assert out["next", "observation"].dtype == torch.float32
        assert out["observation"].dtype == torch.float32


@pytest.mark.parametrize("cls", CLASSES)
def test_numpy_float64_observation_is_cast(cls):
    env = _env(cls, transition=lambda s, a: np.ones(3), reset=lambda: np.zeros(3))
    out = _step(env)
    obs = out[0] if cls is GymWorldModelEnv else out["next", "observation"]
    assert obs.dtype in (np.float32, torch.float32)


@pytest.mark.parametrize("cls", CLASSES)
def test_float_observation_for_uint8_space_is_refused(cls):
    space = gym.spaces.Box(0, 255, shape=(1, 2, 2), dtype=np.uint8)
    with pytest.raises(TypeError, match="expected dtype torch.uint8, got floating dtype torch.float32"):
        env = cls(nn.Linear(1, 1), space, ACT_SPACE, reset_fn=lambda: torch.rand(1, 2, 2),
                  transition_fn=lambda s, a: s)
        env.reset()


@pytest.mark.parametrize("cls", CLASSES)
def test_non_numeric_observation_is_refused(cls):
    with pytest.raises(TypeError, match="observation: expected numbers"):
        _env(cls, reset=lambda: ["a", "b", "c"]).reset()


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
    """A dict state and user info with tensors: everything in info is detached."""
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
    _assert_no_grad_tensors(info)
    _, _, _, _, info = env.step(act_space.sample())
    _assert_no_grad_tensors(info)
    assert set(info["model_state"]) == {"h", "aux"}
    assert not env.state["h"].requires_grad


def test_gym_vector_path_builds_no_graph():
    obs_space, act_space = vector_spaces()
    venv = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                         transition_fn=transition_world_model, batch_size=(3,)).to_gymnasium()
    venv.reset(seed=0)
    venv.step(venv.action_space.sample())
    assert not venv.state.requires_grad


def _assert_no_grad_tensors(value, where="info"):
    if isinstance(value, torch.Tensor):
        assert not value.requires_grad, where
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_no_grad_tensors(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_no_grad_tensors(v, f"{where}[{i}]")


# ------------------------------------------------------------------------- construction errors
def test_spaces_are_required():
    with pytest.raises(TypeError, match="observation_space and action_space"):
        WorldModelEnv(VectorModel())
    with pytest.raises(TypeError, match="observation_space"):
        GymWorldModelEnv(VectorModel(), (6,), ACT_SPACE, reset_fn=reset_world_model)


@pytest.mark.parametrize("cls", CLASSES)
def test_model_without_reset_is_refused(cls):
    with pytest.raises(TypeError, match="reset_fn"):
        cls(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, transition_fn=lambda s, a: s)


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
        WorldModelEnv(nn.Linear(1, 1), OBS_SPACE, ACT_SPACE, reset_fn=reset, transition_fn=lambda s, a: (s, a),
                      batch_size=(2,))


def test_integer_observation_that_overflows_the_space_dtype_is_refused():
    """int64 pixels of 300 for a uint8 image space would wrap to 44: refuse, naming the key."""
    import gymnasium as gym
    import numpy as np
    import pytest
    import torch

    from torchwm_rl import GymWorldModelEnv

    space = gym.spaces.Box(0, 255, shape=(2,), dtype=np.uint8)
    env = GymWorldModelEnv(
        object(), space, gym.spaces.Discrete(2),
        reset_fn=lambda: torch.tensor([300, 1]),
        transition_fn=lambda state, action: state,
    )
    with pytest.raises(ValueError, match=r"observation: values in \[1, 300\].*uint8"):
        env.reset()
    ok = GymWorldModelEnv(
        object(), space, gym.spaces.Discrete(2),
        reset_fn=lambda: torch.tensor([255, 0]), transition_fn=lambda state, action: state,
    )
    assert ok.reset()[0].tolist() == [255, 0]
