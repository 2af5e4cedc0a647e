"""Unit tests of ``torchwm_rl.records``: which returned value is the state, the observation, the
reward, the flags and the info, for every reset and transition return form (one row per form,
with how it was read), mapping keys and their aliases, Gym's ``done`` split with
``TimeLimit.truncated`` as Gymnasium splits it, Dict observations, and the forms refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from torchwm_rl.records import MISSING, parse_reset, parse_transition

OBS1 = np.zeros(1, np.float32)
TRANSITIONS = [
    # (returned value, state, observation, reward, terminated, truncated, form)
    ({"state": 1, "observation": 2, "reward": 3}, 1, 2, 3, MISSING, MISSING, "a mapping"),
    ((2, 3, True, False, {}), MISSING, 2, 3, True, False, "Gymnasium's (obs, reward, terminated, truncated, info)"),
    ((2, 3, True, False, {"model_state": 9}), 9, 2, 3, True, False, "Gymnasium's"),
    ((2, 3, True, {}), MISSING, 2, 3, True, MISSING, "Gym's (obs, reward, done, info)"),
    ((2, 3, True, {"model_state": 9}), 9, 2, 3, True, MISSING, "Gym's"),
    ((1, 2, 3), 1, 2, 3, MISSING, MISSING, "(state, obs, reward)"),
    ((1, 2, 3, True, False, {}), 1, 2, 3, True, False, "(state, obs, reward, terminated, truncated, info)"),
    (OBS1, MISSING, OBS1, MISSING, MISSING, MISSING, "a bare observation"),
]


@pytest.mark.parametrize("value,state,obs,reward,terminated,truncated,form", TRANSITIONS,
                         ids=[row[-1] for row in TRANSITIONS])
def test_transition_return_forms(value, state, obs, reward, terminated, truncated, form):
    raw = parse_transition(value)
    assert (raw.state, raw.reward, raw.terminated, raw.truncated) == (state, reward, terminated, truncated)
    assert raw.observation is obs
    assert raw.form.startswith(form)


def test_gym_tuple_keeps_model_state_in_the_info():
    raw = parse_transition((2, 3, True, False, {"model_state": 9, "k": 1}))
    assert raw.info == {"model_state": 9, "k": 1}


def test_gym_4_tuple_time_limit_splits_done_as_gymnasium_does():
    raw = parse_transition((2, 3, True, {"TimeLimit.truncated": True}))
    assert (bool(raw.terminated), bool(raw.truncated)) == (False, True)
    assert raw.info == {}


def test_transition_2_tuple_is_refused():
    with pytest.raises(ValueError, match=re.escape("returned a 2-tuple, which could be (state, obs) or (obs, reward)")):
        parse_transition((1.0, 2.0))


RESETS = [
    (OBS1, MISSING, "a bare observation", {}),
    ((OBS1, {"k": 1}), MISSING, "(obs, info)", {"k": 1}),
    ((5, OBS1), 5, "(state, obs)", {}),
    ((5, OBS1, {"k": 1}), 5, "(state, obs, info)", {"k": 1}),
    ({"state": 5, "observation": OBS1, "info": {"k": 1}}, 5, "a mapping", {"k": 1}),
]


@pytest.mark.parametrize("value,state,form,info", RESETS, ids=[row[2] for row in RESETS])
def test_reset_return_forms(value, state, form, info):
    raw = parse_reset(value)
    assert raw.state == state and raw.observation is OBS1 and raw.form == form and raw.info == info


# (returned mapping, field of the record it fills)
X = object()
KEYS = [
    ({"state": X, "observation": 0}, "state"),
    ({"next_state": X, "observation": 0}, "state"),
    ({"latent": X, "observation": 0}, "state"),
    ({"model_state": X, "observation": 0}, "state"),
    ({"obs": X}, "observation"),
    ({"next_observation": X}, "observation"),
    ({"next_obs": X}, "observation"),
    ({"image": X}, "observation"),
    ({"pixels": X}, "observation"),
    ({"observation": 0, "rewards": X}, "reward"),
    ({"observation": 0, "done": X}, "terminated"),
    ({"observation": 0, "terminal": X}, "terminated"),
    ({"observation": 0, "truncated": X}, "truncated"),
]


@pytest.mark.parametrize("value,field", KEYS, ids=[next(k for k in row[0] if row[0][k] is X) for row in KEYS])
def test_mapping_keys_and_aliases(value, field):
    raw = parse_transition(value)
    assert getattr(raw, field) is X and raw.form == "a mapping"
    others = {"state", "observation", "reward", "terminated", "truncated"} - {field}
    assert all(getattr(raw, f) is MISSING for f in others if not (f == "observation" and "observation" in value))


@pytest.mark.parametrize("key", ["info", "infos"])
def test_mapping_info_is_copied(key):
    info = {"k": 1}
    raw = parse_transition({"observation": 0, key: info})
    assert raw.info == {"k": 1} and raw.info is not info


# (done, TimeLimit.truncated, expected terminated, expected truncated): Gymnasium's
# convert_to_terminated_truncated_step_api: terminated = done and not time_limit, truncated = done and time_limit
SPLITS = [
    (True, True, False, True),
    (True, False, True, False),
    (False, True, False, False),
    (False, False, False, False),
    (np.array([True, True, False]), np.array([True, False, True]), [False, True, False], [True, False, False]),
    (torch.tensor([True, True, False]), torch.tensor([True, False, True]), [False, True, False], [True, False, False]),
    (torch.tensor([True, True]), True, [False, False], [True, True]),
    (torch.tensor([1, 1, 0]), np.array([1, 0, 0]), [False, True, False], [True, False, False]),
]


@pytest.mark.parametrize("done,time_limit,terminated,truncated", SPLITS, ids=[f"split-{i}" for i in range(len(SPLITS))])
def test_gym_done_split_by_time_limit(done, time_limit, terminated, truncated):
    raw = parse_transition((0, 1.0, done, {"TimeLimit.truncated": time_limit, "k": 2}))
    assert np.asarray(raw.terminated).tolist() == terminated
    assert np.asarray(raw.truncated).tolist() == truncated
    assert raw.info == {"k": 2}  # the time-limit entry is consumed
    if isinstance(done, torch.Tensor):  # tensors stay tensors (batched or on CUDA)
        assert isinstance(raw.terminated, torch.Tensor) and raw.terminated.dtype == torch.bool


def test_gym_done_without_time_limit_is_terminated_and_truncated_is_missing():
    raw = parse_transition((0, 1.0, True, {}))
    assert raw.terminated is True and raw.truncated is MISSING


DICT_KEYS = frozenset({"image", "state"})
IMG = {"image": 1, "state": 2}  # a Dict observation whose keys are also record keys


def test_a_mapping_with_exactly_the_dict_space_keys_is_an_observation():
    for parse in (parse_reset, parse_transition):
        raw = parse(IMG, DICT_KEYS)
        assert raw.observation is IMG and raw.state is MISSING and raw.form == "a bare observation"
        # without the space's keys the same mapping is a record
        raw = parse(IMG)
        assert raw.observation == 1 and raw.state == 2 and raw.form == "a mapping"


# (reset value, dict_keys, state, observation, form)
DICT_RESETS = [
    ((IMG, {"k": 1}), DICT_KEYS, MISSING, IMG, "(obs, info)"),
    ((5, IMG), DICT_KEYS, 5, IMG, "(state, obs)"),
    ((5, IMG), None, MISSING, 5, "(obs, info)"),  # without the space, a mapping second is an info
    ({"state": 5, "observation": IMG}, DICT_KEYS, 5, IMG, "a mapping"),
]


@pytest.mark.parametrize("value,dict_keys,state,obs,form", DICT_RESETS, ids=[f"{row[-1]}-{i}" for i, row in enumerate(DICT_RESETS)])
def test_reset_forms_with_dict_observations(value, dict_keys, state, obs, form):
    raw = parse_reset(value, dict_keys)
    assert raw.state == state and raw.observation == obs and raw.form == form


def test_a_mapping_without_record_keys_is_a_bare_observation():
    value = {"pos": 1, "vel": 2}
    assert parse_reset(value).observation is value
    assert parse_transition(value).observation is value


# (parser, returned value, error type, message fragment); the hook is named "model.step"
REFUSED = [
    (parse_transition, {"observation": 0, "foo": 1, "bar": 2}, ValueError,
     "model.step returned a mapping with unknown key(s) ['foo', 'bar']; accepted keys are"),
    (parse_transition, {"observation": 0, "obs": 1}, ValueError,
     "model.step returned both 'observation' and 'obs' for the observation; return one."),
    (parse_transition, {"observation": 0, "done": True, "terminated": False}, ValueError,
     "model.step returned both 'terminated' and 'done' for the terminated flag"),
    (parse_transition, {"observation": 0, "info": [1]}, TypeError,
     "model.step returned info of type list; expected a dict."),
    (parse_transition, (0, 1.0, True, False, "info"), TypeError, "model.step returned info of type str"),
    (parse_transition, (1, 2, 3, 4, 5, 6, 7), ValueError, "model.step returned a tuple of length 7; expected a mapping"),
    (parse_transition, (), ValueError, "model.step returned a tuple of length 0"),
    (parse_transition, (1.0, 2.0), ValueError, "model.step returned a 2-tuple, which could be (state, obs) or (obs, reward)"),
    (parse_reset, (1, 2, 3, 4), ValueError, "model.step returned a tuple of length 4; expected obs, (obs, info)"),
    (parse_reset, (1, 2, 5), TypeError, "model.step returned info of type int"),
    (parse_reset, {"observation": 0, "extra": 1}, ValueError, "model.step returned a mapping with unknown key(s) ['extra']"),
]


@pytest.mark.parametrize("parse,value,error,fragment", REFUSED, ids=[f"{row[0].__name__}-{i}" for i, row in enumerate(REFUSED)])
def test_refused_forms_name_the_hook(parse, value, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        parse(value, hook="model.step")


def test_a_refused_mapping_is_refused_every_time():
    # the key layout of a mapping is remembered once read: a refused one must not be remembered
    for _ in range(2):
        with pytest.raises(ValueError, match="unknown key"):
            parse_transition({"observation": 0, "typo_reward": 1})


def test_none_info_is_empty():
    assert parse_transition({"observation": 0, "info": None}).info == {}
    assert parse_reset((0, None, None)).info == {}


# ------------------------------------------------------------------ TensorDicts (issue 25)
def _td(**entries):
    from tensordict import TensorDict

    return TensorDict(entries, batch_size=[2])


def test_a_tensordict_record_reads_as_a_mapping():
    state, obs, reward = torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2)
    raw = parse_transition(_td(state=state, observation=obs, reward=reward, info=_td(k=torch.ones(2))))
    assert raw.state is state and raw.observation is obs and raw.reward is reward and raw.form == "a mapping"
    assert isinstance(raw.info, dict) and set(raw.info) == {"k"}
    raw = parse_reset(_td(state=state, obs=obs))
    assert raw.state is state and raw.observation is obs


def test_a_tensordict_with_the_dict_space_keys_is_an_observation():
    value = _td(pos=torch.zeros(2, 2), vel=torch.zeros(2, 1))
    for parse in (parse_transition, parse_reset):
        raw = parse(value, frozenset({"pos", "vel"}))
        assert raw.observation is value and raw.state is MISSING


def test_a_tensordict_info_reads_as_a_dict():
    obs = torch.zeros(2, 3)
    raw = parse_reset((obs, _td(source=torch.ones(2))))
    assert raw.form == "(obs, info)" and set(raw.info) == {"source"}
    raw = parse_transition((obs, torch.zeros(2), False, False, _td(model_state=torch.ones(2, 4))))
    assert raw.state.shape == (2, 4)
