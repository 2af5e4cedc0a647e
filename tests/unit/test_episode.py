"""Unit tests of ``torchwm_rl.episode`` (the bookkeeping every path shares), on an
``EpisodeLogic`` over a tiny ``ModelAdapter``, table-driven where there are cases: which states
can travel in a TensorDict, row selection for partial resets, time limits (accepted, refused,
Gymnasium TimeLimit semantics), start-state banks, seeds, and steps and resets that leave the
caller's snapshot and the random streams as they were (the snapshot is never mutated; a failure
restores the streams)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchwm_rl.adapter import ModelAdapter
from torchwm_rl.episode import EpisodeLogic, is_tensor_state, select_rows

N = 3
OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


class Model:
    """Reset: a random start from the hook's generator; step: ``s + a``, reward ``s[..., 0]``,
    terminated when ``s[..., 0] > 1``. ``fail_reset`` / ``fail_step`` raise on purpose."""

    def __init__(self):
        self.fail_reset = self.fail_step = False
        self.seeds = []

    def reset_fn(self, model, seed=None, options=None, batch_size=(), *, generator):
        self.seeds.append(seed)
        if self.fail_reset:
            raise RuntimeError("reset failed on purpose")
        return torch.rand(*batch_size, 2, generator=generator)

    def transition_fn(self, model, state, action):
        if self.fail_step:
            raise RuntimeError("step failed on purpose")
        nxt = state + torch.as_tensor(action, dtype=torch.float32)
        return {"state": nxt, "observation": nxt, "reward": nxt[..., 0], "terminated": nxt[..., 0] > 1}


def logic(batch=(N,), max_episode_steps=None, start_states=None, model=None, nan_policy="raise", hooks=True):
    """An EpisodeLogic over :class:`Model` (``hooks=False``: no reset hook)."""
    model = model or Model()
    kwargs = dict(transition_fn=model.transition_fn, **({"reset_fn": model.reset_fn} if hooks else {}))
    adapter = ModelAdapter(model, OBS, ACT, batch_size=batch, nan_policy=nan_policy, **kwargs)
    return EpisodeLogic(adapter, max_episode_steps, start_states)


# ---------------------------------------------------------------------------- is_tensor_state
class Opaque:
    pass


@pytest.mark.parametrize("state,tensor", [
    (torch.zeros(2), True),
    (TensorDict({"h": torch.zeros(3, 2)}, batch_size=[3]), True),
    ({"h": torch.zeros(2), "z": {"c": torch.zeros(1)}}, True),
    ({}, False),
    ({"h": torch.zeros(2), "step": 1}, False),
    ([torch.zeros(2)], False),
    (Opaque(), False),
    (np.zeros(2), False),
], ids=["tensor", "tensordict", "nested dict", "empty dict", "dict with an int", "list", "object", "numpy"])
def test_is_tensor_state(state, tensor):
    assert is_tensor_state(state) is tensor


# -------------------------------------------------------------------------------- select_rows
MASK = torch.tensor([True, False, True])


@pytest.mark.parametrize("new,old,check", [
    (torch.ones(3, 2), torch.zeros(3, 2), lambda out: out.tolist() == [[1, 1], [0, 0], [1, 1]]),
    (torch.ones(3), torch.zeros(3), lambda out: out.tolist() == [1, 0, 1]),
    ({"h": torch.ones(3, 2), "z": {"c": torch.ones(3)}}, {"h": torch.zeros(3, 2), "z": {"c": torch.zeros(3)}},
     lambda out: out["h"][:, 0].tolist() == [1, 0, 1] and out["z"]["c"].tolist() == [1, 0, 1]),
    (TensorDict({"h": torch.ones(3, 2)}, batch_size=[3]), TensorDict({"h": torch.zeros(3, 2)}, batch_size=[3]),
     lambda out: out["h"][:, 1].tolist() == [1, 0, 1]),
], ids=["rows", "scalars", "dict", "tensordict"])
def test_select_rows_takes_masked_rows_from_new(new, old, check):
    assert check(select_rows(MASK, new, old))


def test_select_rows_refuses_states_it_cannot_split():
    with pytest.raises(TypeError, match="a partial reset needs tensor .* states, got Opaque"):
        select_rows(MASK, Opaque(), Opaque())


# -------------------------------------------------------------------------- max_episode_steps
@pytest.mark.parametrize("value,batch,expected", [
    (None, (N,), None),
    (5, (N,), 5),
    (np.int64(4), (), 4),
    ([1, 2, 3], (N,), [1, 2, 3]),
    (torch.tensor([2, 2, 9]), (N,), [2, 2, 9]),
], ids=["none", "int", "numpy int", "per env list", "per env tensor"])
def test_time_limits_accepted(value, batch, expected):
    steps = logic(batch, value).max_steps
    assert (steps is None) if expected is None else (steps.dtype == torch.int64 and steps.tolist() == expected)


@pytest.mark.parametrize("value,error,message", [
    (2.5, TypeError, "max_episode_steps: expected a positive int or one per env, got 2.5 (float, dtype float64)"),
    (True, TypeError, "got True (bool"),
    ("3", TypeError, "got '3' (str"),
    (float("inf"), TypeError, "got inf (float"),
    ([1, 2], ValueError, "max_episode_steps: expected an int or one per env (shape (3,)), got shape (2,)"),
    (0, ValueError, "max_episode_steps must be positive, got 0"),
    ([3, -1, 2], ValueError, "max_episode_steps must be positive"),
], ids=["float", "bool", "str", "inf", "wrong shape", "zero", "negative"])
def test_time_limits_refused(value, error, message):
    with pytest.raises(error, match=re.escape(message)):
        logic((N,), value)


def test_time_limit_truncates_per_env_and_leaves_terminated_as_the_model_said():
    lg = logic((N,), [1, 2, 3])
    snap, _ = lg.reset(seed=0)
    flags = []
    for _ in range(3):
        snap, record = lg.step(snap, torch.zeros(N, 2))
        flags.append((record.truncated.tolist(), record.terminated.tolist(), snap.elapsed.tolist()))
    assert flags == [
        ([True, False, False], [False] * 3, [1, 1, 1]),
        ([True, True, False], [False] * 3, [2, 2, 2]),  # the logic counts on; resetting is the caller's
        ([True, True, True], [False] * 3, [3, 3, 3]),
    ]
    snap, record = lg.step(snap, torch.full((N, 2), 5.0))
    assert record.terminated.tolist() == [True] * 3 and record.truncated.tolist() == [True] * 3


# ----------------------------------------------------------------------------- start-state bank
@pytest.mark.parametrize("bank,message", [
    (torch.zeros(0, 2), "start_states: the bank is empty"),
    ({"state": torch.zeros(4, 5)}, "start_states: a mapping bank needs an 'observation' entry"),
    ({"observation": torch.zeros(4, 2), "state": torch.zeros(3, 5)},
     "start_states: 'state' has 3 rows but 'observation' has 4; row i of each is one start state"),
    (torch.tensor([[0.0, 0.0], [0.0, float("inf")], [float("nan"), 0.0]]),
     "start_states: NaN/inf in ['observation'] at bank row(s) [1, 2]"),
    (torch.zeros(4, 3), "start_states: expected shape (4, 2), got (4, 3)"),
], ids=["empty", "no observation", "rows differ", "nan rows", "wrong shape"])
def test_banks_refused_when_built(bank, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        logic((N,), start_states=bank)


def test_a_nan_bank_is_accepted_when_nan_is_ignored():
    lg = logic((N,), start_states=torch.full((2, 2), float("nan")), nan_policy="ignore")
    assert torch.isnan(lg.reset(seed=0)[0].observation).all()


@pytest.mark.parametrize("batch", [(), (N,)], ids=["unbatched", "batched"])
def test_bank_resets_draw_rows_reproducibly_under_a_seed(batch):
    bank = torch.arange(40.0).reshape(20, 2)
    draws = [logic(batch, start_states=bank).reset(seed=s)[0].observation for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    rows = draws[0].reshape(-1, 2)
    assert all(any(torch.equal(row, b) for b in bank) for row in rows)
    assert tuple(draws[0].shape) == (*batch, 2)


def test_a_mapping_bank_keeps_state_and_observation_rows_together():
    states = torch.arange(20.0).reshape(10, 2)
    lg = logic((N,), start_states={"observation": -states, "state": states})
    snap, info = lg.reset(seed=3)
    assert torch.equal(snap.state, -snap.observation) and info == {}


def test_an_unbatched_bank_draw_is_a_copy():
    bank = torch.zeros(1, 2)
    snap, _ = logic((), start_states=bank).reset(seed=0)
    snap.observation += 1
    assert torch.equal(bank, torch.zeros(1, 2))


# --------------------------------------------------------------------------------- resets, seeds
def test_without_a_reset_source_reset_says_what_to_pass():
    lg = logic((N,), hooks=False)
    assert not lg.can_reset
    with pytest.raises(TypeError, match=re.escape("Model has no reset: pass reset_fn=(model, seed, options), "
                                                  "initial_observation=..., start_states=...")):
        lg.reset()


def test_a_partial_reset_with_previous_keeps_other_rows_exactly():
    lg = logic((N,))
    snap, _ = lg.reset(seed=0)
    snap, _ = lg.step(snap, torch.full((N, 2), 0.5))
    mask = torch.tensor([False, True, False])
    after, _ = lg.reset(mask=mask, previous=snap)
    for i in (0, 2):
        assert torch.equal(after.state[i], snap.state[i]) and after.elapsed[i] == 1
    assert after.elapsed[1] == 0 and not torch.equal(after.state[1], snap.state[1])


def test_a_seed_is_used_by_the_next_reset_only():
    model = Model()
    lg = logic((N,), model=model)
    lg.seed(7)
    first, _ = lg.reset()
    second, _ = lg.reset()
    assert model.seeds == [7, None]
    assert torch.equal(first.observation, logic((N,)).reset(seed=7)[0].observation)
    assert not torch.equal(first.observation, second.observation)


def test_a_step_leaves_the_snapshot_it_was_given_alone():
    lg = logic((N,), max_episode_steps=4)
    snap, _ = lg.reset(seed=0)
    state, elapsed = snap.state.clone(), snap.elapsed.clone()
    new, _ = lg.step(snap, torch.ones(N, 2))
    assert torch.equal(snap.state, state) and torch.equal(snap.elapsed, elapsed)
    assert new is not snap and new.elapsed.tolist() == [1] * N


def _streams(lg):
    return lg.generator.get_state(), lg.hook_generator.get_state(), lg.pending_seed


def _same_streams(a, b):
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_a_failed_reset_leaves_the_streams_and_the_pending_seed():
    model = Model()
    lg = logic((N,), model=model)
    lg.seed(5)
    before = _streams(lg)
    model.fail_reset = True
    with pytest.raises(RuntimeError, match="on purpose"):
        lg.reset()
    assert _same_streams(before, _streams(lg))
    model.fail_reset = False
    assert torch.equal(lg.reset()[0].observation, logic((N,)).reset(seed=5)[0].observation)


@pytest.mark.parametrize("fails", [True, False], ids=["raises", "succeeds"])
def test_a_transaction_restores_the_streams_only_when_it_raises(fails):
    lg = logic((N,))
    lg.seed(3)
    before = _streams(lg)
    try:
        with lg.transaction():
            lg.reset()  # draws from the streams and uses the seed
            if fails:
                raise KeyError("later failure")
    except KeyError:
        pass
    assert _same_streams(before, _streams(lg)) is fails


def test_preserved_leaves_everything_as_it_was_even_on_success():
    lg = logic((N,))
    lg.seed(3)
    before = _streams(lg)
    with lg.preserved():
        lg.reset()
    assert _same_streams(before, _streams(lg))


def lg_twin_after_one_reset(seed):
    """The second reset's observation of a logic seeded with ``seed`` and never forked."""
    twin = logic((N,))
    twin.seed(seed)
    twin.reset()
    return twin.reset()[0].observation


def test_a_fork_starts_where_the_logic_stands_and_then_has_its_own_streams():
    lg = logic((N,))
    lg.seed(9)
    fork = lg.fork()
    a, _ = lg.reset()
    b, _ = fork.reset()
    assert torch.equal(a.observation, b.observation)  # same seed, same streams at the fork
    fork.seed(1)  # seeding the fork leaves the original's streams alone
    assert lg.pending_seed is None
    assert torch.equal(lg.reset()[0].observation, lg_twin_after_one_reset(9))
    assert lg.generator is not fork.generator and lg.hook_generator is not fork.hook_generator
    assert fork.adapter is not lg.adapter and fork.adapter.model is lg.adapter.model


def test_another_batch_is_refused_with_per_env_limits():
    lg = logic((N,), [1, 2, 3])
    message = "max_episode_steps was given per env (shape (3,)), so it has no meaning for a batch of shape (5,)"
    with pytest.raises(ValueError, match=re.escape(message)):
        with lg.batch_override((5,)):
            pass


def test_another_batch_runs_with_one_limit_and_is_undone_after():
    lg = logic((N,), 2)
    with lg.batch_override((5,)):
        snap, _ = lg.reset(seed=0)
        assert tuple(snap.observation.shape) == (5, 2)
    assert lg.batch_size == (N,) and lg.adapter.batch_size == (N,)

