"""Property-based tests (hypothesis) over generated spaces and adapter return forms.

1. spaces <-> specs: every generated space (Box with 0-3 dims and dtype float32/float64/uint8/
   int64, bounded, unbounded or half-bounded; Discrete; MultiDiscrete; MultiBinary; nested Dict;
   part 1 also float16/int8/int32 Boxes, high-only, per-element mixed and dtype-wide bounds, and
   2-d MultiDiscrete) survives space -> spec -> space, and spec -> space -> spec, with and
   without a batch dim; samples of one side are members of the other, and every random sample of
   the spec (batched, with a sample shape, expanded) lies in the space and is finite.
2. both paths agree: for a generated observation space, action space and adapter return form
   (reset form, transition form, reward/flag/observation container), the TorchRL env and the
   Gymnasium env (unbatched) / Gymnasium vector and SB3 VecEnv exports (batched) give the same
   observations, rewards and flags over a few steps.

Example counts are bounded (``settings(max_examples=..., deadline=None)``) so the file runs in
a few seconds to tens of seconds on one core in CI.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDictBase

from harness import Driver, assert_library_parity
from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.spaces import space_to_spec, spec_to_space

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# ---------------------------------------------------------------------------------- spaces

DTYPES = [np.float32, np.float64, np.uint8, np.int64]
KEYS = ["a", "b", "c", "pos", "img"]  # no clash with TorchRL keys ("action", "done", ...)


WIDE_DTYPES = [np.float16, np.int8, np.int32]  # part 1 only
# part 1 only; not a float Box spanning the dtype's range: Gymnasium's own Box.sample overflows
# there (test_spaces covers its spec)
WIDE_KINDS = ["high_only", "mixed_inf", "huge"]


@st.composite
def boxes(draw, float_only: bool = False, wide: bool = False):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES[:2] if float_only else DTYPES + (WIDE_DTYPES if wide else [])))
    if np.issubdtype(dtype, np.floating):
        kinds = ["unbounded", "bounded", "low_only", "per_element"] + (WIDE_KINDS if wide else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "high_only":
            return gym.spaces.Box(-np.inf, -2.5, shape=shape, dtype=dtype)
        if kind == "mixed_inf":  # per element: bounded, low only, high only, unbounded, in turn
            size = int(np.prod(shape))
            low = np.array([-1.0, 0.0, -np.inf, -np.inf] * size, dtype=dtype)[:size].reshape(shape)
            high = np.array([1.0, np.inf, 0.0, np.inf] * size, dtype=dtype)[:size].reshape(shape)
            return gym.spaces.Box(low, high, shape=shape, dtype=dtype)
        if kind == "huge":  # far beyond float32 / float16 for a float64 Box: low only
            big = float(np.finfo(dtype).max) / 4
            return gym.spaces.Box(big, np.inf, shape=shape, dtype=dtype)
        if kind == "unbounded":
            return gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
        if kind == "low_only":
            return gym.spaces.Box(0.0, np.inf, shape=shape, dtype=dtype)
        if kind == "per_element":
            low = -np.arange(1, int(np.prod(shape)) + 1, dtype=dtype).reshape(shape)
            return gym.spaces.Box(low, -low, shape=shape, dtype=dtype)
        low = draw(st.sampled_from([-1.0, 0.0, -10.5]))
        return gym.spaces.Box(low, low + draw(st.sampled_from([0.5, 2.0, 100.0])), shape=shape, dtype=dtype)
    if dtype == np.uint8:
        low, high = draw(st.sampled_from([(0, 255), (10, 20)]))
    elif wide and dtype != np.int64:
        info = np.iinfo(dtype)
        low, high = draw(st.sampled_from([(int(info.min), int(info.max)), (-3, 3)]))
    elif wide:
        low, high = draw(st.sampled_from([(-5, 5), (0, 1000), (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))]))
    else:
        low, high = draw(st.sampled_from([(-5, 5), (0, 1000)]))
    return gym.spaces.Box(low, high, shape=shape, dtype=dtype)


def leaf_spaces(float_only: bool = False, wide: bool = False):
    if float_only:
        return boxes(float_only=True)
    multi_discrete = st.lists(st.integers(1, 5), min_size=1, max_size=3)
    if wide:  # 2-d nvec too
        multi_discrete = st.one_of(multi_discrete, st.lists(st.lists(st.integers(1, 5), min_size=2, max_size=2),
                                                            min_size=1, max_size=3))
    return st.one_of(
        boxes(wide=wide),
        st.integers(1, 6).map(gym.spaces.Discrete),
        multi_discrete.map(lambda n: gym.spaces.MultiDiscrete(n)),
        st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 3), st.integers(1, 3)).map(list)).map(
            gym.spaces.MultiBinary
        ),
    )


def dict_of(children):
    return st.dictionaries(st.sampled_from(KEYS), children, min_size=1, max_size=3).map(gym.spaces.Dict)


def any_spaces(float_only: bool = False, wide: bool = False):
    return st.recursive(leaf_spaces(float_only, wide), dict_of, max_leaves=4)


def _equal_spaces(a: gym.spaces.Space, b: gym.spaces.Space) -> bool:
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        # Gymnasium compares bounds with allclose; require them exactly (inf included)
        return a == b and np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    if isinstance(a, gym.spaces.Dict) and isinstance(b, gym.spaces.Dict):
        return a.spaces.keys() == b.spaces.keys() and all(_equal_spaces(a[k], b[k]) for k in a.spaces)
    return type(a) is type(b) and a == b


def _batched_sample(space: gym.spaces.Space, n: int | None) -> object:
    if n is None:
        return space.sample()
    samples = [space.sample() for _ in range(n)]
    return _stack(samples)


def _stack(samples: list) -> object:
    if isinstance(samples[0], dict):
        return {k: _stack([s[k] for s in samples]) for k in samples[0]}
    return np.stack([np.asarray(s) for s in samples])


def _tensors(value, dtype_of):
    if isinstance(value, dict):
        return {k: _tensors(v, dtype_of[k]) for k, v in value.items()}
    return torch.as_tensor(np.asarray(value, dtype=dtype_of.dtype))


@settings(max_examples=200, **SETTINGS)
@given(space=any_spaces(wide=True), batch=st.sampled_from([(), (1,), (3,)]))
def test_space_spec_round_trip(space, batch):
    spec = space_to_spec(space, batch)
    assert tuple(spec.shape[: len(batch)]) == batch
    back = spec_to_space(spec, len(batch))
    assert _equal_spaces(space, back), (space, back)
    assert space_to_spec(back, batch) == spec
    # random actions (TorchRL's rollout without a policy) have the spec's shape; TorchRL's
    # default MultiCategorical squeezed a 1-element sample to shape ()
    assert _shapes(spec.rand()) == _shapes(spec.zero())
    # a sample of the space is in the spec, and a sample of the spec is in the space
    space.seed(0)
    if not batch:
        assert spec.is_in(_tensors(space.sample(), space) if isinstance(space, gym.spaces.Dict) else
                          torch.as_tensor(np.asarray(space.sample(), dtype=space.dtype)))
        sample = spec.rand()
        sample = sample.to_dict() if isinstance(sample, TensorDictBase) else sample
        assert space.contains(_to_numpy(sample, space)), (space, sample)
    # every random sample of the spec, one env at a time, is in the space and finite (TorchRL's
    # random rollouts, collectors' random frames, rand_action and planners draw these)
    torch.manual_seed(0)
    for draw_ in (spec.rand(), spec.rand((2,))[1], spec.expand(2, *spec.shape).rand()[0]):
        for row in ([draw_] if not batch else draw_.unbind(0)):
            _assert_in_space_and_finite(row, space)


def _assert_in_space_and_finite(value, space):
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            _assert_in_space_and_finite(value[key], sub)
        return
    if value.is_floating_point():
        assert torch.isfinite(value).all(), (space, value)
    array = value.numpy()
    assert space.contains(np.int64(array) if isinstance(space, gym.spaces.Discrete) else array), (space, value)


def _shapes(value):
    if isinstance(value, TensorDictBase):
        return {k: _shapes(v) for k, v in value.items()}
    return tuple(value.shape)


def _to_numpy(value, space):
    if isinstance(space, gym.spaces.Dict):
        return {k: _to_numpy(value[k], sub) for k, sub in space.spaces.items()}
    array = value.numpy().astype(space.dtype)
    return int(array) if isinstance(space, gym.spaces.Discrete) else array


# ------------------------------------------------------------------ adapter return forms

# forms that return a model state, and forms that do not (the observation is then the state):
# a model returns its state in one structure throughout, so the two are not mixed
RESET_FORMS = {"state": ["state_obs", "state_obs_info", "mapping"], "no_state": ["obs", "obs_info"]}
# (a (state, obs) 2-tuple is refused as ambiguous: "state_obs" returns that pair as a mapping;
# "gymnasium_model_state" is a Gymnasium 5-tuple carrying the state in info["model_state"])
TRANSITION_FORMS = {
    "state": ["mapping", "state_obs_reward", "state_obs", "six", "gymnasium_model_state"],
    "no_state": ["gymnasium", "gym4", "bare"],
}
CONTAINERS = ["numpy", "torch", "list"]


class FormModel:
    """A world model whose outputs are drawn from the observation space (deterministic under
    the reset seed) and returned in the generated form. ``k`` counts steps since reset."""

    def __init__(self, obs_space, n, reset_form, transition_form, container, scalar_form):
        self.obs_space, self.n = obs_space, n
        self.reset_form, self.transition_form = reset_form, transition_form
        self.container, self.scalar_form = container, scalar_form
        self.k, self.seed = 0, 0

    def _obs(self):
        self.obs_space.seed(1000 * self.seed + self.k)
        return self._wrap(_batched_sample(self.obs_space, self.n))

    def _wrap(self, value):
        if isinstance(value, dict):
            return {k: self._wrap(v) for k, v in value.items()}
        if self.container == "torch":
            return torch.as_tensor(np.asarray(value))
        if self.container == "list":
            array = np.asarray(value)
            return array.tolist() if array.dtype.kind == "f" else array  # int lists would lose uint8
        return value

    def _state(self):
        shape = () if self.n is None else (self.n,)
        return torch.full(shape, float(self.k))

    def _scalar(self, values: np.ndarray, flag: bool):
        """A reward (float) or flag (bool) array of shape batch, in the generated form."""
        form = self.scalar_form
        if self.n is None:
            value = values.item()
            return {"python": value, "numpy": values, "torch": torch.as_tensor(values)}.get(form, value)
        if form == "torch":
            return torch.as_tensor(values)
        if form == "column":
            return torch.as_tensor(values).unsqueeze(-1)
        if form == "python":
            return values.tolist()
        return values

    def reset(self, seed=None, options=None):
        self.k, self.seed = 0, 0 if seed is None else int(seed)
        obs, state, info = self._obs(), self._state(), {"source": "generated"}
        return {
            "obs": lambda: obs,
            "obs_info": lambda: (obs, info),
            "state_obs": lambda: (state, obs),
            "state_obs_info": lambda: (state, obs, info),
            "mapping": lambda: {"state": state, "observation": obs, "info": info},
        }[self.reset_form]()

    def step(self, state, action):
        self.k += 1
        obs, nxt = self._obs(), self._state()
        rng = np.random.default_rng(1000 * self.seed + self.k)
        shape = () if self.n is None else (self.n,)
        action_sum = np.asarray(torch.as_tensor(action).double().reshape(*shape, -1).sum(-1))
        reward = self._scalar((rng.standard_normal(shape) + action_sum).astype(np.float32), False)
        terminated = self._scalar(rng.random(shape) < 0.15, True)
        truncated = self._scalar(rng.random(shape) < 0.15, True)
        info = {"k": self.k}
        form = self.transition_form
        if form == "mapping":
            return {"next_state": nxt, "obs": obs, "reward": reward, "terminated": terminated, "truncated": truncated}
        if form == "gymnasium":
            return obs, reward, terminated, truncated, info
        if form == "gym4":
            return obs, reward, terminated, {**info, "TimeLimit.truncated": truncated}
        if form == "state_obs_reward":
            return nxt, obs, reward
        if form == "state_obs":
            return {"state": nxt, "observation": obs}
        if form == "gymnasium_model_state":
            return obs, reward, terminated, truncated, {**info, "model_state": nxt}
        if form == "six":
            return nxt, obs, reward, terminated, truncated, info
        return obs


ACTION_SPACES = st.sampled_from(
    [
        gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        gym.spaces.Discrete(3),
        gym.spaces.MultiDiscrete([2, 3]),
        gym.spaces.MultiBinary(2),
    ]
)


@st.composite
def cases(draw, batched: bool):
    return dict(
        obs_space=draw(any_spaces()),
        act_space=draw(ACTION_SPACES),
        n=draw(st.sampled_from([1, 3])) if batched else None,
        **draw(st.sampled_from(["state", "no_state"]).flatmap(lambda kind: st.fixed_dictionaries(
            {"reset_form": st.sampled_from(RESET_FORMS[kind]), "transition_form": st.sampled_from(TRANSITION_FORMS[kind])}
        ))),
        container=draw(st.sampled_from(CONTAINERS)),
        scalar_form=draw(st.sampled_from(["python", "numpy", "torch", "column"] if batched else ["python", "numpy", "torch"])),
    )


def _model(case):
    return FormModel(case["obs_space"], case["n"], case["reset_form"], case["transition_form"],
                     case["container"], case["scalar_form"])


def _assert_obs_equal(a, b, space):
    if isinstance(space, gym.spaces.Dict):
        for k, sub in space.spaces.items():
            _assert_obs_equal(a[k], b[k], sub)
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == space.dtype, (a.dtype, b.dtype, space.dtype)
    np.testing.assert_array_equal(a, b)


def _actions(space, n, steps):
    space.seed(123)
    return [_batched_sample(space, n) for _ in range(steps)]


STEPS = 4


def _torchrl_run(case, actions):
    env = WorldModelEnv(_model(case), case["obs_space"], case["act_space"],
                        batch_size=() if case["n"] is None else (case["n"],))
    driver = Driver("torchrl", env)
    out = [(driver.reset(seed=7),)]
    for action in actions:
        out.append(driver.step(np.asarray(action))[:4])  # (obs, reward, terminated, truncated)
    return out


@settings(max_examples=100, **SETTINGS)
@given(case=cases(batched=False))
def test_torchrl_and_gymnasium_paths_agree_unbatched(case):
    _check_unbatched(case)


def _check_unbatched(case):
    actions = _actions(case["act_space"], None, STEPS)
    expected = _torchrl_run(case, actions)
    env = GymWorldModelEnv(_model(case), case["obs_space"], case["act_space"])
    obs, info = env.reset(seed=7)
    _assert_obs_equal(obs, expected[0][0], case["obs_space"])
    # the reset info is the reset hook's info exactly (nothing added), as in TorchWM
    has_info = case["reset_form"] in ("obs_info", "state_obs_info", "mapping")
    assert info == ({"source": "generated"} if has_info else {})
    for action, (exp_obs, exp_reward, exp_term, exp_trunc) in zip(actions, expected[1:]):
        obs, reward, terminated, truncated, info = env.step(action)
        _assert_obs_equal(obs, exp_obs, case["obs_space"])
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
        assert np.float32(reward) == exp_reward and terminated == exp_term and truncated == exp_trunc
    # and the library's own parity check (``torchwm-rl check``) passes on the same case
    assert_library_parity(WorldModelEnv(_model(case), case["obs_space"], case["act_space"]), steps=STEPS, seed=7)


@settings(max_examples=80, **SETTINGS)
@given(case=cases(batched=True))
def test_torchrl_and_vector_paths_agree_batched(case):
    n = case["n"]
    actions = _actions(case["act_space"], n, STEPS)
    expected = _torchrl_run(case, actions)
    envs = WorldModelEnv(_model(case), case["obs_space"], case["act_space"], batch_size=(n,)).to_gymnasium()
    obs, _ = envs.reset(seed=7)
    _assert_obs_equal(obs, expected[0][0], case["obs_space"])
    for action, (exp_obs, exp_reward, exp_term, exp_trunc) in zip(actions, expected[1:]):
        obs, reward, terminated, truncated, _ = envs.step(action)
        _assert_obs_equal(obs, exp_obs, case["obs_space"])
        np.testing.assert_array_equal(reward.astype(np.float32), exp_reward)
        np.testing.assert_array_equal(terminated, exp_term)
        np.testing.assert_array_equal(truncated, exp_trunc)
        if (terminated | truncated).any():
            break  # the vector env autoresets on the next step; the TorchRL run above does not

    # the SB3 VecEnv export: same numbers, SB3's forms (float32 rewards, dones, terminal obs)
    venv = WorldModelEnv(_model(case), case["obs_space"], case["act_space"], batch_size=(n,)).to_sb3()
    venv.seed(7)
    _assert_obs_equal(venv.reset(), expected[0][0], case["obs_space"])
    for action, (exp_obs, exp_reward, exp_term, exp_trunc) in zip(actions, expected[1:]):
        venv.step_async(action)
        obs, reward, dones, infos = venv.step_wait()
        assert reward.dtype == np.float32
        np.testing.assert_array_equal(reward, exp_reward)
        np.testing.assert_array_equal(dones, exp_term | exp_trunc)
        for i in range(n):
            final = infos[i]["terminal_observation"] if dones[i] else _row(obs, i)
            _assert_obs_equal(final, _row(exp_obs, i), case["obs_space"])
            if dones[i]:
                assert infos[i]["TimeLimit.truncated"] == bool(exp_trunc[i] and not exp_term[i])
        if dones.any():
            break  # SB3 resets finished envs within the step; the TorchRL run above does not
    # and the library's own parity check (``torchwm-rl check``) passes on the same case, nested
    # Dict observations included
    assert_library_parity(WorldModelEnv(_model(case), case["obs_space"], case["act_space"], batch_size=(n,)),
                          steps=STEPS, seed=7)


def _row(obs, i):
    return {k: _row(v, i) for k, v in obs.items()} if isinstance(obs, dict) else obs[i]


@pytest.mark.parametrize("container", CONTAINERS)
def test_form_model_covers_a_dict_image_case(container):
    """One fixed, readable case of the generated family (keeps a failure easy to debug)."""
    space = gym.spaces.Dict({"img": gym.spaces.Box(0, 255, (3, 2, 2), np.uint8),
                             "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float64)})
    case = dict(obs_space=space, act_space=gym.spaces.Discrete(3), n=None, reset_form="state_obs",
                transition_form="six", container=container, scalar_form="torch")
    _check_unbatched(case)
