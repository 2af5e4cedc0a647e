"""Gymnasium spaces <-> TorchRL specs (both directions, with batch dims), TorchRL's own
``check_env_specs`` on ``WorldModelEnv`` for every observation / action kind the tutorial uses,
and actions of composite spaces as the model receives them (Dict entries as tensors, one-element
MultiDiscrete keeping its shape)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torchrl.data import Binary, Bounded, Categorical, Composite, MultiCategorical, Unbounded
from torchrl.envs.utils import check_env_specs

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.spaces import as_space, space_to_spec, spec_to_space

from models import (
    DictModel,
    DiscreteModel,
    ImageModel,
    VectorModel,
    dict_reset,
    dict_spaces,
    dict_transition,
    image_reset,
    image_spaces,
    image_transition,
    one_hot_action,
    reset_world_model,
    transition_world_model,
)
from reliability_models import OBS, Scripted, make

SPACES = {
    "box float32": spaces.Box(-1.0, 2.0, shape=(4,), dtype=np.float32),
    "box float64 per-dim bounds": spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 5.0]), dtype=np.float64),
    "box unbounded": spaces.Box(-np.inf, np.inf, shape=(2, 3), dtype=np.float32),
    "box uint8 image": spaces.Box(0, 255, shape=(3, 8, 8), dtype=np.uint8),
    "discrete": spaces.Discrete(5),
    "multidiscrete": spaces.MultiDiscrete([2, 3, 4]),
    "multibinary": spaces.MultiBinary(4),
    "multibinary 2d": spaces.MultiBinary([2, 3]),
    "nested dict": spaces.Dict(
        {
            "image": spaces.Box(0, 255, shape=(1, 4, 4), dtype=np.uint8),
            "proprio": spaces.Dict(
                {"joint": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32), "mode": spaces.Discrete(3)}
            ),
        }
    ),
}
BATCHES = [(), (1,), (4,)]


def _space_eq(a: spaces.Space, b: spaces.Space) -> bool:
    if isinstance(a, spaces.Dict):
        return isinstance(b, spaces.Dict) and list(a.spaces) == list(b.spaces) and all(
            _space_eq(a[k], b[k]) for k in a.spaces
        )
    return type(a) is type(b) and a == b and a.dtype == b.dtype


@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("name", list(SPACES))
def test_space_to_spec_round_trip(name, batch):
    space = SPACES[name]
    spec = space_to_spec(space, batch)
    assert spec.shape[: len(batch)] == batch
    back = spec_to_space(spec, batch_ndim=len(batch))
    assert _space_eq(back, space), (back, space)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("name", list(SPACES))
def test_samples_agree_both_ways(name, batch):
    """A spec sample is in the space (row by row), a space sample is in the spec."""
    space = SPACES[name]
    spec = space_to_spec(space, batch)
    torch.manual_seed(0)
    space.seed(0)
    sample = spec.rand()
    rows = [sample] if not batch else [sample[i] for i in range(batch[0])]
    for row in rows:
        assert space.contains(_to_numpy(row, space)), (row, space)
    for _ in range(3):
        single = space_to_spec(space)
        assert single.is_in(_to_torch(space.sample()))


def _to_numpy(value, space):
    if isinstance(space, spaces.Dict):
        return {k: _to_numpy(value[k], space[k]) for k in space.spaces}
    array = value.numpy()
    return array.astype(space.dtype) if not isinstance(space, spaces.Discrete) else np.int64(array)


def _to_torch(value):
    from tensordict import TensorDict

    if isinstance(value, dict):
        return TensorDict({k: _to_torch(v) for k, v in value.items()}, batch_size=())
    return torch.as_tensor(np.asarray(value))


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_spec_kinds_and_details(batch):
    box = space_to_spec(SPACES["box float64 per-dim bounds"], batch)
    assert isinstance(box, Bounded) and box.dtype == torch.float64 and box.shape == (*batch, 2)
    torch.testing.assert_close(box.space.low, torch.tensor([-1.0, 0.0], dtype=torch.float64).expand(*batch, 2))
    torch.testing.assert_close(box.space.high, torch.tensor([1.0, 5.0], dtype=torch.float64).expand(*batch, 2))
    assert isinstance(space_to_spec(SPACES["box unbounded"], batch), Unbounded)
    image = space_to_spec(SPACES["box uint8 image"], batch)
    assert isinstance(image, Bounded) and image.dtype == torch.uint8 and image.shape == (*batch, 3, 8, 8)
    assert int(image.space.low.min()) == 0 and int(image.space.high.max()) == 255
    discrete = space_to_spec(SPACES["discrete"], batch)
    # an integer index, as Gymnasium uses (not TorchRL's one-hot default)
    assert isinstance(discrete, Categorical) and discrete.n == 5 and discrete.shape == batch
    assert discrete.dtype == torch.int64
    md = space_to_spec(SPACES["multidiscrete"], batch)
    assert isinstance(md, MultiCategorical) and md.shape == (*batch, 3)
    mb = space_to_spec(SPACES["multibinary"], batch)
    assert isinstance(mb, Binary) and mb.shape == (*batch, 4)
    nested = space_to_spec(SPACES["nested dict"], batch)
    assert isinstance(nested, Composite) and nested.shape == batch
    assert isinstance(nested["proprio"], Composite) and nested["proprio", "joint"].shape == (*batch, 3)
    assert isinstance(nested["proprio", "mode"], Categorical)


SPECS = {
    "bounded": Bounded(-2.0, 2.0, shape=(3,), dtype=torch.float32),
    "unbounded": Unbounded(shape=(5,), dtype=torch.float32),
    "unbounded int": Unbounded(shape=(2,), dtype=torch.int64),
    "uint8": Bounded(0, 255, shape=(3, 4, 4), dtype=torch.uint8),
    "categorical": Categorical(7, shape=(), dtype=torch.int64),
    "multicategorical": MultiCategorical([2, 5], dtype=torch.int64),
    "binary": Binary(n=3, shape=(3,), dtype=torch.int8),
    "composite": Composite(
        a=Bounded(-1.0, 1.0, shape=(2,), dtype=torch.float32),
        b=Composite(c=Categorical(4, shape=(), dtype=torch.int64)),
    ),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_to_space_round_trip(name):
    spec = SPECS[name]
    space = spec_to_space(spec)
    back = space_to_spec(space)
    assert back.shape == spec.shape and back.dtype == spec.dtype
    if name == "unbounded int":
        # a Gymnasium integer Box cannot be unbounded: it spans the dtype's whole range
        assert isinstance(back, Bounded)
        assert int(back.space.low.min()) == torch.iinfo(torch.int64).min
        assert int(back.space.high.max()) == torch.iinfo(torch.int64).max
    else:
        assert type(back) is type(spec)
    if isinstance(spec, Bounded):
        torch.testing.assert_close(back.space.low, spec.space.low)
        torch.testing.assert_close(back.space.high, spec.space.high)
    torch.manual_seed(0)
    for _ in range(3):
        assert spec.is_in(back.rand()) and back.is_in(spec.rand())


def test_spec_to_space_drops_batch_dims():
    spec = Bounded(-1.0, 1.0, shape=(8, 3), dtype=torch.float32)
    assert spec_to_space(spec, batch_ndim=1) == spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    assert spec_to_space(Categorical(4, shape=(8,)), batch_ndim=1) == spaces.Discrete(4)
    assert spec_to_space(MultiCategorical([2, 3], shape=(8, 2)), batch_ndim=1) == spaces.MultiDiscrete([2, 3])


def test_as_space_accepts_spaces_specs_and_mappings():
    box = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    assert as_space(box, "x") is box
    assert as_space(space_to_spec(box), "x") == box
    mixed = as_space({"a": box, "b": Categorical(3, shape=())}, "obs")
    assert isinstance(mixed, spaces.Dict) and mixed["b"] == spaces.Discrete(3)
    with pytest.raises(TypeError, match="obs"):
        as_space((2,), "obs")


def test_unsupported_spaces_are_refused_clearly():
    with pytest.raises(ValueError, match="start"):
        space_to_spec(spaces.Discrete(3, start=1))
    with pytest.raises(TypeError, match="unsupported space"):
        space_to_spec(spaces.Text(5))


# ------------------------------------------------------------------ check_env_specs on the env
@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
@pytest.mark.parametrize("act_dim", [1, 3, 7])
def test_check_env_specs_box_with_action_width(act_dim, batch):
    obs_space = gym.spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)
    env = WorldModelEnv(
        VectorModel(obs_dim=5, act_dim=act_dim), obs_space, act_space, reset_fn=reset_world_model,
        transition_fn=transition_world_model, batch_size=batch, max_episode_steps=5, seed=0,
    )
    assert env.action_spec.shape == (*batch, act_dim)
    check_env_specs(env, seed=0)
    td = env.rollout(6, break_when_any_done=False)
    assert td["action"].shape == (*batch, 6, act_dim) if batch else (6, act_dim)


@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
def test_check_env_specs_dict_observation(batch):
    obs_space, act_space = dict_spaces()
    env = WorldModelEnv(DictModel(), obs_space, act_space, reset_fn=dict_reset, transition_fn=dict_transition,
                        batch_size=batch, seed=0)
    check_env_specs(env, seed=0)
    td = env.reset()
    assert td["position"].shape == (*batch, 6) and td["step_phase"].shape == (*batch, 1)  # keys at the root


@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
def test_check_env_specs_discrete_with_action_transform(batch):
    obs_space = gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
    env = WorldModelEnv(
        DiscreteModel(num_actions=4), obs_space, gym.spaces.Discrete(4), reset_fn=reset_world_model,
        transition_fn=transition_world_model, action_transform_fn=one_hot_action, batch_size=batch, seed=0,
    )
    assert isinstance(env.action_spec, Categorical) and env.action_spec.shape == batch
    check_env_specs(env, seed=0)


@pytest.mark.parametrize("batch", [(), (2,)], ids=str)
def test_check_env_specs_uint8_images(batch):
    obs_space, act_space = image_spaces()
    env = WorldModelEnv(ImageModel(), obs_space, act_space, reset_fn=image_reset, transition_fn=image_transition,
                        batch_size=batch, seed=0)
    assert env.observation_spec["observation"].dtype == torch.uint8
    check_env_specs(env, seed=0)


def test_env_built_from_torchrl_specs_matches_env_built_from_spaces():
    obs_space = gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    kwargs = dict(reset_fn=reset_world_model, transition_fn=transition_world_model, batch_size=(2,))
    from_spaces = WorldModelEnv(VectorModel(), obs_space, act_space, **kwargs)
    from_specs = WorldModelEnv(VectorModel(), space_to_spec(obs_space), space_to_spec(act_space), **kwargs)
    assert from_specs.observation_spec == from_spaces.observation_spec
    assert from_specs.action_spec == from_spaces.action_spec
    check_env_specs(from_specs, seed=0)


def _generic_reset(seed=None, options=None):
    mask = (options or {}).get("reset_mask")
    return torch.zeros(3) if mask is None else torch.zeros(len(mask), 3)


def _generic_transition(state, action):
    a = torch.as_tensor(action).float().reshape(*state.shape[:-1], -1)
    return state + 0.01 * a.sum(-1, keepdim=True)


@pytest.mark.parametrize("batch", [(), (2,)], ids=str)
@pytest.mark.parametrize(
    "act_space",
    [spaces.MultiDiscrete([3, 4]), spaces.MultiBinary(3), spaces.Box(-1.0, 1.0, (2, 2), np.float32),
     spaces.Box(-5, 5, (2,), np.int64)],
    ids=["multidiscrete", "multibinary", "box 2x2", "box int64"],
)
def test_check_env_specs_other_action_spaces(act_space, batch):
    obs_space = spaces.Box(-10.0, 10.0, (3,), np.float32)
    env = WorldModelEnv(nn_module(), obs_space, act_space, reset_fn=_generic_reset,
                        transition_fn=_generic_transition, batch_size=batch, max_episode_steps=3)
    check_env_specs(env, seed=0)
    td = env.rollout(4, break_when_any_done=False)
    assert tuple(td["action"].shape[td.ndim:]) == act_space.shape
    for row in td["action"].reshape(-1, *act_space.shape):
        assert act_space.contains(row.numpy().astype(act_space.dtype))


def nn_module():
    return torch.nn.Linear(1, 1)


# ------------------------------------------------------------- actions as the model receives them
# Dict action spaces: with torch_actions=True each entry reaches the model as a tensor.
def test_dict_action_entries_become_tensors():
    seen = {}

    def transition(state, action):
        seen.update(action)
        return state + action["push"].float().sum() + action["mode"].float()

    env = GymWorldModelEnv(
        object(),
        gym.spaces.Box(-10, 10, (2,), np.float32),
        gym.spaces.Dict({"push": gym.spaces.Box(-1, 1, (2,), np.float32), "mode": gym.spaces.Discrete(3)}),
        reset_fn=lambda: np.zeros(2, np.float32),
        transition_fn=transition,
    )
    env.reset(seed=0)
    obs, *_ = env.step({"push": np.array([0.5, 0.25], np.float32), "mode": 2})
    assert set(seen) == {"push", "mode"}
    assert all(isinstance(v, torch.Tensor) for v in seen.values())
    np.testing.assert_allclose(obs, [2.75, 2.75])


@pytest.mark.parametrize("n", [None, 2])
def test_one_element_multidiscrete_actions_keep_their_shape(n):
    seen = []

    def transition(model, state, action):
        seen.append(tuple(action.shape))
        return {"state": state, "observation": state}

    env = make("torchrl", Scripted(), OBS, gym.spaces.MultiDiscrete([3]), n=n, transition_fn=transition)
    check_env_specs(env)
    env.rollout(2)
    assert seen[-1] == ((1,) if n is None else (n, 1))
