"""``nan_policy="raise"`` during ``env.rollout`` with deferred checks: the NaN/inf check of what a
step records (observation, reward, model state) costs no op per step. Each read sweeps the
trajectory's storage for the steps recorded since the last read (torchwm_rl.deferred), and a
failure raises what the per-step check (``check_every=1``) raises, wherever the NaN is and however
the trajectory is stored."""

from __future__ import annotations

import collections

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode

from torchwm_rl import WorldModelEnv

N, DIM, BAD_STEP, BAD_ROW = 4, 3, 4, 1


def _poisoned(value: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``value`` with NaN in row BAD_ROW at step BAD_STEP only (finite before and after), read from
    the state ``h`` (0.1 per step): a replay of the same actions repeats it."""
    bad = (torch.arange(N) == BAD_ROW) & ((h[..., 0] - 0.1 * BAD_STEP).abs() < 0.05)
    return torch.where(bad.reshape(N, *([1] * (value.ndim - 1))), float("nan"), value)


def _env(where: str, check_every):
    dict_obs = where == "dict observation"
    nested = where == "nested state leaf"

    def reset(batch_size=()):
        if nested:
            return {"state": TensorDict({"h": torch.zeros(*batch_size, DIM), "z": {"c": torch.zeros(*batch_size, 2)}},
                                        batch_size=batch_size),
                    "observation": torch.zeros(*batch_size, DIM)}
        zeros = torch.zeros(*batch_size, DIM)
        return {"state": zeros, "observation": {"pos": zeros.clone(), "vel": zeros.clone()} if dict_obs else zeros}

    def transition(state, action):
        # a NaN state entry does not spread to the next steps: only a sweep of the recorded steps sees it
        h = (state["h"] if nested else state).nan_to_num() + action
        reward = h.sum(-1)
        if where == "reward":
            reward = _poisoned(reward, h)
        if nested:
            c = _poisoned(state["z"]["c"].nan_to_num() + 1.0, h)
            nxt = TensorDict({"h": h, "z": {"c": c}}, batch_size=h.shape[:-1])
            return {"state": nxt, "observation": h.clone(), "reward": reward}
        obs = _poisoned(h, h) if where in ("observation", "list trajectory") else h.clone()
        if dict_obs:
            obs = {"pos": h.clone(), "vel": _poisoned(h * 2, h)}
        state_out = _poisoned(h, h) if where == "tensor state" else h
        return {"state": state_out, "observation": obs, "reward": reward}

    box = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
    obs_space = gym.spaces.Dict({"pos": box, "vel": box}) if dict_obs else box
    return WorldModelEnv(None, obs_space, gym.spaces.Box(-1.0, 1.0, (DIM,), np.float32), reset_fn=reset,
                         transition_fn=transition, batch_size=(N,), seed=0, check_every=check_every)


def _policy(where: str):
    calls = [0]

    def policy(td):
        calls[0] += 1
        td.set("action", torch.full((N, DIM), 0.1))
        if where == "list trajectory" and calls[0] >= 2:  # another key from step 2 on: the steps become lists
            td.set("extra", torch.ones(N, 1))
        return td

    return policy


WHERE = ["observation", "reward", "tensor state", "nested state leaf", "dict observation", "list trajectory"]


@pytest.mark.parametrize("check_every", [None, 3])
@pytest.mark.parametrize("where", WHERE)
def test_a_nan_at_one_step_raises_the_per_step_error(where, check_every):
    """NaN in one env row at step 4 of 10 only (finite again after it, so only a sweep of the
    recorded steps, not the last step, can see it): the deferred read raises the per-step check's
    error, and the env is left where the per-step check leaves it (fails before the sweep reads
    the recorded steps: no error for the observation, reward and state cases)."""
    outcomes = []
    for every in (1, check_every):
        env = _env(where, every)
        with torch.no_grad(), pytest.raises(ValueError) as err:
            env.rollout(10, _policy(where), break_when_any_done=False)
        outcomes.append((str(err.value), env.logic._save()))
    (message, saved), (deferred_message, deferred_saved) = outcomes
    assert "NaN/inf" in message and f"env index [{BAD_ROW}]" in message
    assert deferred_message == message
    assert repr(deferred_saved) == repr(saved)


def test_a_rollout_without_nan_is_returned_as_recorded():
    """No NaN: the deferred sweep finds nothing and the trajectory is the per-step one."""
    outs = []
    for every in (1, None):
        env = _env("observation", every)
        with torch.no_grad():
            outs.append(env.rollout(BAD_STEP - 1, _policy("observation"), break_when_any_done=False))
    assert (outs[0] == outs[1]).all()


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(nan_policy: str, steps: int = 8) -> collections.Counter:
    box = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
    env = WorldModelEnv(None, box, gym.spaces.Box(-1.0, 1.0, (DIM,), np.float32),
                        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, DIM),
                        transition_fn=lambda state, action: {"observation": state + action, "reward": state.sum(-1)},
                        batch_size=(N,), seed=0, nan_policy=nan_policy)
    policy = _policy("observation")
    counts = []
    with torch.no_grad():
        env.rollout(2, policy, break_when_any_done=False)
        for t in (steps, 2 * steps):
            counter = _OpCounter()
            with counter:
                env.rollout(t, policy, break_when_any_done=False)
            counts.append(counter.ops)
    return counts[1] - counts[0]


def test_the_deferred_nan_check_costs_no_op_per_step():
    """The ops a steady-state step dispatches (a rollout of 2T steps against one of T) are the same
    with nan_policy="raise" (the default) as with "ignore": the check runs once per read, over the
    trajectory (fails before: isfinite, sums and ORs per step)."""
    assert _ops_per_step("raise") == _ops_per_step("ignore")


def _restart_env(check_every, reset_schedule):
    """Env 1 restarts after 3 steps (its time limit) from a NaN start; env 2 never restarts, and
    the rows of a partial reset it is not in hold NaN (they are not used: no error)."""
    def reset(batch_size=(), options=None):
        obs = torch.zeros(*batch_size, DIM)
        mask = (options or {}).get("reset_mask")
        if mask is not None and not mask.all():  # a partial reset (the first reset has every row)
            obs[2] = float("nan")  # never used: env 2 is not reset
            obs[BAD_ROW] = torch.where(mask[BAD_ROW], float("nan"), 0.0)
        return obs

    box = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
    return WorldModelEnv(None, box, gym.spaces.Box(-1.0, 1.0, (DIM,), np.float32), reset_fn=reset,
                         # the step does not spread a NaN start: only a sweep of the recorded starts sees it
                         transition_fn=lambda state, action: {"observation": state.nan_to_num() + action,
                                                              "reward": state.nan_to_num().sum(-1)},
                         max_episode_steps=torch.tensor([50, 3, 100, 50]), batch_size=(N,), seed=0,
                         check_every=check_every, reset_schedule=reset_schedule)


@pytest.mark.parametrize("reset_schedule", ["when_done", "every_step"])
@pytest.mark.parametrize("check_every", [None, 2])
def test_a_nan_start_of_a_restarted_env_raises_the_per_step_error(check_every, reset_schedule):
    """A partial reset mid-rollout gives env 1 a NaN start: the deferred read (the sweep of the
    recorded starts) raises the per-step check's error, and NaN in rows that are not reset is
    not an error (a sweep that does not read the recorded starts raises nothing)."""
    outcomes = []
    for every in (1, check_every):
        env = _restart_env(every, reset_schedule)
        with torch.no_grad(), pytest.raises(ValueError) as err:
            env.rollout(8, _policy("observation"), break_when_any_done=False)
        outcomes.append((str(err.value), repr(env.logic._save())))
    assert "reset_fn returned NaN/inf" in outcomes[0][0] and f"env index [{BAD_ROW}]" in outcomes[0][0]
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("reset_schedule", ["when_done", "every_step"])
def test_unused_nan_rows_of_a_partial_reset_are_no_error(reset_schedule):
    """Only env 2 (never reset) holds NaN in the reset's output: no error on either path."""
    env = _restart_env(None, reset_schedule)
    env.logic.max_steps = torch.tensor([50, 100, 100, 3])  # env 3 restarts instead, from a finite start
    with torch.no_grad():
        out = env.rollout(8, _policy("observation"), break_when_any_done=False)
    assert torch.isfinite(out["next", "observation"]).all()


@pytest.mark.parametrize("check_every", [None, 3])
@pytest.mark.parametrize("where", ["observation", "tensor state"])
def test_a_policy_writing_into_its_observation_cannot_hide_a_recorded_nan(where, check_every):
    """A trajectory kept as lists (another key from step 2 on) holds each step's "next" entries as
    they are, and the next step's root carries them: a policy that cleans its observation (or the
    model state) in place
    (``nan_to_num_``) rewrites what was recorded. The NaN the step gave must still raise the
    per-step error, as with check_every=1 (fails before: a sweep at the read sees the cleaned
    values and the rollout returns with no error)."""

    def cleaning_policy():
        inner = _policy("list trajectory")

        def policy(td):
            td.get("model_state" if where == "tensor state" else "observation").nan_to_num_()
            return inner(td)

        return policy

    messages = []
    for every in (1, check_every):
        env = _env(where, every)
        with torch.no_grad(), pytest.raises(ValueError) as err:
            env.rollout(10, cleaning_policy(), break_when_any_done=False)
        messages.append(str(err.value))
    assert "NaN/inf" in messages[0] and f"env index [{BAD_ROW}]" in messages[0]
    assert messages[1] == messages[0]


@pytest.mark.parametrize("check_every", [1, None])
def test_a_policy_writing_into_its_observation_cannot_rewrite_the_recorded_steps(check_every):
    """A trajectory kept as lists (another key from step 2 on): a policy that zeroes its
    observation in place changes none of the "next" observations recorded at earlier steps, as
    the in-place buffers already ensure (fails before: ("next", "observation") read 0 at every
    step the policy saw afterwards, instead of the state's 0.1, 0.2, 0.3)."""
    calls = [0]

    def zeroing(td):
        td.get("observation").zero_()  # the env's state is its own copy: the steps go on from it
        calls[0] += 1
        td.set("action", torch.full((N, DIM), 0.1))
        if calls[0] >= 2:
            td.set("extra", torch.ones(N, 1))
        return td

    box = gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32)
    env = WorldModelEnv(None, box, gym.spaces.Box(-1.0, 1.0, (DIM,), np.float32),
                        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, DIM),
                        transition_fn=lambda state, action: {"observation": state + action, "reward": state.sum(-1)},
                        batch_size=(N,), seed=0, check_every=check_every)
    with torch.no_grad():
        out = env.rollout(4, zeroing, break_when_any_done=False)
    expected = 0.1 * torch.arange(1, 5, dtype=torch.float32)[None, :, None].expand(N, 4, DIM)
    assert torch.allclose(out["next", "observation"], expected)
