"""The adversarial battery, kept closed (issue 13): malformed hook outputs on every path.

Hypothesis draws a hook (reset, transition, reward, terminal), a return form, a field, a way to
corrupt it and a path (TorchRL unbatched/batched, Gymnasium, vector, SB3). The hook returns the
corrupted value once. Each case must either give the right result or raise ``ValueError`` /
``TypeError`` whose message names the hook and the field; either way the env must then keep
stepping exactly as an env that never saw the bad value.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Driver, base_path, is_batched, make, on_paths

OBS = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 3
PATHS = ["torchrl", "torchrl-batched", "gym", "vector", "sb3"]

# corruption name -> (function of the good value and the batch, expected: "error" or "ok")
CORRUPTIONS = {
    "nan": (lambda v, b: torch.full_like(torch.as_tensor(v, dtype=torch.float32), float("nan")), "error"),
    "inf": (lambda v, b: torch.full_like(torch.as_tensor(v, dtype=torch.float32), float("inf")), "error"),
    "wrong shape": (lambda v, b: torch.zeros(*b, 7), "error"),
    "extra batch dim": (lambda v, b: torch.as_tensor(v).unsqueeze(0).repeat(2, *[1] * torch.as_tensor(v).ndim), "error"),
    "string": (lambda v, b: "not a number", "error"),
    "none": (lambda v, b: None, "error-or-default"),
    "complex": (lambda v, b: torch.as_tensor(v, dtype=torch.float32).to(torch.complex64), "error"),
    "object list": (lambda v, b: [object()] * (b[0] if b else 1), "error"),
    "float64 same values": (lambda v, b: torch.as_tensor(v).double(), "ok"),
    "numpy same values": (lambda v, b: np.asarray(torch.as_tensor(v)), "ok"),
    "python scalar": (lambda v, b: float(torch.as_tensor(v).reshape(-1)[0]), "scalar"),
    "int 2 as flag": (lambda v, b: torch.full(b, 2, dtype=torch.int64), "flag-error"),
    "float flag": (lambda v, b: torch.full(b, 1.0), "flag-error"),
}
FIELDS = {
    "transition_fn": ["observation", "reward", "terminated"],
    "reward_fn": ["reward"],
    "terminal_fn": ["terminated"],
    "reset_fn": ["observation"],
}
FORMS = ["mapping", "gymnasium", "compact", "six"]


class Case:
    """A model that returns one corrupted value from ``hook`` on its first call after the first
    reset, and valid values everywhere else."""

    def __init__(self, hook: str, field: str, corruption: str, form: str, batch: tuple):
        self.hook, self.field, self.corruption, self.form, self.batch = hook, field, corruption, form, batch
        self.armed = False  # armed after the env's own first reset(s)
        self.fired = False

    def _maybe(self, hook: str, field: str, value):
        if self.armed and not self.fired and hook == self.hook and field == self.field:
            self.fired = True
            return CORRUPTIONS[self.corruption][0](value, self.batch)
        return value

    def reset_fn(self, model, seed=None, options=None, batch_size=()):
        obs = torch.full((*batch_size, 2), 0.5)
        return {"state": obs.clone(), "observation": self._maybe("reset_fn", "observation", obs)}

    def transition_fn(self, model, state, action):
        nxt = state + 0.1 * torch.as_tensor(action, dtype=torch.float32)
        obs = self._maybe("transition_fn", "observation", nxt.clone())
        if self.hook in ("reward_fn", "terminal_fn"):
            out = {"state": nxt, "observation": obs}
            if self.hook == "terminal_fn":
                out["reward"] = nxt.sum(-1)
            else:
                out["terminated"] = nxt[..., 0] > 5.0
            return out
        reward = self._maybe("transition_fn", "reward", nxt.sum(-1))
        terminated = self._maybe("transition_fn", "terminated", nxt[..., 0] > 5.0)
        truncated = torch.zeros_like(nxt[..., 0], dtype=torch.bool)
        if self.form == "gymnasium":
            return obs, reward, terminated, truncated, {"model_state": nxt}
        if self.form == "compact":
            return {"state": nxt, "observation": obs, "reward": reward, "terminated": terminated}
        if self.form == "six":
            return nxt, obs, reward, terminated, truncated, {}
        return {"state": nxt, "observation": obs, "reward": reward, "terminated": terminated}

    def reward_fn(self, model, next_state):
        return self._maybe("reward_fn", "reward", next_state.sum(-1))

    def terminal_fn(self, model, next_state):
        return self._maybe("terminal_fn", "terminated", next_state[..., 0] > 5.0)


def _hooks(case: Case) -> dict:
    hooks = dict(reset_fn=case.reset_fn, transition_fn=case.transition_fn)
    if case.hook == "reward_fn":
        hooks["reward_fn"] = case.reward_fn
    if case.hook == "terminal_fn":
        hooks["terminal_fn"] = case.terminal_fn
    return hooks


def _driver(path: str, case: Case) -> Driver:
    """The harness driver for ``case`` on ``path`` (its hooks, ``N`` envs when batched); its
    default action is 0.5 everywhere."""
    n = N if is_batched(path) else None
    env = make(base_path(path), case, OBS, ACT, n=n, **_hooks(case))
    return Driver(path, env, action=np.full((2,) if n is None else (N, 2), 0.5, np.float32))


def _reset(driver: Driver, path: str):
    """The battery's reset: seeded (0) on the Gymnasium env and the vector export, unseeded on
    the TorchRL env and SB3."""
    return driver.reset(seed=0 if path in ("gym", "vector") else None)


def _step(driver: Driver):
    """(obs, reward, terminated) of one step with the default action."""
    return driver.step()[:3]


def _run(case: Case, path: str):
    """(outcome, error message, the two steps after the bad value)."""
    driver = _driver(path, case)
    case.armed = True
    error, result = None, None
    try:
        if case.hook == "reset_fn":
            result = _reset(driver, path)
        else:
            _reset(driver, path)
            result = _step(driver)
    except (ValueError, TypeError) as err:
        error = str(err)
    # whatever happened, the env must go on as a clean one: reset, then two steps
    first = _reset(driver, path)
    after = [_step(driver), _step(driver)]
    return error, result, first, after


def _clean(path: str):
    case = Case("none", "none", "nan", "mapping", (N,) if is_batched(path) else ())
    driver = _driver(path, case)
    _reset(driver, path)
    return _reset(driver, path), [_step(driver), _step(driver)]


RESULTS: dict = {"cases": 0, "handled": 0}


def _expects_error(hook: str, field: str, corruption: str, batch: tuple) -> bool:
    """The documented outcome of one case: an error, or the right result."""
    kind = CORRUPTIONS[corruption][1]
    if kind in ("error", "flag-error"):
        return True
    if field == "terminated" and corruption in ("float64 same values", "python scalar"):
        return True  # a float is no flag
    if kind == "scalar":
        return bool(batch) or field == "observation"  # one value for every env / no (2,) observation
    if kind == "error-or-default":  # None: no observation is an error, a reward hook must give one
        return field == "observation" or hook == "reward_fn"
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hook=st.sampled_from(sorted(FIELDS)),
    data=st.data(),
    corruption=st.sampled_from(sorted(CORRUPTIONS)),
    form=st.sampled_from(FORMS),
    path=st.sampled_from(PATHS),
)
def test_malformed_outputs_raise_naming_the_hook_and_field_and_leave_no_trace(hook, data, corruption, form, path):
    field = data.draw(st.sampled_from(FIELDS[hook]))
    batch = (N,) if is_batched(path) else ()
    kind = CORRUPTIONS[corruption][1]
    if kind.startswith("flag") and field != "terminated":
        return  # flag corruptions only apply to flags
    case = Case(hook, field, corruption, form, batch)
    error, result, first, after = _run(case, path)
    assert case.fired
    RESULTS["cases"] += 1

    expect_error = _expects_error(hook, field, corruption, batch)
    if expect_error:
        assert error is not None, f"{hook} {field} {corruption} {form} {path}: no error"
        hook_name = "reset_fn" if hook == "reset_fn" else hook
        named = hook_name in error or (hook == "transition_fn" and "model" in error)
        assert named, f"the error does not name {hook_name}: {error}"
        assert field in error or "NaN/inf" in error, f"the error does not name {field!r}: {error}"
    else:
        assert error is None, f"{hook} {field} {corruption} {form} {path}: {error}"
    clean_first, clean_after = _clean(path)
    if not expect_error:  # the right result: the clean one, or the documented default for None
        want = clean_first if hook == "reset_fn" else clean_after[0]
        if kind == "error-or-default":  # None: no reward (0, as no reward_fn is given) / not terminated
            want = (want[0], np.zeros_like(want[1]), want[2]) if field == "reward" else (want[0], want[1], np.zeros_like(want[2]))
        for a, b in zip(result if isinstance(result, tuple) else (result,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-6)
    # the env goes on exactly as a clean one
    np.testing.assert_array_equal(first, clean_first)
    for got, want in zip(after, clean_after):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    RESULTS["handled"] += 1


@on_paths(PATHS)
def test_the_clean_model_steps_on_every_path(path):
    """The battery's reference: the uncorrupted model runs and gives the same rewards everywhere."""
    _, steps = _clean(path)
    rewards = [np.asarray(r).reshape(-1)[0] for _, r, _ in steps]
    np.testing.assert_allclose(rewards, [1.1, 1.2], rtol=1e-6)
