"""Module-level toy models and a uniform driver for the reliability and error tests
(test_nan_policy, test_atomic_steps, test_action_checks, test_pickling, test_close, test_errors).

Module level on purpose: the pickling tests need the model and its hooks to be importable.

:class:`Scripted` is a tiny deterministic world model (state == observation, 3 floats per env)
whose transition can be told to misbehave: return a doctored output (``bad``) on call number
``bad_at`` (only), or raise on call number ``raise_at``. :class:`Driver` steps any of the four
public paths (TorchRL env, Gymnasium env, Gymnasium vector export, SB3 VecEnv) with one
interface returning numpy ``(obs, reward, terminated, truncated, info)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from torchrl.envs.utils import step_mdp

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

OBS = gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

UNBATCHED = ["torchrl", "gym"]  # the paths (see :func:`make`) an unbatched behaviour is asserted on
BATCHED = ["torchrl", "vector", "sb3"]  # ... and a batched one, with N envs
N = 4


class ModelFailure(RuntimeError):
    """What :class:`Scripted` raises on purpose."""


def _batch(options) -> Optional[int]:
    mask = (options or {}).get("reset_mask")
    return None if mask is None else int(mask.shape[0])


class Scripted:
    """``state' = 0.9 state + 0.1 action``; reward = sum(state'); never terminates.

    The reset draws from a generator seeded by ``seed`` (0 when None), so seeded runs repeat.
    """

    def __init__(
        self,
        bad: Optional[Callable[[dict], dict]] = None,
        bad_at: int = 1,
        raise_at: Optional[int] = None,
        reset_raise_at: Optional[int] = None,
    ):
        self.bad, self.bad_at = bad, bad_at
        self.raise_at, self.reset_raise_at = raise_at, reset_raise_at
        self.calls = 0
        self.reset_calls = 0

    def reset(self, seed=None, options=None):
        self.reset_calls += 1
        if self.reset_calls == self.reset_raise_at:
            raise ModelFailure(f"reset call {self.reset_calls} failed on purpose")
        n = _batch(options)
        g = torch.Generator().manual_seed(0 if seed is None else int(seed))
        state = torch.rand((3,) if n is None else (n, 3), generator=g)
        return {"state": state, "observation": state.clone()}

    def step(self, state, action):
        self.calls += 1
        if self.calls == self.raise_at:
            raise ModelFailure(f"step call {self.calls} failed on purpose")
        nxt = 0.9 * state + 0.1 * torch.as_tensor(action, dtype=torch.float32)
        out = {"state": nxt, "observation": nxt.clone(), "reward": nxt.sum(-1), "terminated": nxt[..., 0] > 50}
        if self.bad is not None and self.calls == self.bad_at:
            out = self.bad(out)
        return out


class OpaqueState:
    """A latent state that is not a tensor: the TorchRL env must hold it itself."""

    def __init__(self, value: torch.Tensor):
        self.value = value


def opaque_reset(model, seed=None, options=None):
    state = OpaqueState(torch.full((3,), 0.5 if seed is None else float(seed) / 10))
    return state, state.value.clone()


def opaque_transition(model, state, action):
    model.calls += 1
    if model.calls == model.raise_at:
        raise ModelFailure(f"step call {model.calls} failed on purpose")
    nxt = OpaqueState(0.9 * state.value + 0.1 * torch.as_tensor(action, dtype=torch.float32))
    return nxt, nxt.value.clone(), float(nxt.value.sum())


def add_one_reward(model, next_state):
    """A module-level reward hook (for pickling): TorchWM's ``reward_fn(model, next_state)``."""
    return next_state.sum(-1) + 1.0


def make(path: str, model: Any, obs_space=OBS, act_space=ACT, n: Optional[int] = None, **kwargs):
    """The env for ``path`` in {"torchrl", "gym", "vector", "sb3"}; ``n`` = batch size."""
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


def _np(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _np(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


class Driver:
    """One interface over the four paths. ``step`` returns numpy
    ``(obs, reward, terminated, truncated, info)``; for SB3, ``terminated``/``truncated`` are
    derived from ``dones`` and ``infos[i]["TimeLimit.truncated"]`` and ``info`` is the list."""

    def __init__(self, path: str, env: Any):
        self.path, self.env = path, env
        self.td = None

    def reset(self, seed: Optional[int] = None) -> Any:
        if self.path == "torchrl":
            self.td = self.env.reset(seed=seed) if seed is not None else self.env.reset()
            return self.observation(self.td)
        if self.path == "sb3":
            if seed is not None:
                self.env.seed(seed)
            return self.env.reset()
        return self.env.reset(seed=seed)[0]

    def observation(self, td) -> Any:
        space = self.env.adapter.observation_space
        if isinstance(space, gym.spaces.Dict):
            return {k: _np(td.get(k)) for k in space.spaces}
        return _np(td.get("observation"))

    def step(self, action: Any):
        if self.path == "torchrl":
            td = self.td.clone(False)
            td.set("action", torch.as_tensor(action))
            td = self.env.step(td)
            nxt = td.get("next")
            info = {k: _np(nxt.get(k)).squeeze(-1) for k in ("nonfinite", "elapsed_steps") if k in nxt.keys()}
            out = (
                self.observation(nxt),
                _np(nxt.get("reward")).squeeze(-1),
                _np(nxt.get("terminated")).squeeze(-1),
                _np(nxt.get("truncated")).squeeze(-1),
                info,
            )
            self.td = step_mdp(td)
            return out
        if self.path == "sb3":
            self.env.step_async(np.asarray(action))
            obs, reward, dones, infos = self.env.step_wait()
            truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
            return obs, reward, dones & ~truncated, truncated, infos
        return self.env.step(action)


# ------------------------------------------------------------------------------------------------
# helpers shared by test_errors.py and the reliability tests


def action_for(n: Optional[int] = None, value: float = 0.5) -> np.ndarray:
    """A valid Box(-1, 1, (3,)) action for an unbatched env (``n`` None) or ``n`` envs."""
    return np.full((3,) if n is None else (n, 3), value, dtype=np.float32)


def with_value(key: str, value: Any) -> Callable[[dict], dict]:
    """A ``Scripted(bad=...)`` doctoring that sets ``key`` of the step output to ``value``
    (or to ``value(out)`` when callable)."""

    def bad(out):
        out = dict(out)
        out[key] = value(out) if callable(value) else value
        return out

    return bad


def scripted_via_hook(model, state, action):
    """A ``transition_fn`` that calls :meth:`Scripted.step`: the same output, but the hook the
    adapter names in its errors is ``transition_fn`` instead of ``model.step``."""
    return model.step(state, action)


SOURCES = ["model.step", "transition_fn"]


def source_kwargs(source: str) -> dict:
    """Keyword arguments making ``source`` (one of :data:`SOURCES`) the transition hook."""
    return {} if source == "model.step" else {"transition_fn": scripted_via_hook}


def first_step(path: str, bad: Optional[Callable[[dict], Any]], n: Optional[int] = None, obs_space=OBS,
               model: Optional[Scripted] = None, **kwargs):
    """Build the env on ``path`` with a model whose first transition output is ``bad(out)``,
    reset it and take one step (which should raise)."""
    model = Scripted(bad=bad) if model is None else model
    driver = Driver(path, make(path, model, obs_space, ACT, n=n, **kwargs))
    driver.reset(seed=0)
    return driver.step(action_for(n))


def first_reset(path: str, returned: Any, n: Optional[int] = None, obs_space=OBS, model: Any = None, **kwargs):
    """Build the env on ``path`` with a ``reset_fn`` that returns ``returned`` and reset it
    (the TorchRL env, and so the exports built on it, already probe the reset when built)."""

    def reset_fn(model, seed=None, options=None):
        return returned

    driver = Driver(path, make(path, Scripted() if model is None else model, obs_space, ACT, n=n,
                               reset_fn=reset_fn, **kwargs))
    return driver.reset(seed=0)
