"""Unit tests of ``torchwm_rl.env_specs``: the env's keys and their specs, table-driven.

How a model state travels (``state_kind``), the ``batch_size`` and ``state_key`` arguments, the
specs ``make_specs`` builds from a probe state over a tiny ``ModelAdapter`` (with the key
collisions it refuses), and the declared or probed info values (``info_keys``)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded

from torchwm_rl.adapter import ModelAdapter
from torchwm_rl.env_specs import (
    check_state_key, info_entries, make_info_specs, make_specs, parse_batch_size, refuse_reserved, state_kind,
)

N = 3
OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
CPU = torch.device("cpu")


class Opaque:
    pass


@pytest.mark.parametrize("state,kind", [
    (torch.zeros(2), "tensor"),
    (TensorDict({"h": torch.zeros(2)}, []), "tensordict"),
    ({"h": torch.zeros(2), "z": {"c": torch.zeros(1)}}, "dict"),
    ({"h": torch.zeros(2), "step": 1}, "opaque"),
    (Opaque(), "opaque"),
], ids=["tensor", "tensordict", "dict", "dict with an int", "object"])
def test_state_kind(state, kind):
    assert state_kind(state) == kind


@pytest.mark.parametrize("value,expected", [((), ()), ((4,), (4,)), (4, (4,)), ([2], (2,))],
                         ids=["unbatched", "tuple", "int", "list"])
def test_parse_batch_size(value, expected):
    assert tuple(parse_batch_size(value)) == expected


@pytest.mark.parametrize("value,error,message", [
    (True, TypeError, "batch_size: expected () or (N,), got True"),
    ("4", TypeError, "batch_size: expected () or (N,), got '4'"),
    ((2, 3), ValueError, "batch_size must be () or (N,) with N >= 1, got (2, 3)"),
    ((0,), ValueError, "batch_size must be () or (N,) with N >= 1, got (0,)"),
], ids=["bool", "str", "two dims", "zero"])
def test_parse_batch_size_refuses(value, error, message):
    with pytest.raises(error, match=re.escape(message)):
        parse_batch_size(value)


def test_check_state_key():
    reserved = check_state_key("state")
    assert "state" in reserved and "model_state" not in reserved and "action" in reserved
    assert "model_state" in check_state_key("model_state")
    with pytest.raises(TypeError, match=re.escape("state_key: expected a non-empty str (a root tensordict key), got ''")):
        check_state_key("")
    for own in ("action", "elapsed_steps", "nonfinite", "continue_prob", "last_observation"):
        with pytest.raises(ValueError, match=re.escape(f"state_key={own!r} collides with one of the env's own keys")):
            check_state_key(own)


def test_refuse_reserved_names_the_clash():
    refuse_reserved(["x"], "info_keys", taken={"observation"})
    with pytest.raises(ValueError, match=re.escape("info_keys: key(s) ['done', 'observation'] collide with")):
        refuse_reserved(["done", "observation", "x"], "info_keys", taken={"observation"})


# ---------------------------------------------------------------------------------- make_specs
def adapter(observation_space=OBS, batch=(N,), **options):
    return ModelAdapter(object(), observation_space, ACT, batch_size=batch,
                        transition_fn=lambda model, state, action: state, **options)


def specs_of(probe_state, batch=(N,), state_key="model_state", carries_last=False, observation_space=OBS,
             **options):
    return make_specs(adapter(observation_space, batch, **options), probe_state, torch.Size(batch), CPU, state_key,
                      check_state_key(state_key), carries_last)


def test_the_specs_of_a_tensor_state():
    specs = specs_of(torch.zeros(N, 4, dtype=torch.float64))
    assert not specs.dict_observation and specs.state_kind == "tensor" and specs.one_action_shape == (2,)
    assert specs.state["model_state"].shape == (N, 4) and specs.state["model_state"].dtype == torch.float64
    assert specs.state["elapsed_steps"].shape == (N, 1) and specs.state["elapsed_steps"].dtype == torch.int64
    assert set(specs.observation.keys()) == {"observation", "model_state", "elapsed_steps"}
    assert specs.reward.shape == (N, 1) and set(specs.done.keys()) == {"done", "terminated", "truncated"}
    assert isinstance(specs.done["done"], Categorical) and specs.done["done"].dtype == torch.bool


def test_the_specs_of_a_dict_state_and_the_optional_entries():
    state = {"h": torch.zeros(N, 4), "z": torch.zeros(N, 2)}
    specs = specs_of(state, carries_last=True, nan_policy="truncate", continue_fn=lambda model, state: state)
    assert specs.state_kind == "dict" and isinstance(specs.state["model_state"], Composite)
    assert specs.state["model_state"]["z"].shape == (N, 2)
    assert {"nonfinite", "last_observation", "continue_prob"} <= set(specs.observation.keys())
    assert "last_observation" in specs.state.keys() and "uncertainty" not in specs.observation.keys()


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(probe_state=Opaque()), TypeError,
     "a batched env needs a tensor (or dict/TensorDict of tensors) model state with leading dim 3; the reset hook "
     "returned Opaque"),
    (dict(probe_state=torch.zeros(5, 4)), ValueError,
     "model_state: a batched env needs a model state with leading dims (3,), got shape (5, 4) from the reset hook"),
    (dict(probe_state={"h": torch.zeros(N, 4), "z": torch.zeros(2)}), ValueError,
     "model_state['z']: a batched env needs a model state with leading dims (3,)"),
    (dict(probe_state=torch.zeros(N, 2), observation_space=gym.spaces.Dict({"state": OBS}), state_key="state"),
     ValueError, "state_key='state' collides with the observation key(s) ['state']; pick another state_key"),
    (dict(probe_state=torch.zeros(N, 2), observation_space=gym.spaces.Dict({"done": OBS})), ValueError,
     "observation_space (a Dict: its keys are tensordict keys): key(s) ['done'] collide with"),
    (dict(probe_state=torch.zeros(N, 2), observation_space=gym.spaces.Dict({"nonfinite": OBS}),
          nan_policy="truncate"), ValueError, "key(s) ['nonfinite'] collide with"),
], ids=["opaque batched", "state batch", "dict entry batch", "state key is an observation key", "reserved Dict key",
        "optional Dict key"])
def test_make_specs_refuses(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        specs_of(**kwargs)


def test_an_unbatched_opaque_state_has_no_state_entry():
    specs = specs_of(Opaque(), batch=())
    assert specs.state_kind == "opaque" and set(specs.state.keys()) == {"elapsed_steps"}


# ---------------------------------------------------------------------------------- info specs
def test_declared_info_specs_are_expanded_to_the_batch_without_a_probe():
    def probe():
        raise AssertionError("declared specs need no probe step")

    specs = make_info_specs({"energy": Unbounded(shape=(2,))}, (N,), CPU, probe)
    assert specs["energy"].shape == (N, 2)
    assert make_info_specs(None, (N,), CPU, probe) == {}
    with pytest.raises(TypeError, match=re.escape("info_keys['energy']: expected a TensorSpec of one env, got int")):
        make_info_specs({"energy": 3}, (N,), CPU, probe)


def test_probed_info_specs():
    info = {"energy": torch.zeros(N, 2, dtype=torch.float64), "flat": torch.zeros(2)}
    specs = make_info_specs("energy", (N,), CPU, lambda: info)
    assert specs["energy"].shape == (N, 2) and specs["energy"].dtype == torch.float64
    with pytest.raises(KeyError, match=re.escape("info_keys: the model's step info has no 'other' (it has "
                                                 "['energy', 'flat'])")):
        make_info_specs(["other"], (N,), CPU, lambda: info)
    with pytest.raises(ValueError, match=re.escape("info['flat']: expected leading dims (3,), got shape (2,)")):
        make_info_specs(["flat"], (N,), CPU, lambda: info)


def test_info_entries_of_a_step_and_of_a_reset():
    specs = {"energy": Unbounded(shape=(N, 2))}
    model = adapter()
    at_reset = info_entries(specs, {}, (N,), 1, CPU, model, True)
    assert torch.equal(at_reset["energy"], torch.zeros(N, 2))
    value = torch.arange(6.0).reshape(N, 2)
    assert torch.equal(info_entries(specs, {"energy": value}, (N,), 1, CPU, model, False)["energy"], value)
    with pytest.raises(KeyError, match=re.escape("info key 'energy' (declared in info_keys) is missing from the "
                                                 "model's step info (it has ['other'])")):
        info_entries(specs, {"other": 1}, (N,), 1, CPU, model, False)
