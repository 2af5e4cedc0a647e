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


# ------------------------------------------------------- faithful specs: samples in the space
_F32, _F64 = np.finfo(np.float32), np.finfo(np.float64)
_I64 = np.iinfo(np.int64)
FAITHFUL = {
    "f32 unbounded": spaces.Box(-np.inf, np.inf, (3,), np.float32),
    "f64 unbounded": spaces.Box(-np.inf, np.inf, (3,), np.float64),
    "f16 unbounded": spaces.Box(-np.inf, np.inf, (3,), np.float16),
    "f16 bounded": spaces.Box(-1.0, 1.0, (3,), np.float16),
    "f16 range over the dtype": spaces.Box(-60000.0, 60000.0, (3,), np.float16),
    "f16 low at the dtype max": spaces.Box(65504.0, np.inf, (3,), np.float16),
    "f32 low only": spaces.Box(0.0, np.inf, (3,), np.float32),
    "f32 high only": spaces.Box(-np.inf, 0.0, (3,), np.float32),
    "f64 low only": spaces.Box(5.0, np.inf, (2, 2), np.float64),
    "f64 low only beyond f32": spaces.Box(1e39, np.inf, (3,), np.float64),
    "f32 per-element mix": spaces.Box(
        np.array([-1.0, -np.inf, 0.0, -np.inf], np.float32), np.array([1.0, np.inf, np.inf, 3.0], np.float32)
    ),
    "f32 +-1e38": spaces.Box(-1e38, 1e38, (3,), np.float32),
    "f32 dtype limits": spaces.Box(_F32.min, _F32.max, (3,), np.float32),
    "f64 +-1e300": spaces.Box(-1e300, 1e300, (3,), np.float64),
    "f64 dtype limits": spaces.Box(_F64.min, _F64.max, (3,), np.float64),
    "f32 one point": spaces.Box(2.0, 2.0, (3,), np.float32),
    "int8 dtype limits": spaces.Box(-128, 127, (3,), np.int8),
    "uint8 dtype limits": spaces.Box(0, 255, (3,), np.uint8),
    "uint8 10..20": spaces.Box(10, 20, (3,), np.uint8),
    "int16": spaces.Box(-3, 3, (3,), np.int16),
    "int32 dtype limits": spaces.Box(np.iinfo(np.int32).min, np.iinfo(np.int32).max, (3,), np.int32),
    "int64 dtype limits": spaces.Box(_I64.min, _I64.max, (3,), np.int64),
    "int64 +-2**62": spaces.Box(-(2**62), 2**62, (3,), np.int64),
    "int64 one point": spaces.Box(7, 7, (3,), np.int64),
    "bool box": spaces.Box(0, 1, (3,), np.bool_),
    "discrete": spaces.Discrete(5),
    "discrete n=1": spaces.Discrete(1),
    "multidiscrete": spaces.MultiDiscrete([2, 3, 4]),
    "multidiscrete one element": spaces.MultiDiscrete([3]),
    "multidiscrete 2-d": spaces.MultiDiscrete([[2, 3], [4, 5]]),
    "multibinary": spaces.MultiBinary(4),
    "multibinary 3-d": spaces.MultiBinary([2, 1, 3]),
    "nested dict, half-bounded leaf": spaces.Dict(
        {"a": spaces.Box(0.0, np.inf, (2,), np.float32),
         "b": spaces.Dict({"c": spaces.Discrete(3), "d": spaces.Box(-np.inf, 1.0, (), np.float64)})}
    ),
}


def _leaves(value, space, prefix=""):
    """(path, numpy leaf, space leaf) of a sample (tensor or TensorDict) of ``space``."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            yield from _leaves(value[key], sub, f"{prefix}[{key!r}]")
    else:
        yield prefix, value.numpy(), space


def _assert_rows_in_space(sample, space, batch):
    rows = [sample] if not batch else [sample[i] for i in range(batch[0])]
    for row in rows:
        for path, leaf, sub in _leaves(row, space):
            if leaf.dtype.kind == "f":
                assert np.isfinite(leaf).all(), (path, leaf)
            assert sub.contains(np.int64(leaf) if isinstance(sub, spaces.Discrete) else leaf), (path, leaf, sub)


@pytest.mark.parametrize("batch", [(), (4,)], ids=str)
@pytest.mark.parametrize("name", list(FAITHFUL))
def test_spec_samples_lie_in_the_space_and_are_finite(name, batch):
    """rand() of the spec (as TorchRL's random rollouts, collectors' random frames and
    rand_action draw), also with an extra sample shape and after expand / to(), is in the space
    and finite; the spec maps back to the same space. Box(0, inf) and the other half-bounded or
    mixed-bound float Boxes sampled inf/NaN before (TorchRL's Bounded is uniform between its
    bounds), a range over the dtype sampled only the bounds, a 2-d MultiDiscrete was refused."""
    space = FAITHFUL[name]
    spec = space_to_spec(space, batch)
    torch.manual_seed(0)
    for _ in range(50):
        _assert_rows_in_space(spec.rand(), space, batch)
        _assert_rows_in_space(spec.rand((2,))[1], space, batch)
        _assert_rows_in_space(spec.expand(3, *spec.shape).rand()[2], space, batch)
        _assert_rows_in_space(spec.to(torch.device("cpu")).clone().rand(), space, batch)
    back = spec_to_space(spec, len(batch))
    assert _space_eq(back, space), (back, space)
    if isinstance(space, spaces.Box):
        assert np.array_equal(back.low, space.low) and np.array_equal(back.high, space.high)


def test_wide_float_range_is_sampled_across_it():
    """A range wider than the dtype can subtract (high - low overflows) is sampled across it,
    not only at its bounds (TorchRL's uniform gave inf * u, clamped to ``high``)."""
    spec = space_to_spec(FAITHFUL["f32 dtype limits"])
    torch.manual_seed(0)
    sample = torch.stack([spec.rand() for _ in range(100)])
    assert (sample.abs() < _F32.max).float().mean() > 0.9
    assert (sample < 0).any() and (sample > 0).any()


def test_half_bounded_samples_follow_gymnasium():
    """The sampler of a half-bounded box is Gymnasium's: low + Exp(1) (mean 1 above low)."""
    spec = space_to_spec(spaces.Box(5.0, np.inf, (20000,), np.float64))
    torch.manual_seed(0)
    assert abs(float(spec.rand().mean()) - 6.0) < 0.05


REFUSED = {
    "discrete with start": (spaces.Discrete(5, start=-2), ValueError, r"starts at -2"),
    "multidiscrete with start": (spaces.MultiDiscrete([2, 3], start=[1, -4]), ValueError, r"start=\[1, -4\]"),
    "box with no finite value": (spaces.Box(np.inf, np.inf, (2,), np.float32), ValueError, "no finite value"),
    "tuple": (spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), TypeError, "Tuple"),
    "text": (spaces.Text(5), TypeError, "Text"),
    "sequence": (spaces.Sequence(spaces.Discrete(2)), TypeError, "Sequence"),
    "graph": (spaces.Graph(spaces.Box(-1, 1, (2,)), spaces.Discrete(2)), TypeError, "Graph"),
    "oneof": (spaces.OneOf((spaces.Discrete(2), spaces.Discrete(3))), TypeError, "OneOf"),
}


@pytest.mark.parametrize("where", ["observation_space", "action_space"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_unfaithful_spaces_are_refused_at_construction_naming_the_space(name, where):
    """Spaces no TorchRL spec samples faithfully are refused when the env is built, the message
    naming the argument and the Dict key (MultiDiscrete with a start was mapped without it before,
    so its samples lay outside the space)."""
    space, error, match = REFUSED[name]
    with pytest.raises(error, match=match):
        space_to_spec(space)
    box = spaces.Box(-10.0, 10.0, (3,), np.float32)
    kwargs = {"observation_space": box, "action_space": box}
    kwargs[where] = spaces.Dict({"x": space})
    with pytest.raises(error, match=rf"{where}\['x'\]"):
        WorldModelEnv(nn_module(), reset_fn=_generic_reset, transition_fn=_generic_transition, **kwargs)


@pytest.mark.parametrize(
    "act_space",
    [FAITHFUL["f32 low only"], FAITHFUL["f32 per-element mix"], FAITHFUL["f32 dtype limits"],
     FAITHFUL["multidiscrete 2-d"]],
    ids=["low only", "per-element mix", "dtype limits", "multidiscrete 2-d"],
)
def test_random_rollouts_act_inside_the_space(act_space):
    """TorchRL's policy-free rollout and rand_action draw actions from the env's action spec:
    they are in the action space and finite, batched or not."""
    for batch in [(), (3,)]:
        env = WorldModelEnv(nn_module(), spaces.Box(-10.0, 10.0, (3,), np.float32), act_space,
                            reset_fn=_generic_reset, transition_fn=_bounded_transition, batch_size=batch,
                            max_episode_steps=3)
        check_env_specs(env, seed=0)
        actions = env.rollout(4, break_when_any_done=False)["action"].reshape(-1, *act_space.shape)
        actions = torch.cat([actions, env.rand_action()["action"].reshape(-1, *act_space.shape)])
        for row in actions:
            assert torch.isfinite(row.double()).all() and act_space.contains(row.numpy()), row


def _bounded_transition(state, action):
    a = torch.as_tensor(action).double().reshape(*state.shape[:-1], -1)
    return state + 0.01 * torch.tanh(a.sum(-1, keepdim=True)).to(state.dtype)


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
