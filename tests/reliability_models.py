"""Module-level toy models and a uniform driver for the reliability and error tests
(test_nan_policy, test_atomic_steps, test_action_checks, test_pickling, test_close, test_errors).

Module level on purpose: the pickling tests need the model and its hooks to be importable.

:class:`Scripted` is a tiny deterministic world model (state == observation, 3 floats per env)
whose transition can be told to misbehave: return a doctored output (``bad``) on call number
``bad_at`` (only), or raise on call number ``raise_at``. :func:`make` builds it on any public
path (``harness.make`` with this module's spaces); ``harness.Driver`` steps it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch

import harness
from harness import Driver

OBS = gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

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
    """:func:`harness.make` with this module's spaces as defaults."""
    return harness.make(path, model, obs_space, act_space, n=n, **kwargs)


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
