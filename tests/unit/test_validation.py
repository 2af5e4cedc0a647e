"""Unit tests of ``torchwm_rl.validation``, table-driven: conversion of observations, rewards and
flags to tensors of the space (what is cast, what is refused and how the error reads), the
NaN/inf checks, and ``check_action`` / ``check_observation``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from gymnasium import spaces

from torchwm_rl.validation import (
    action_as_given,
    action_shape_accepted,
    all_finite,
    cast_keeping_value,
    check_action,
    check_observation,
    env_rows,
    flatten_observation,
    nonfinite_rows,
    to_action,
    to_batched_scalar,
    to_info_value,
    to_observation,
    where_rows,
    zero_nonfinite,
)

CPU = torch.device("cpu")
BOX = spaces.Box(-1.0, 1.0, (3,), np.float32)
BOX64 = spaces.Box(-1.0, 1.0, (3,), np.float64)
INT_BOX = spaces.Box(0, 10, (3,), np.int64)
U8 = spaces.Box(0, 255, (3,), np.uint8)
F16 = spaces.Box(-1.0, 1.0, (3,), np.float16)
DICT = spaces.Dict({"a": BOX, "b": spaces.Discrete(4)})

# ------------------------------------------------------------------------------ to_observation
# (value, space, batch shape, expected dtype, expected values); values outside the bounds are
# not refused here (that is check_observation's job, with check_observations=True)
CONVERTED = [
    (np.array([0.5, 2.0, -3.0], np.float64), BOX, (), torch.float32, [0.5, 2.0, -3.0]),
    ([1, 2, 3], BOX, (), torch.float32, [1.0, 2.0, 3.0]),
    (torch.tensor([1, 2, 3], dtype=torch.int32), INT_BOX, (), torch.int64, [1, 2, 3]),
    (np.array([0, 255, 7], np.int64), U8, (), torch.uint8, [0, 255, 7]),
    (torch.tensor([0.5, 0.25, 1.0], dtype=torch.float32), BOX64, (), torch.float64, [0.5, 0.25, 1.0]),
    (np.array([[1, 2, 3], [4, 5, 6]], np.float32), BOX, (2,), torch.float32, [[1, 2, 3], [4, 5, 6]]),
    # inf stays inf (the NaN policy reports it), it is not an overflow of the cast
    (np.array([np.inf, 0.0, np.nan], np.float64), BOX, (), torch.float32, [np.inf, 0.0, np.nan]),
    # a big-endian array and a flipped (negative-stride) view read as their values
    (np.array([1.0, 2.0, 3.0], dtype=">f8"), BOX, (), torch.float32, [1.0, 2.0, 3.0]),
    (np.array([1.0, 2.0, 3.0], np.float32)[::-1], BOX, (), torch.float32, [3.0, 2.0, 1.0]),
    (np.array([True, False, True]), BOX, (), torch.float32, [1.0, 0.0, 1.0]),
]


@pytest.mark.parametrize("value,space,batch,dtype,expected", CONVERTED, ids=[f"convert-{i}" for i in range(len(CONVERTED))])
def test_observations_are_converted_to_the_space_dtype(value, space, batch, dtype, expected):
    tensor = to_observation(value, space, batch, CPU)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == dtype
    np.testing.assert_array_equal(tensor.numpy(), np.asarray(expected, dtype=tensor.numpy().dtype))


# (value, space, batch shape, error type, message)
OBS_REFUSED = [
    (np.zeros(2, np.float32), BOX, (), ValueError, "observation: expected shape (3,), got (2,)"),
    (np.zeros(3, np.float32), BOX, (2,), ValueError, "observation: expected shape (2, 3), got (3,)"),
    (np.zeros((1, 3), np.float32), BOX, (), ValueError, "observation: expected shape (3,), got (1, 3)"),
    (np.array([0.5, 1.0, 2.0]), INT_BOX, (), TypeError, "observation: expected dtype torch.int64, got floating dtype torch.float64"),
    (np.array([1.0, 2.0, 3.0], np.float32), U8, (), TypeError, "expected dtype torch.uint8, got floating dtype torch.float32"),
    (np.array([0, 300, 7]), U8, (), ValueError,
     "observation: values in [0, 300] (torch.int64) do not fit the space's dtype torch.uint8 [0, 255]"),
    (np.array([-1, 0, 7]), U8, (), ValueError, "values in [-1, 7] (torch.int64) do not fit"),
    (np.array([1e300, 0.0, 0.0]), BOX, (), ValueError,
     "observation: finite values up to 1e+300 (torch.float64) overflow the space's dtype torch.float32"),
    (np.array([7e4, 0.0, 0.0], np.float32), F16, (), ValueError, "finite values up to 7e+04 (torch.float32) overflow"),
    (torch.zeros(3, dtype=torch.complex64), BOX, (), TypeError, "observation: expected real numbers, got a complex tensor"),
    (np.zeros(3, np.complex64), BOX, (), TypeError, "observation: expected numbers, got ndarray (numpy dtype complex64)"),
    ("abc", BOX, (), TypeError, "observation: expected numbers, got str"),
    ([1, None, 2], BOX, (), TypeError, "observation: expected numbers, got list (numpy dtype object)"),
    ({"a": np.zeros(3, np.float32)}, DICT, (), ValueError, "observation: Dict observation keys differ: missing ['b'], unexpected []"),
    ({"a": np.zeros(3, np.float32), "b": 1, "c": 2}, DICT, (), ValueError, "missing [], unexpected ['c']"),
    (np.zeros(3, np.float32), DICT, (), TypeError, "observation: the observation space is a Dict with keys ['a', 'b'], got ndarray"),
    ({"a": np.zeros(2, np.float32), "b": 1}, DICT, (), ValueError, "observation['a']: expected shape (3,), got (2,)"),
    ({"a": np.zeros(3, np.float32), "b": 1.5}, DICT, (), TypeError, "observation['b']: expected dtype torch.int64"),
    # issue 25: integers cast to float16 overflowed to inf with no error (the NaN policy then
    # blamed the model for an inf it never gave, or "ignore" passed it on)
    (np.array([100000, 0, 0]), F16, (), ValueError,
     "observation: finite values up to 1e+05 (torch.int64) overflow the space's dtype torch.float16"),
]


@pytest.mark.parametrize("value,space,batch,error,message", OBS_REFUSED, ids=[f"refused-{i}" for i in range(len(OBS_REFUSED))])
def test_observations_that_cannot_be_read_one_way_are_refused(value, space, batch, error, message):
    with pytest.raises(error, match=re.escape(message)):
        to_observation(value, space, batch, CPU)


def test_a_dict_observation_converts_key_by_key():
    out = to_observation({"b": np.int64(2), "a": [0.0, 0.5, 1.0]}, DICT, (), CPU)
    assert list(out) == ["a", "b"]  # the space's key order
    assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.int64 and out["b"].item() == 2


def test_the_key_names_the_value_in_errors():
    with pytest.raises(ValueError, match=re.escape("start_states: expected shape (5, 3), got (5, 2)")):
        to_observation(np.zeros((5, 2), np.float32), BOX, (5,), CPU, "start_states")


# -------------------------------------------------------------------------- to_batched_scalar
# (value, batch shape, dtype, expected)
SCALARS = [
    (1.5, (), torch.float32, 1.5),
    (np.float64(2.5), (), torch.float32, 2.5),
    (np.array([2.0]), (), torch.float32, 2.0),
    (torch.tensor(3), (), torch.float32, 3.0),
    ([1.0, 2.0, 3.0], (3,), torch.float32, [1.0, 2.0, 3.0]),
    (torch.tensor([[1.0], [2.0], [3.0]]), (3,), torch.float32, [1.0, 2.0, 3.0]),  # (N, 1) is squeezed
    (True, (), torch.bool, True),
    (np.bool_(False), (), torch.bool, False),
    (1, (), torch.bool, True),
    (np.array([0, 1, 1]), (3,), torch.bool, [False, True, True]),
    (torch.tensor([[1], [0]], dtype=torch.uint8), (2,), torch.bool, [True, False]),
]


@pytest.mark.parametrize("value,batch,dtype,expected", SCALARS, ids=[f"scalar-{i}" for i in range(len(SCALARS))])
def test_rewards_and_flags_take_the_batch_shape(value, batch, dtype, expected):
    tensor = to_batched_scalar(value, batch, CPU, dtype, "reward")
    assert tensor.dtype == dtype and tuple(tensor.shape) == batch
    assert tensor.tolist() == expected


# (value, batch shape, dtype, error type, message)
SCALARS_REFUSED = [
    (1.0, (3,), torch.float32, ValueError,
     "reward: a batched env needs one value per env, shape (3,) or (3, 1); got a scalar (float)"),
    (np.True_, (3,), torch.bool, ValueError, "reward: a batched env needs one value per env"),
    (torch.tensor(1.0), (3,), torch.float32, ValueError, "got a scalar (Tensor)"),
    ([1.0, 2.0], (3,), torch.float32, ValueError, "reward: expected shape (3,) or (3, 1), got shape (2,)"),
    (torch.zeros(3, 2), (3,), torch.float32, ValueError, "reward: expected shape (3,) or (3, 1), got shape (3, 2)"),
    (np.zeros((1, 1)), (), torch.float32, ValueError, "reward: expected a scalar, got shape (1, 1)"),
    ([1.0, 2.0], (), torch.float32, ValueError, "reward: expected a scalar, got shape (2,)"),
    (0.0, (), torch.bool, TypeError, "reward: expected a bool flag, got floating dtype torch.float64"),
    (np.array([0, 2, 1, 3]), (4,), torch.bool, ValueError,
     "reward: expected a bool flag (or integers 0/1), got torch.int64 values [2, 3]"),
    (-1, (), torch.bool, ValueError, "values [-1]"),
    ("x", (), torch.float32, TypeError, "reward: expected numbers, got str"),
    # issue 25: a float64 reward that overflows float32 read as inf (reported as the model's NaN/inf)
    (np.float64(1e300), (), torch.float32, ValueError,
     "reward: finite values up to 1e+300 (torch.float64) overflow the space's dtype torch.float32"),
    (torch.tensor([1e300, 0.0], dtype=torch.float64), (2,), torch.float32, ValueError, "reward: finite values up to 1e+300"),
    (torch.tensor([1 + 2j]), (), torch.float32, TypeError, "reward: expected real numbers, got a complex tensor"),
    (np.array([1 + 2j]), (), torch.float32, TypeError, "reward: expected numbers, got ndarray (numpy dtype complex128)"),
    (torch.tensor([0, 2, 1]), (3,), torch.bool, ValueError, "got torch.int64 values [2]"),
    (np.array([0.0, 1.0]), (2,), torch.bool, TypeError, "expected a bool flag, got floating dtype torch.float64"),
]


@pytest.mark.parametrize("value,batch,dtype,error,message", SCALARS_REFUSED,
                         ids=[f"scalar-refused-{i}" for i in range(len(SCALARS_REFUSED))])
def test_rewards_and_flags_that_would_be_misread_are_refused(value, batch, dtype, error, message):
    with pytest.raises(error, match=re.escape(message)):
        to_batched_scalar(value, batch, CPU, dtype, "reward")


# --------------------------------------------------------------------------------- NaN / inf
NAN, INF = float("nan"), float("inf")
# (tensors, certainly finite)
FINITE = [
    ([torch.ones(3)], True),
    ([torch.ones(3), torch.tensor([1.0, NAN])], False),
    ([torch.tensor([INF])], False),
    ([torch.tensor([-INF, 1.0])], False),
    ([torch.tensor([1, 2], dtype=torch.int64)], True),  # integers cannot hold NaN
    ([torch.ones(2, requires_grad=True)], True),
    ([torch.full((10,), 6e4, dtype=torch.float16)], True),  # summed in float32: no false alarm
    ([torch.full((10,), 6e4, dtype=torch.bfloat16), torch.tensor([NAN], dtype=torch.float16)], False),
    ([], True),
]


@pytest.mark.parametrize("tensors,finite", FINITE, ids=[f"finite-{i}" for i in range(len(FINITE))])
def test_all_finite(tensors, finite):
    assert all_finite(*tensors) is finite


# (tensors by key, batch shape, rows with NaN/inf (None: none), keys involved)
ROWS = [
    ({"observation": torch.ones(3, 2), "reward": torch.ones(3)}, (3,), None, []),
    ({"observation": torch.tensor([[0.0, 0.0], [0.0, NAN], [0.0, 0.0]]), "reward": torch.tensor([0.0, 0.0, INF])},
     (3,), [False, True, True], ["observation", "reward"]),
    ({"observation": torch.tensor([[1.0], [NAN]]), "reward": torch.zeros(2)}, (2,), [False, True], ["observation"]),
    ({"observation": torch.tensor([NAN, 1.0])}, (), True, ["observation"]),
    # a sum that overflows finite values says "maybe": the row-by-row look finds nothing
    ({"observation": torch.tensor([[3e38, 3e38], [1.0, 1.0]])}, (2,), None, []),
    ({"flags": torch.tensor([1, 2]), "reward": torch.tensor([NAN, 0.0])}, (2,), [True, False], ["reward"]),
]


@pytest.mark.parametrize("tensors,batch,rows,keys", ROWS, ids=[f"rows-{i}" for i in range(len(ROWS))])
def test_nonfinite_rows(tensors, batch, rows, keys):
    mask, found = nonfinite_rows(tensors, batch)
    assert found == keys
    if rows is None:
        assert mask is None
    else:
        assert tuple(mask.shape) == batch and mask.tolist() == rows


def test_flatten_observation_names_nested_entries():
    a, c = torch.zeros(1), torch.ones(1)
    assert flatten_observation(a) == {"observation": a}
    assert flatten_observation({"a": a, "b": {"c": c}}) == {"observation['a']": a, "observation['b']['c']": c}
    assert list(flatten_observation({"x": a}, "start_states")) == ["start_states['x']"]


def test_zero_nonfinite_zeroes_float_entries_only():
    out = zero_nonfinite({"x": torch.tensor([NAN, INF, -INF, 2.0]), "n": torch.tensor([3, 4])})
    assert out["x"].tolist() == [0.0, 0.0, 0.0, 2.0] and out["n"].tolist() == [3, 4]


# (mask, old, new, expected)
WHERE = [
    (torch.tensor([True, False]), torch.zeros(2, 3), torch.ones(2, 3), [[1.0] * 3, [0.0] * 3]),
    (torch.tensor([False, True]), torch.zeros(2), torch.ones(2), [0.0, 1.0]),
    (torch.tensor(True), torch.zeros(3), torch.ones(3), [1.0] * 3),
    (torch.tensor(False), torch.zeros(3), torch.ones(3), [0.0] * 3),
]


@pytest.mark.parametrize("mask,old,new,expected", WHERE, ids=[f"where-{i}" for i in range(len(WHERE))])
def test_where_rows(mask, old, new, expected):
    assert where_rows(mask, old, new).tolist() == expected
    nested = where_rows(mask, {"a": old}, {"a": new})
    assert nested["a"].tolist() == expected


@pytest.mark.parametrize("mask,text", [
    (torch.tensor(True), ""),
    (torch.tensor([False, True, True]), " at env index [1, 2]"),
    (torch.tensor([True, False]), " at env index [0]"),
], ids=["unbatched", "two", "one"])
def test_env_rows(mask, text):
    assert env_rows(mask) == text


# ------------------------------------------------------------------------------ check_action
DISCRETE_FROM_1 = spaces.Discrete(3, start=1)  # actions 1, 2, 3
MD = spaces.MultiDiscrete([3, 5])
MB = spaces.MultiBinary(3)
INT_ACT = spaces.Box(-2, 2, (2,), np.int64)

# (space, batch shape, action, clipped action)
CLIPPED = [
    (BOX, (), np.array([5.0, -5.0, 0.5], np.float32), [1.0, -1.0, 0.5]),
    (BOX, (2,), np.array([[0.0, 0.0, 0.0], [7.0, 0.0, -0.5]], np.float32), [[0.0] * 3, [1.0, 0.0, -0.5]]),
    (spaces.Discrete(3), (), np.array(7), 2),
    (spaces.Discrete(3), (), np.array(-1), 0),
    (DISCRETE_FROM_1, (), np.array(0), 1),
    (spaces.Discrete(3), (), np.array(1.6), 2.0),  # an integer space: rounded, then clipped
    (MD, (2,), np.array([[7, -2], [1, 4]]), [[2, 0], [1, 4]]),
    (MB, (), np.array([2, 0, -1]), [1, 0, 0]),
    (INT_ACT, (), np.array([9, -9]), [2, -2]),
]


@pytest.mark.parametrize("space,batch,action,expected", CLIPPED, ids=[f"clip-{i}" for i in range(len(CLIPPED))])
def test_clip_brings_actions_into_the_space(space, batch, action, expected):
    out = check_action(action, space, batch, CPU, "clip")
    assert isinstance(out, np.ndarray)  # the caller's type
    assert out.tolist() == expected
    # "raise" refuses the same action
    with pytest.raises(ValueError, match="outside action_space"):
        check_action(action, space, batch, CPU, "raise")


def test_clip_keeps_a_tensor_a_tensor():
    out = check_action(torch.tensor([5.0, 0.0, 0.0]), BOX, (), CPU, "clip")
    assert isinstance(out, torch.Tensor) and out.tolist() == [1.0, 0.0, 0.0]


# (space, batch shape, action): inside the space, returned as given (the same object)
INSIDE = [
    (BOX, (), np.array([1.0, -1.0, 0.0], np.float32)),
    (BOX, (2,), torch.zeros(2, 3)),
    (spaces.Discrete(3), (), np.array(2)),
    (DISCRETE_FROM_1, (), np.array(3)),
    (spaces.Discrete(3), (), np.array(2.0)),  # integral float for an integer space
    (MD, (2,), np.array([[2, 4], [0, 0]])),
    (MB, (), np.array([1, 0, 1])),
]


@pytest.mark.parametrize("mode", ["clip", "raise"])
@pytest.mark.parametrize("space,batch,action", INSIDE, ids=[f"inside-{i}" for i in range(len(INSIDE))])
def test_actions_inside_the_space_pass_unchanged(space, batch, action, mode):
    assert check_action(action, space, batch, CPU, mode) is action


# (space, batch shape, action, mode, message)
ACTION_REFUSED = [
    (BOX, (), np.array([5.0, 0.0, 0.0], np.float32), "raise",
     "action: outside action_space Box(-1.0, 1.0, (3,), float32); got [5.0, 0.0, 0.0] (check_actions='clip' clips instead)"),
    (BOX, (3,), np.array([[0.0] * 3, [0.0] * 3, [0.0, 0.0, -2.0]], np.float32), "raise",
     "outside action_space Box(-1.0, 1.0, (3,), float32) at env index [2]; got [0.0, 0.0, -2.0]"),
    (BOX, (), np.array([0.0, np.nan, 0.0], np.float32), "clip", "action: NaN in action_space Box(-1.0, 1.0, (3,), float32); got"),
    (BOX, (), np.array([0.0, np.nan, 0.0], np.float32), "raise", "action: NaN in action_space"),
    (BOX, (), np.zeros(2, np.float32), "clip", "action: expected shape (3,), got (2,)"),
    (BOX, (2,), np.zeros(3, np.float32), "raise", "action: expected shape (2, 3), got (3,)"),
    (spaces.Discrete(3), (4,), np.array([0, 5, 2, 1]), "raise", "action: outside action_space Discrete(3) at env index [1]; got 5"),
    (spaces.Discrete(3), (), np.array(1.5), "raise", "action: outside action_space Discrete(3); got 1.5"),
    (MB, (), np.array([0, 2, 1]), "raise", "outside action_space MultiBinary(3); got [0, 2, 1]"),
    (spaces.Dict({"push": BOX}), (), {"push": np.array([0.0, 3.0, 0.0], np.float32)}, "raise",
     "action['push']: outside action_space Box"),
    (spaces.Dict({"push": BOX}), (), {"pull": np.zeros(3, np.float32)}, "clip",
     "action: Dict action keys differ: missing ['push'], unexpected ['pull']"),
    (spaces.Dict({"push": BOX}), (), np.zeros(3, np.float32), "clip", "action: the action space is a Dict with keys ['push']"),
]


@pytest.mark.parametrize("space,batch,action,mode,message", ACTION_REFUSED, ids=[f"refused-{i}" for i in range(len(ACTION_REFUSED))])
def test_actions_that_cannot_be_used_are_refused(space, batch, action, mode, message):
    with pytest.raises(ValueError if "Dict with keys" not in message else TypeError, match=re.escape(message)):
        check_action(action, space, batch, CPU, mode)


def test_a_dict_action_is_clipped_key_by_key():
    space = spaces.Dict({"push": BOX, "mode": spaces.Discrete(3)})
    out = check_action({"push": np.array([2.0, 0.0, 0.0], np.float32), "mode": np.array(4)}, space, (), CPU, "clip")
    assert out["push"].tolist() == [1.0, 0.0, 0.0] and out["mode"].tolist() == 2


def test_spaces_without_bounds_are_not_checked():
    text = spaces.Text(5)
    assert check_action("hello", text, (), CPU, "raise") == "hello"


# ------------------------------------------------------------------------- check_observation
# (value, space, batch shape, message or None when inside)
OBSERVED = [
    (torch.tensor([0.0, 1.0, -1.0]), BOX, (), None),
    (torch.tensor([0.0, 1.5, 0.0]), BOX, (), "observation: outside observation_space Box(-1.0, 1.0, (3,), float32); got [0.0, 1.5, 0.0]"),
    (torch.tensor([[0.0] * 3, [0.0, 0.0, -3.0]]), BOX, (2,), "at env index [1]; got [0.0, 0.0, -3.0]"),
    (torch.tensor([NAN, 0.0, 0.0]), BOX, (), None),  # NaN is the NaN policy's business
    (torch.tensor([3], dtype=torch.int64).squeeze(), spaces.Discrete(3), (), "outside observation_space Discrete(3); got 3"),
    (torch.tensor([0, 2, 1]), MB, (), "outside observation_space MultiBinary(3)"),
    (torch.tensor([255, 0, 7], dtype=torch.uint8), U8, (), None),
    ({"a": torch.zeros(3), "b": torch.tensor(4)}, DICT, (), "observation['b']: outside observation_space Discrete(4); got 4"),
]


@pytest.mark.parametrize("value,space,batch,message", OBSERVED, ids=[f"observed-{i}" for i in range(len(OBSERVED))])
def test_check_observation(value, space, batch, message):
    if message is None:
        assert check_observation(value, space, batch) is None
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_observation(value, space, batch)


# ---------------------------------------------------------------------------------- to_action
# (shape given, one env's action shape, batch, accepted)
ACTION_SHAPES = [
    ((3,), (3,), (), True), ((4, 3), (3,), (4,), True), ((2, 5, 3), (3,), (2, 5), True),
    ((), (), (), True), ((1,), (), (), True), ((4,), (), (4,), True), ((4, 1), (), (4,), True),  # Discrete
    ((1,), (1,), (), True), ((), (1,), (), True), ((4, 1), (1,), (4,), True), ((4,), (1,), (4,), True),
    ((3,), (3,), (4,), False),  # one env's action for a batch: not broadcast
    ((), (), (4,), False), ((1,), (1,), (4,), False), ((1, 3), (3,), (4,), False),
    ((4, 1, 3), (3,), (4,), False), ((1, 3), (3,), (), False), ((4, 2), (3,), (4,), False),
    ((4, 1, 1), (), (4,), False), ((4, 1, 1), (1,), (4,), False), ((3, 4), (3,), (4,), False),
]


@pytest.mark.parametrize("got,one,batch,accepted", ACTION_SHAPES)
def test_action_shapes_give_each_env_one_action(got, one, batch, accepted):
    assert action_shape_accepted(got, one, batch) is accepted


# (value, space, batch, expected dtype, expected values)
ACTIONS = [
    (np.array([0.5, 2.0, -3.0], np.float64), BOX, (), torch.float32, [0.5, 2.0, -3.0]),
    ([1, 0, 1], BOX, (), torch.float32, [1.0, 0.0, 1.0]),
    (2, spaces.Discrete(3), (), torch.int64, 2),
    (np.array([2]), spaces.Discrete(3), (), torch.int64, 2),
    (np.array([2.0, 1.0]), spaces.Discrete(3), (2,), torch.int64, [2, 1]),  # integral floats
    (torch.tensor([[1], [2]], dtype=torch.int32), spaces.Discrete(3), (2,), torch.int64, [1, 2]),
    (np.array([0.25, 0.5], np.float32), spaces.Box(-1, 1, (1,), np.float32), (2,), torch.float32, [[0.25], [0.5]]),
    (np.array([1.0, 0.0, 1.0], np.float32), spaces.MultiBinary(3), (), torch.int8, [1, 0, 1]),  # SB3's floats
    (np.array([255, 0, 7]), U8, (), torch.uint8, [255, 0, 7]),
    ({"a": [0.0, 0.0, 1.0], "b": 3}, DICT, (), None, None),
]


@pytest.mark.parametrize("value,space,batch,dtype,expected", ACTIONS, ids=[f"action-{i}" for i in range(len(ACTIONS))])
def test_actions_become_tensors_of_the_space(value, space, batch, dtype, expected):
    out = to_action(value, space, batch, CPU)
    if isinstance(space, spaces.Dict):
        assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.int64 and out["b"].shape == ()
        return
    assert out.dtype == dtype and tuple(out.shape) == (*batch, *space.shape) and out.tolist() == expected


# (value, space, batch, message)
ACTIONS_REFUSED = [
    (np.zeros(3, np.float32), BOX, (4,), "action: expected shape (4, 3), got (3,) (the batch (4,), then one env's "
     "action shape (3,)); this is one env's action: it is not broadcast to every env; pass one action per env, "
     "stacked along the first dim: shape (4, 3)"),
    (np.zeros((1, 3), np.float32), BOX, (), "action: expected shape (3,), got (1, 3) (the action space's shape (3,)); "
     "pass one action of shape (3,)"),
    (np.array([300, 0, 0]), U8, (), "action: values in [0, 300] (torch.int64) do not fit the space's dtype torch.uint8 "
     "[0, 255]: a cast would wrap them. Pass actions in the action space (check_actions='clip' clips them into it)"),
    (np.array([1.0, 2.5]), spaces.Discrete(3), (2,), "action: non-integral values [2.5] (torch.float64) for an integer "
     "action space; a cast would truncate them"),
    (np.array([np.inf]), spaces.Box(0, 9, (1,), np.int64), (), "action: non-integral values [inf]"),
    (np.array([1e300, 0.0, 0.0]), BOX, (), "action: finite values up to 1e+300 (torch.float64) overflow the space's "
     "dtype torch.float32"),
    ({"a": np.zeros(3, np.float32), "b": np.array([1, 2])}, DICT, (), "action['b']: expected shape (), got (2,)"),
    (np.array([1 + 2j, 0, 0]), BOX, (), "action: expected numbers, got ndarray (numpy dtype complex128)"),
]


@pytest.mark.parametrize("value,space,batch,message", ACTIONS_REFUSED, ids=[f"refused-{i}" for i in range(len(ACTIONS_REFUSED))])
def test_actions_that_would_be_misread_are_refused(value, space, batch, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        to_action(value, space, batch, CPU)


@pytest.mark.parametrize("value", [np.full((2, 3), 0.5, np.float32), torch.full((2, 3), 0.5),
                                   np.full((2, 3), 0.5, np.float32)[:, ::-1], np.full(6, 0.5, np.float32)[::2]])
def test_an_action_is_never_the_callers_memory(value):
    out = to_action(value, BOX, (2,) if value.ndim == 2 else (), CPU)
    value[...] = -1.0  # the caller refills its buffer
    assert (out == 0.5).all()


def test_an_action_passed_as_given_is_checked_and_owned():
    """``action_as_given`` (action_transform_fn, torch_actions=False): the same type, no cast;
    arrays and tensors as a copy of the space's shape; other values as they are."""
    buffer = np.full(4, 0.5, np.float32)
    out = action_as_given(buffer, spaces.Box(-1, 1, (1,), np.float32), (4,))
    assert type(out) is np.ndarray and out.dtype == np.float32 and out.shape == (4, 1)
    assert not np.shares_memory(out, buffer)
    tensor = torch.zeros(4, 3, dtype=torch.float64)
    out = action_as_given(tensor, BOX, (4,))
    assert out.dtype == torch.float64 and out.data_ptr() != tensor.data_ptr()
    as_list = [0.0, 0.0, 1.0]
    assert action_as_given(as_list, BOX, ()) is as_list
    assert action_as_given("left", spaces.Discrete(3), ()) == "left"  # an action_transform_fn's own encoding
    thing = object()
    assert action_as_given(thing, BOX, ()) is thing
    with pytest.raises(ValueError, match=re.escape("action: expected shape (4, 3), got (3,)")):
        action_as_given([0.0, 0.0, 0.0], BOX, (4,))
    with pytest.raises(ValueError, match=re.escape("action['a']: expected shape (3,), got (2,)")):
        action_as_given({"a": np.zeros(2), "b": 1}, DICT, ())


# ------------------------------------------------- the one value-keeping cast (issue 25)
# (tensor, dtype, rows, expected values or (error type, message))
CASTS = [
    (torch.tensor([1, 0]), torch.bool, None, [True, False]),
    (torch.tensor([1, 2]), torch.bool, None, (ValueError, "expected bools (or integers 0/1), got torch.int64 values [2]")),
    (torch.tensor([255, 0], dtype=torch.int64), torch.uint8, None, [255, 0]),
    (torch.tensor([256, 0], dtype=torch.int64), torch.uint8, None, (ValueError, "values in [0, 256] (torch.int64) do not fit")),
    (torch.tensor([200], dtype=torch.uint8), torch.int64, None, [200]),  # widening: nothing to check
    (torch.tensor([1.5]), torch.int64, None, (TypeError, "expected dtype torch.int64, got floating dtype torch.float32")),
    (torch.tensor([2.0 ** 40]), torch.float16, None, (ValueError, "overflow the space's dtype torch.float16")),
    (torch.tensor([2 ** 62]), torch.float32, None, [float(2 ** 62)]),  # every int64 fits float32's range
    # rows: only the rows in use are checked (a partial reset's other rows may hold anything)
    (torch.tensor([[300], [7]]), torch.uint8, torch.tensor([False, True]), None),
    (torch.tensor([[1e300], [1.0]], dtype=torch.float64), torch.float32, torch.tensor([False, True]), None),
]


@pytest.mark.parametrize("tensor,dtype,rows,expected", CASTS, ids=[f"cast-{i}" for i in range(len(CASTS))])
def test_casts_keep_the_value_or_refuse(tensor, dtype, rows, expected):
    if isinstance(expected, tuple):
        error, message = expected
        with pytest.raises(error, match=re.escape(message)):
            cast_keeping_value(tensor, dtype, "x", rows)
        return
    out = cast_keeping_value(tensor, dtype, "x", rows)
    assert out.dtype == dtype
    if expected is not None:
        assert out.tolist() == expected
    else:
        assert out[rows].tolist() == tensor[rows].to(dtype).tolist()


# (value, dtype, error type, message): info_keys values go through the same converter
INFOS_REFUSED = [
    (torch.tensor([[1 + 1j]]), torch.float32, TypeError, "info['x']: expected real numbers, got a complex tensor"),
    (torch.tensor([[2 ** 40]]), torch.int32, ValueError, "info['x']: values in [1099511627776, 1099511627776]"),
    (torch.tensor([[1.5]]), torch.int64, TypeError, "info['x']: expected dtype torch.int64, got floating dtype"),
    (torch.zeros(1, 2), torch.float32, ValueError, "info['x']: expected shape (1, 1) (the batch, then the declared spec"),
]


@pytest.mark.parametrize("value,dtype,error,message", INFOS_REFUSED, ids=[f"info-{i}" for i in range(len(INFOS_REFUSED))])
def test_info_values_that_would_change_are_refused(value, dtype, error, message):
    with pytest.raises(error, match=re.escape(message)):
        to_info_value(value, (1, 1), dtype, CPU, "info['x']")


def test_numpy_values_are_copied_not_shared():
    """torch.as_tensor shares numpy memory, and numpy writes bump no version counter: a hook
    refilling one numpy buffer would rewrite every recorded observation."""
    buffer = np.zeros(3, np.float32)
    out = to_observation(buffer, BOX, (), CPU)
    buffer[:] = 1.0
    assert out.tolist() == [0.0, 0.0, 0.0]
    reward = np.zeros(2, np.float32)
    got = to_batched_scalar(reward, (2,), CPU, torch.float32, "reward")
    reward[:] = 5.0
    assert got.tolist() == [0.0, 0.0]
