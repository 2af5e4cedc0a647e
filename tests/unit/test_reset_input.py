"""Unit tests of ``torchwm_rl.reset_input``: what a reset tensordict carries.

Table-driven for the pure rules (when a tensordict carries model states, with TorchRL's
``DreamerActorLoss`` key conventions; which ``"state"`` may be a model state; the checks on a
given state, with their messages), then on a tiny ``WorldModelEnv`` for what a start implies
(observation, step count, flags) and what a partial reset's kept rows need."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Composite, Unbounded

from torchwm_rl import WorldModelEnv
from torchwm_rl.reset_input import carries_states, check_given_state, could_be_state

N = 3
LATENT = 4
OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

#: a tensor state of 4 per env at the env's batch (N,), and a dict state {"h": 4, "z": 2}
TENSOR_SPEC = Unbounded(shape=(N, LATENT), dtype=torch.float32)
DICT_SPEC = Composite(h=Unbounded(shape=(N, LATENT)), z=Unbounded(shape=(N, 2)), shape=(N,))
ENV_KEYS = {"observation", "model_state", "elapsed_steps"}


def td(batch=(N,), **entries):
    return TensorDict(entries, batch_size=batch)


# ------------------------------------------------------------------------------ carries_states
@pytest.mark.parametrize("make,expected", [
    (lambda: None, False),
    (lambda: td(model_state=torch.zeros(N, LATENT)), True),
    (lambda: td(model_state=torch.zeros(N, LATENT), _reset=torch.ones(N, 1, dtype=torch.bool)), False),
    (lambda: td(elapsed_steps=torch.zeros(N, 1, dtype=torch.int64)), False),
    (lambda: td(), False),
    # another batch than the env's (batch-unlocked): still the model state
    (lambda: td((5, 2), model_state=torch.zeros(5, 2, LATENT)), True),
    # a recurrent policy's "state" of another layout is not a model state: fresh starts
    (lambda: td(state=torch.zeros(N, 7)), False),
], ids=["no tensordict", "state key", "reset mask", "step count only", "empty", "other batch", "primer state"])
def test_carries_states(make, expected):
    assert carries_states(make(), "model_state", "tensor", ENV_KEYS, TENSOR_SPEC, 1) is expected


def test_an_opaque_state_never_travels_in_a_tensordict():
    assert carries_states(td(model_state=torch.zeros(N, LATENT)), "model_state", "opaque", ENV_KEYS,
                          TENSOR_SPEC, 1) is False


@pytest.mark.parametrize("value", [torch.zeros(N, LATENT), torch.zeros(N, 2)], ids=["whole state", "one entry"])
def test_dreamer_losses_state_key_left_unmapped_is_refused(value):
    """DreamerActorLoss reads "state": laid out as the model state (or one of its leaves), a
    start would silently be a fresh draw instead."""
    spec = TENSOR_SPEC if value.shape[-1] == LATENT else DICT_SPEC
    with pytest.raises(KeyError, match=re.escape("build the env with WorldModelEnv(..., state_key='state')")):
        carries_states(td(state=value), "model_state", "tensor", ENV_KEYS, spec, 1)


def test_state_is_the_models_when_state_key_is_state():
    keys = {"observation", "state", "elapsed_steps"}
    assert carries_states(td(state=torch.zeros(N, LATENT)), "state", "tensor", keys, TENSOR_SPEC, 1) is True


def test_an_unmapped_belief_next_to_the_state_is_refused():
    given = td(model_state=torch.zeros(N, LATENT), belief=torch.zeros(N, 3))
    with pytest.raises(KeyError, match=re.escape("actor_loss.set_keys(belief='model_state')")):
        carries_states(given, "model_state", "tensor", ENV_KEYS, TENSOR_SPEC, 1)
    # a "belief" the env steps itself (a Dict observation key) is the env's own
    assert carries_states(given, "model_state", "tensor", ENV_KEYS | {"belief"}, TENSOR_SPEC, 1) is True


# ------------------------------------------------------------------------------ could_be_state
@pytest.mark.parametrize("value,batch,spec,expected", [
    (torch.zeros(N, LATENT), (N,), TENSOR_SPEC, True),
    (torch.zeros(6, LATENT), (6,), TENSOR_SPEC, True),
    (torch.zeros(2, 3, LATENT), (2, 3), TENSOR_SPEC, True),
    (torch.zeros(N, LATENT + 1), (N,), TENSOR_SPEC, False),
    (torch.zeros(N, 2), (N,), DICT_SPEC, True),  # the shape of one entry ("z")
    (torch.zeros(N, 5), (N,), DICT_SPEC, False),
    (TensorDict({"h": torch.zeros(N, LATENT)}, [N]), (N,), DICT_SPEC, True),
    (TensorDict({"other": torch.zeros(N, LATENT)}, [N]), (N,), DICT_SPEC, False),
    (TensorDict({"h": torch.zeros(N, LATENT)}, [N]), (N,), TENSOR_SPEC, False),
    (np.zeros((N, LATENT)), (N,), TENSOR_SPEC, False),
], ids=["same batch", "other batch", "2-dim batch", "other shape", "dict entry", "no entry's shape",
        "shares an entry", "shares none", "tensordict for a tensor state", "not a tensor"])
def test_could_be_state(value, batch, spec, expected):
    assert could_be_state(value, batch, spec, 1) is expected


# --------------------------------------------------------------------------- check_given_state
def test_a_given_state_of_the_right_layout_is_returned_as_it_is():
    state = torch.randn(N, LATENT)
    assert check_given_state(state, TENSOR_SPEC, 1, (N,), "'model_state'") is state
    dict_state = TensorDict({"h": torch.randn(N, LATENT), "z": torch.randn(N, 2)}, [N])
    assert check_given_state(dict_state, DICT_SPEC, 1, (N,), "'model_state'") is dict_state


def test_a_narrower_float_is_widened_keeping_every_value():
    spec = Unbounded(shape=(N, LATENT), dtype=torch.float64)
    state = torch.randn(N, LATENT)
    out = check_given_state(state, spec, 1, (N,), "'model_state'")
    assert out.dtype == torch.float64 and torch.equal(out, state.double()) and state.dtype == torch.float32
    dict_spec = Composite(h=Unbounded(shape=(N, LATENT), dtype=torch.float64), shape=(N,))
    given = TensorDict({"h": state}, [N])
    widened = check_given_state(given, dict_spec, 1, (N,), "'model_state'")
    assert widened is not given and widened["h"].dtype == torch.float64 and given["h"].dtype == torch.float32


@pytest.mark.parametrize("value,spec,error,message", [
    (torch.zeros(N, LATENT + 1), TENSOR_SPEC, ValueError,
     "'model_state': expected shape (3, 4) (the tensordict's batch (3,), then one env's state shape (4,)), "
     "got (3, 5)"),
    (TensorDict({"h": torch.zeros(N, LATENT)}, [N]), DICT_SPEC, KeyError,
     "'model_state': the model state has the entries ['h', 'z'], the tensordict's has ['h'] "
     "(missing ['z'], unexpected [])"),
    (torch.zeros(N, LATENT), DICT_SPEC, TypeError,
     "'model_state': expected the model state's entries ['h', 'z'], got a Tensor"),
    (TensorDict({"h": torch.zeros(N, LATENT), "z": torch.zeros(N, 3)}, [N]), DICT_SPEC, ValueError,
     "'model_state'['z']: expected shape (3, 2)"),
    (torch.zeros(N, LATENT, dtype=torch.int64), TENSOR_SPEC, TypeError,
     "'model_state': expected dtype torch.float32 (the model's state), got torch.int64"),
    (torch.zeros(N, LATENT, dtype=torch.float64), TENSOR_SPEC, TypeError,
     "'model_state': expected dtype torch.float32 (the model's state), got torch.float64"),
    (torch.zeros(N, LATENT, dtype=torch.bool), Unbounded(shape=(N, LATENT), dtype=torch.int64), TypeError,
     "expected dtype torch.int64 (the model's state), got torch.bool"),
], ids=["shape", "missing entry", "tensor for a dict state", "entry shape", "int for float", "narrowing",
        "bool for int"])
def test_a_given_state_of_another_layout_is_refused_naming_the_key(value, spec, error, message):
    with pytest.raises(error, match=re.escape(message)):
        check_given_state(value, spec, 1, (N,), "'model_state'")


# ------------------------------------------------------------------- on a WorldModelEnv: starts
class Latent:
    """A latent state of 4 whose observation is its first 2 entries (so not the state itself);
    ``step``: ``h + [a, a]``, reward ``h[..., 0]``, never terminating."""

    def reset_fn(self, model, seed=None, options=None, batch_size=(), *, generator):
        h = torch.rand(*batch_size, LATENT, generator=generator)
        return {"state": h, "observation": h[..., :2].clone()}

    def transition_fn(self, model, state, action):
        nxt = state + torch.cat([action, action], -1)
        return {"state": nxt, "observation": nxt[..., :2].clone(), "reward": nxt[..., 0],
                "terminated": torch.zeros(nxt.shape[:-1], dtype=torch.bool)}


class Direct:
    """The observation IS the state (the reset hook gives no separate state)."""

    def reset_fn(self, model, seed=None, options=None, batch_size=(), *, generator):
        return torch.rand(*batch_size, 2, generator=generator)

    def transition_fn(self, model, state, action):
        nxt = state + action
        return {"state": nxt, "observation": nxt, "reward": nxt[..., 0],
                "terminated": torch.zeros(nxt.shape[:-1], dtype=torch.bool)}


def make_env(model, **kwargs):
    return WorldModelEnv(model, OBS, ACT, reset_fn=model.reset_fn, transition_fn=model.transition_fn,
                         batch_size=(N,), **kwargs)


def test_a_start_gets_its_observation_step_count_and_flags():
    env = make_env(Direct())
    state = torch.rand(N, 2)
    start = env._complete_start(td(model_state=state))
    assert torch.equal(start["observation"], state) and start["observation"].data_ptr() != state.data_ptr()
    assert torch.equal(start["elapsed_steps"], torch.zeros(N, 1, dtype=torch.int64))
    for key in ("done", "terminated", "truncated"):
        assert start[key].dtype == torch.bool and not start[key].any()
    again = env._complete_start(start)
    assert again is start  # nothing missing: the same object


def test_a_start_from_a_latent_needs_its_observation_or_decode_fn():
    env = make_env(Latent())
    with pytest.raises(KeyError, match=re.escape("pass decode_fn=(model, state) -> observation to WorldModelEnv")):
        env._complete_start(td(model_state=torch.rand(N, LATENT)))
    decoded = make_env(Latent(), decode_fn=lambda model, state: state[..., :2] * 10)
    state = torch.rand(N, LATENT)
    assert torch.equal(decoded._complete_start(td(model_state=state))["observation"], state[..., :2] * 10)


def test_reset_set_state_needs_the_state_key():
    env = make_env(Direct())
    with pytest.raises(KeyError, match=re.escape("reset(set_state=True) needs 'model_state' in the tensordict, "
                                                 "got ['observation']")):
        env.reset(td(observation=torch.zeros(N, 2)), set_state=True)
    state = torch.rand(N, 2)
    out = env.reset(td(model_state=state, done=torch.ones(N, 1, dtype=torch.bool)), set_state=True)
    assert torch.equal(out["model_state"], state) and not out["done"].any()


# --------------------------------------------------------------- on a WorldModelEnv: kept rows
MASK = torch.tensor([[True], [False], [True]])


def test_the_kept_rows_need_their_state():
    env = make_env(Direct())
    with pytest.raises(KeyError, match=re.escape("partial reset: the envs not being reset keep their state, but the "
                                                 "tensordict has no 'model_state'")):
        env.reset(td(observation=torch.zeros(N, 2), _reset=MASK))


def test_the_kept_rows_need_their_step_count_under_a_time_limit():
    env = make_env(Direct(), max_episode_steps=5)
    with pytest.raises(KeyError, match=re.escape("partial reset: the envs not being reset keep their step count")):
        env.reset(td(model_state=torch.zeros(N, 2), _reset=MASK))
    free = make_env(Direct())  # without a limit the kept rows start counting at 0
    out = free.reset(td(model_state=torch.full((N, 2), 0.5), _reset=MASK))
    assert torch.equal(out["model_state"][1], torch.full((2,), 0.5)) and out["elapsed_steps"][1].item() == 0


def test_a_mask_only_reset_keeps_the_other_envs_where_they_stand():
    env = make_env(Direct())
    start = env.reset()
    stepped = env.step(start.set("action", torch.full((N, 2), 0.25)))["next"]
    out = env.reset(td(_reset=MASK))
    assert torch.equal(out["model_state"][1], stepped["model_state"][1])
    assert out["elapsed_steps"][1].item() == 1 and out["elapsed_steps"][0].item() == 0
