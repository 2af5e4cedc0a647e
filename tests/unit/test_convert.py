"""Unit tests of ``torchwm_rl.convert``, table-driven: observations and infos handed to
Gymnasium / SB3 (numpy of the space's dtype, memory the caller owns, no autograd graph), render
frames, and batched infos split per env (SB3) or laid out as Gymnasium's vector envs lay them
out (checked against Gymnasium's own ``VectorEnv._add_info``, one env at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from tensordict import TensorDict

from torchwm_rl.convert import (
    detach_tree,
    image_hwc,
    info_row,
    merge_vector_infos,
    numpy_can_hold,
    observation_to_numpy,
    per_env_infos,
    vector_info,
)

BOX = spaces.Box(-1.0, 1.0, (3,), np.float32)

# ----------------------------------------------------------------------- observation_to_numpy
# (tensor, space, expected numpy dtype)
OBSERVATIONS = [
    (torch.tensor([0.5, 0.25, 1.0]), BOX, np.float32),
    (torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64), BOX, np.float32),
    (torch.tensor([0.5, 0.25, 1.0], requires_grad=True), BOX, np.float32),
    (torch.tensor([1, 2, 3], dtype=torch.uint8), spaces.Box(0, 255, (3,), np.uint8), np.uint8),
    (torch.tensor(2), spaces.Discrete(3), np.int64),
]


@pytest.mark.parametrize("tensor,space,dtype", OBSERVATIONS, ids=[f"obs-{i}" for i in range(len(OBSERVATIONS))])
def test_observations_become_numpy_the_caller_owns(tensor, space, dtype):
    before = tensor.detach().clone()
    array = observation_to_numpy(tensor, space)
    assert isinstance(array, np.ndarray) and array.dtype == dtype
    np.testing.assert_array_equal(array, before.numpy().astype(dtype))
    array += 1  # the caller writes into it (e.g. obs /= 255): the env's tensor is untouched
    assert torch.equal(tensor.detach(), before)


def test_a_dict_observation_becomes_a_dict_of_arrays():
    space = spaces.Dict({"a": BOX, "b": spaces.Discrete(4)})
    out = observation_to_numpy({"a": torch.zeros(3), "b": torch.tensor(3)}, space)
    assert list(out) == ["a", "b"] and out["a"].dtype == np.float32 and out["b"].item() == 3


@pytest.mark.parametrize("dtype,holds", [
    (torch.float32, True), (torch.float16, True), (torch.int64, True), (torch.bool, True), (torch.uint8, True),
    (torch.bfloat16, False), (torch.float8_e4m3fn, False),
], ids=str)
def test_numpy_can_hold(dtype, holds):
    assert numpy_can_hold(dtype) is holds


# --------------------------------------------------------------------------------- detach_tree
def test_detach_tree_makes_numpy_copies_without_graphs():
    state = torch.ones(2, requires_grad=True) * 2
    plain = torch.zeros(2)
    out = detach_tree({"model_state": state, "nested": {"plain": plain}, "pair": (plain, 1), "n": 3, "s": "x"})
    assert isinstance(out["model_state"], np.ndarray) and out["model_state"].tolist() == [2.0, 2.0]
    assert isinstance(out["nested"]["plain"], np.ndarray)
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][0], np.ndarray) and out["pair"][1] == 1
    assert out["n"] == 3 and out["s"] == "x"
    out["nested"]["plain"] += 1  # a copy: the tensor is untouched
    assert plain.tolist() == [0.0, 0.0]


# (value, what detach_tree gives: a predicate)
TREES = [
    (torch.tensor([1.0], dtype=torch.bfloat16, requires_grad=True),
     lambda out: isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and not out.requires_grad),
    (TensorDict({"a": torch.zeros(2)}, batch_size=[2]), lambda out: isinstance(out, dict) and isinstance(out["a"], np.ndarray)),
    ([torch.zeros(1), torch.ones(1)], lambda out: isinstance(out, list) and all(isinstance(v, np.ndarray) for v in out)),
    ([1, 2], lambda out: out == [1, 2]),
    (None, lambda out: out is None),
    (np.arange(3), lambda out: isinstance(out, np.ndarray) and out.tolist() == [0, 1, 2]),
]


@pytest.mark.parametrize("value,check", TREES, ids=[f"tree-{i}" for i in range(len(TREES))])
def test_detach_tree(value, check):
    assert check(detach_tree(value))


def test_a_bfloat16_tensor_is_a_copy_not_a_view():
    latent = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    out = detach_tree(latent)
    out += 1
    assert latent.tolist() == [1.0, 2.0]


# ----------------------------------------------------------------------------------- image_hwc
# (frame shape, shape after)
FRAMES = [
    ((3, 8, 8), (8, 8, 3)),
    ((1, 5, 6), (5, 6, 1)),
    ((4, 2, 2), (2, 2, 4)),
    ((8, 8, 3), (8, 8, 3)),  # already channel-last
    ((3, 4, 3), (3, 4, 3)),  # either way round: left as it is
    ((2, 5, 5), (2, 5, 5)),  # 2 channels is no image layout: left as it is
    ((8, 8), (8, 8)),
]


@pytest.mark.parametrize("shape,after", FRAMES, ids=[str(row[0]) for row in FRAMES])
def test_image_hwc(shape, after):
    frame = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    for given in (frame, torch.as_tensor(frame)):
        out = image_hwc(given)
        assert isinstance(out, np.ndarray) and out.shape == after
        if after != shape:
            np.testing.assert_array_equal(out, np.moveaxis(frame, 0, -1))


# ------------------------------------------------------------------------------ batched infos
N = 3
# a batched hook's info (already detach_tree-d): rows are entries whose leading dim is N
INFO = {
    "per_env": np.array([10.0, 11.0, 12.0]),
    "per_env_vec": np.arange(6).reshape(3, 2),
    "shared_int": 5,
    "shared_float": 0.5,
    "shared_bool": True,
    "shared_np": np.float32(1.5),
    "shared_array": np.array([7, 8]),  # leading dim 2 != N: the same for every env
    "label": "model-a",
    "nested": {"deep": np.array([1, 2, 3]), "k": 1},
}


def _single(info, i):
    """What env i's single-env info would be."""
    return info_row(info, N, i)


def test_info_row_takes_each_envs_row():
    row = info_row(INFO, N, 1)
    assert row["per_env"] == 11.0 and row["per_env"].shape == ()
    assert row["per_env_vec"].tolist() == [2, 3]
    assert row["shared_int"] == 5 and row["label"] == "model-a" and row["shared_array"].tolist() == [7, 8]
    assert row["nested"] == {"deep": 2, "k": 1}


def test_per_env_infos_detach_and_split():
    infos = per_env_infos({"r": torch.tensor([1.0, 2.0, 3.0], requires_grad=True), "c": 4}, N)
    assert len(infos) == N
    assert [float(info["r"]) for info in infos] == [1.0, 2.0, 3.0]
    assert all(isinstance(info["r"], np.ndarray) and info["c"] == 4 for info in infos)
    assert per_env_infos({}, N) == [{}, {}, {}]


def _gymnasium_layout(info, rows):
    """Gymnasium's vector info of the single infos of the envs in ``rows``, one env at a time."""
    vec = VectorEnv()
    vec.num_envs = N
    out = {}
    for i in np.flatnonzero(rows):
        out = vec._add_info(out, _single(info, i), int(i))
    return out


def _assert_same_layout(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        if isinstance(expected[key], dict):
            _assert_same_layout(got[key], expected[key])
        else:
            assert got[key].dtype == expected[key].dtype, key
            assert got[key].shape == expected[key].shape, key
            assert got[key].tolist() == expected[key].tolist(), key


@pytest.mark.parametrize("rows", [[True, True, True], [False, True, False], [True, False, True]], ids=str)
@pytest.mark.parametrize("key", list(INFO))
def test_vector_info_is_gymnasiums_layout(key, rows):
    rows = np.array(rows)
    info = {key: INFO[key]}
    _assert_same_layout(vector_info(info, N, rows), _gymnasium_layout(info, rows))


def test_vector_info_for_no_env_is_empty():
    assert vector_info(INFO, N, np.zeros(N, dtype=bool)) == {}


def test_vector_info_refuses_a_key_that_collides_with_a_mask():
    with pytest.raises(ValueError, match="keys 'x' and '_x' collide"):
        vector_info({"x": 1, "_x": 2}, N, np.ones(N, dtype=bool))


# (info of envs 0 and 2, info of env 1, the merged entries): each env keeps its own
MERGES = [
    ({"a": np.array([1.0, 2.0, 3.0])}, {"a": np.array([4.0, 5.0, 6.0])},
     {"a": [1.0, 5.0, 3.0], "_a": [True, True, True]}),
    ({"a": 1}, {"b": 2.0}, {"a": [1, 0, 1], "_a": [True, False, True], "b": [0.0, 2.0, 0.0], "_b": [False, True, False]}),
    # different kinds for different envs: one object per env (Gymnasium's _add_info would fail here)
    ({"a": 1}, {"a": "text"}, {"a": [1, "text", 1], "_a": [True, True, True]}),
    ({"n": {"x": np.array([1, 2, 3])}}, {"n": {"x": np.array([4, 5, 6])}},
     {"n": {"x": [1, 5, 3], "_x": [True, True, True]}, "_n": [True, True, True]}),
]


def _lists(info):
    return {k: _lists(v) if isinstance(v, dict) else v.tolist() for k, v in info.items()}


@pytest.mark.parametrize("first,second,expected", MERGES, ids=[f"merge-{i}" for i in range(len(MERGES))])
def test_merge_vector_infos_keeps_each_envs_own(first, second, expected):
    first_rows, second_rows = np.array([True, False, True]), np.array([False, True, False])
    merged = merge_vector_infos(vector_info(first, N, first_rows), vector_info(second, N, second_rows))
    assert _lists(merged) == expected
