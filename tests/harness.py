"""The test harness: one way to build an env on any public path, one driver that steps it, and
the parity helpers that compare two paths.

Paths (the ``path`` fixture of ``conftest.py`` and :func:`on_paths` parametrize over them):

* ``"torchrl"``: the TorchRL ``WorldModelEnv`` (unbatched unless ``n`` is given);
* ``"torchrl-batched"``: the same, batched (tests pass ``n``; :func:`base_path` maps it back);
* ``"gym"``: ``GymWorldModelEnv`` (unbatched only);
* ``"vector"``: the Gymnasium vector export ``WorldModelEnv(batch_size=(n,)).to_gymnasium()``;
* ``"sb3"``: the Stable-Baselines3 VecEnv export ``to_sb3()``.

:class:`Driver` gives every path the Gymnasium calling convention: ``reset(seed)`` returns the
observation (the reset info is kept in ``driver.reset_info``), ``step(action)`` returns
``(obs, reward, terminated, truncated, info)``; on the TorchRL path an unbatched env gives Python
scalars, as the Gymnasium env does, and a batched one numpy arrays.

Parity: :func:`trace_gym`, :func:`trace_torchrl_rollout` and :func:`trace_torchrl_step` record
the same run on each path, :func:`assert_traces_equal` compares two of them exactly, and
:func:`assert_library_parity` runs the library's own check (``torchwm-rl check``'s ``parity``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import step_mdp

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.app.check import check_parity

ALL_PATHS = ["torchrl", "gym", "vector", "sb3"]  # the four public paths (the ``path`` fixture)
UNBATCHED = ["torchrl", "gym"]  # the paths an unbatched behaviour is asserted on
BATCHED = ["torchrl", "vector", "sb3"]  # ... and a batched one, with n envs


def on_paths(paths: Sequence[str]):
    """``@on_paths(UNBATCHED)``: parametrize a test's ``path`` argument over ``paths`` (the ids
    are the path names, as the ``path`` fixture's)."""
    return pytest.mark.parametrize("path", list(paths))


def is_batched(path: str) -> bool:
    """Whether ``path`` names a batched env (``"torchrl-batched"``, ``"vector"``, ``"sb3"``)."""
    return path in ("torchrl-batched", "vector", "sb3")


def base_path(path: str) -> str:
    """The path :func:`make` builds for ``path`` (``"torchrl-batched"`` is ``"torchrl"``)."""
    return "torchrl" if path == "torchrl-batched" else path


def make(path: str, model: Any, obs_space: Any, act_space: Any, n: Optional[int] = None, **kwargs):
    """The env for ``path`` in {"torchrl", "gym", "vector", "sb3"}; ``n`` = batch size (None:
    unbatched). ``autoreset_mode`` goes to the vector export, every other keyword to the
    constructor."""
    if path == "gym":
        assert n is None, "the Gymnasium env is unbatched; use 'vector'"
        return GymWorldModelEnv(model, obs_space, act_space, **kwargs)
    autoreset = kwargs.pop("autoreset_mode", None)
    env = WorldModelEnv(model, obs_space, act_space, batch_size=() if n is None else (n,), **kwargs)
    if path == "torchrl":
        return env
    if path == "vector":
        assert n is not None
        return env.to_gymnasium(**({} if autoreset is None else {"autoreset_mode": autoreset}))
    if path == "sb3":
        return env.to_sb3()
    raise ValueError(path)


def to_numpy(value: Any) -> Any:
    """Tensors (also inside dicts) as numpy arrays; anything else as is."""
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def obs_np(td, space) -> Any:
    """The observation a TensorDict carries, as numpy: ``"observation"``, or for a Dict space
    a dict of its keys, which sit at the root (nested Dict spaces give nested dicts)."""
    if isinstance(space, gym.spaces.Dict):
        return _value_np(td, space)
    return to_numpy(td.get("observation"))


def _value_np(value, space) -> Any:
    if isinstance(space, gym.spaces.Dict):
        return {k: _value_np(value.get(k), sub) for k, sub in space.spaces.items()}
    return to_numpy(value)


class Driver:
    """One interface over the paths of :func:`make` (``path`` is its path name; a
    ``"torchrl-batched"`` driver drives a batched TorchRL env).

    ``reset(seed=None)`` returns the observation and keeps the reset info in ``reset_info``
    (``{}`` on the TorchRL path; SB3's ``reset_infos``); a seed is passed only when given
    (``env.seed(seed)`` first on SB3).

    ``step(action=None)`` (``action`` defaults to the one given to the constructor) returns
    ``(obs, reward, terminated, truncated, info)``: Gymnasium's own on "gym" and "vector"; on
    "torchrl" numpy observations, Python ``float``/``bool`` reward and flags when the env is
    unbatched (as the Gymnasium env gives) and numpy arrays ``(N,)`` when batched, and an info
    with the ``nonfinite`` / ``elapsed_steps`` entries the step carries; on "sb3" ``terminated``
    and ``truncated`` derived from ``dones`` and ``infos[i]["TimeLimit.truncated"]``, and the
    info is SB3's list of infos. The TorchRL driver keeps its TensorDict in ``td`` (the
    ``step_mdp`` of the last step)."""

    def __init__(self, path: str, env: Any, action: Any = None):
        self.path, self.env, self.action = base_path(path), env, action
        self.td = None
        self.reset_info: Any = None

    def reset(self, seed: Optional[int] = None) -> Any:
        if self.path == "torchrl":
            self.td = self.env.reset(seed=seed) if seed is not None else self.env.reset()
            self.reset_info = {}
            return self.observation(self.td)
        if self.path == "sb3":
            if seed is not None:
                self.env.seed(seed)
            obs = self.env.reset()
            self.reset_info = getattr(self.env, "reset_infos", None)
            return obs
        obs, self.reset_info = self.env.reset(seed=seed)
        return obs

    def observation(self, td) -> Any:
        return obs_np(td, self.env.adapter.observation_space)

    def step(self, action: Any = None):
        action = self.action if action is None else action
        if self.path == "torchrl":
            td = self.td.clone(False)
            td.set("action", torch.as_tensor(action))
            td = self.env.step(td)
            nxt = td.get("next")
            info = {k: to_numpy(nxt.get(k)).squeeze(-1) for k in ("nonfinite", "elapsed_steps") if k in nxt.keys()}
            reward, terminated, truncated = (to_numpy(nxt.get(k)).squeeze(-1) for k in ("reward", "terminated", "truncated"))
            if reward.ndim == 0:  # unbatched: Python scalars, as the Gymnasium env gives
                reward, terminated, truncated = float(reward), bool(terminated), bool(truncated)
            out = (self.observation(nxt), reward, terminated, truncated, info)
            self.td = step_mdp(td)
            return out
        if self.path == "sb3":
            self.env.step_async(np.asarray(action))
            obs, reward, dones, infos = self.env.step_wait()
            truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
            return obs, reward, dones & ~truncated, truncated, infos
        return self.env.step(action)


# ------------------------------------------------------------------------------------- parity


def sample_actions(space, n: int, seed: int = 0) -> list:
    """``n`` actions sampled from ``space`` seeded with ``seed``."""
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def trace_gym(env, actions, seed):
    """Step a Gymnasium env: [(obs_before, next_obs, reward, terminated, truncated)], resetting
    (without a seed) after an end, as a user would."""
    obs, _ = env.reset(seed=seed)
    trace = []
    for action in actions:
        nxt, reward, terminated, truncated, _ = env.step(action)
        trace.append((obs, nxt, reward, terminated, truncated))
        obs = env.reset()[0] if terminated or truncated else nxt
    return trace


def trace_torchrl_rollout(env, actions, seed):
    """The same trace from an unbatched TorchRL env's ``rollout`` (which auto-resets)."""
    env.set_seed(seed)
    it = iter(actions)

    def policy(td):
        td["action"] = torch.as_tensor(np.asarray(next(it)))
        return td

    td = env.rollout(len(actions), policy, break_when_any_done=False)
    space = env.adapter.observation_space
    return [
        (
            obs_np(td[t], space),
            obs_np(td[t]["next"], space),
            float(td[t]["next", "reward"].detach()),
            bool(td[t]["next", "terminated"]),
            bool(td[t]["next", "truncated"]),
        )
        for t in range(len(actions))
    ]


def trace_torchrl_step(env, actions, seed):
    """The same trace from a hand-written loop with ``env.step`` and ``env.reset(seed=...)``."""
    td = env.reset(seed=seed)
    space = env.adapter.observation_space
    trace = []
    for action in actions:
        td["action"] = torch.as_tensor(np.asarray(action))
        td = env.step(td)
        nxt = td["next"]
        trace.append((obs_np(td, space), obs_np(nxt, space), float(nxt["reward"].detach()),
                      bool(nxt["terminated"]), bool(nxt["truncated"])))
        td = env.reset() if bool(nxt["done"]) else step_mdp(td)
    return trace


def assert_obs_equal(a, b):
    """Two observations (arrays, or dicts of arrays) are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
        np.testing.assert_array_equal(a, b)


def assert_traces_equal(a, b):
    """Two traces (:func:`trace_gym` & co.) are exactly equal, step by step."""
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        assert_obs_equal(x[0], y[0])
        assert_obs_equal(x[1], y[1])
        assert x[2:] == y[2:], (t, x[2:], y[2:])


def assert_library_parity(env, steps: int, seed: int):
    """The library's own parity check (``torchwm_rl.app.check.check_parity``, the ``parity``
    check of ``torchwm-rl check``) passes on the TorchRL env ``env``; returns its result."""
    result = check_parity(env, steps=steps, seed=seed)
    assert result.status == "PASS", result.detail
    return result


def assert_same_info(ours, ref, where):
    """A vector info equals a reference vector info: same keys (nested), and each entry an
    array of the same shape, dtype and values."""
    assert set(ours) == set(ref), (where, sorted(ours), sorted(ref))
    for key, value in ref.items():
        if isinstance(value, dict):
            assert_same_info(ours[key], value, (where, key))
        else:
            mine = ours[key]
            assert isinstance(mine, np.ndarray) and mine.shape == value.shape and mine.dtype == value.dtype, (where, key)
            assert all(np.array_equal(a, b) for a, b in zip(mine, value)), (where, key, mine, value)


def export_trajectory(venv, sb3: bool, n: int, act_dim: int, steps: int = 12) -> list:
    """Reset a batched export (vector or SB3) and step it ``steps`` times with seeded uniform
    actions ``(n, act_dim)``: the flat list of everything it returned (SB3: obs, rewards, dones;
    vector: obs, reward, terminated, truncated), for comparing two exports."""
    out = [venv.reset() if sb3 else venv.reset()[0]]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32)
        step = venv.step(actions)
        out.extend([step[0], step[1], step[2]] if sb3 else [step[0], step[1], step[2], step[3]])
    return out
