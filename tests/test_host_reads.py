"""Host reads of tensor values per steady-state step (on CUDA each is a device sync), counted on
the CPU with :class:`torchwm_rl.host_reads.HostReadCounter`.

Each case counts the reads of a rollout of T steps and of one of 2T steps, with episode ends
and partial resets (per-env time limits and terminations), and requires the difference to be
what the path reads per step times T: 0 where no read is left per step (a once-per-rollout read
cancels out), and exactly what is documented where one is left.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from torchwm_rl import WorldModelEnv
from torchwm_rl.host_reads import HostReadCounter

N, DIM, T = 6, 4, 12
LIMITS = torch.tensor([3, 4, 5, 6, 7, 50])  # per-env time limits: partial resets at different steps


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(DIM + 1, DIM)

    def forward(self, state, action):
        action = action.reshape(*state.shape[:-1], -1).to(state.dtype)  # (a Discrete action: [N] integers)
        return torch.tanh(self.net(torch.cat([state, action], -1))) * 1.05


def reset_fn(model, seed=None, options=None, batch_size=()):
    # no random numbers: every reset schedule gives the same numbers
    return 0.1 * torch.arange(1, DIM + 1, dtype=torch.float32).expand(*batch_size, DIM).clone()


def make_env(model=None, action_space=None, **options) -> WorldModelEnv:
    return WorldModelEnv(
        Model() if model is None else model,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32) if action_space is None else action_space,
        reset_fn=reset_fn,
        reward_fn=lambda model, next_state: -next_state.pow(2).sum(-1),
        terminal_fn=lambda model, next_state: next_state[..., 0] > 0.6,
        max_episode_steps=LIMITS,
        batch_size=(N,),
        seed=0,
        **options,
    )


def make_policy() -> TensorDictModule:
    torch.manual_seed(1)
    return TensorDictModule(torch.nn.Linear(DIM, 1), in_keys=["observation"], out_keys=["action"])


def reads(run) -> int:
    with HostReadCounter() as counter:
        run()
    return counter.total


def rollout_reads(env, policy, steps: int) -> int:
    return reads(lambda: env.rollout(steps, policy, break_when_any_done=False))


def collector_reads(env, policy, steps: int) -> int:
    collector = Collector(env, policy, frames_per_batch=N * steps, total_frames=-1,
                          auto_register_policy_transforms=False, track_traj_ids=False)
    try:
        batches = iter(collector)
        next(batches)  # the collector's own set-up (the first reset) is in the first batch
        return reads(lambda: next(batches))
    finally:
        collector.shutdown()


def test_the_rollouts_have_partial_resets():
    """The counted rollouts do restart some envs but not all at several steps (else a
    per-step read on resets would not show)."""
    with torch.no_grad():
        td = make_env(reset_schedule="every_step").rollout(2 * T, make_policy(), break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)  # [N, 2T]
    partial = (done.any(0) & ~done.all(0)).sum()
    assert int(partial) >= 5


@pytest.mark.parametrize("nan_policy, check_actions", [("raise", None), ("ignore", None), ("raise", "raise"),
                                                       ("raise", "clip")])
def test_rollout_reads_nothing_per_steady_state_step(nan_policy, check_actions):
    """env.rollout with masked resets: the NaN and action checks are read once per rollout, the
    resets never (0 reads per step; before: the NaN check's sums, the action check's any() and
    done.any() at every step)."""
    env = make_env(reset_schedule="every_step", nan_policy=nan_policy, check_actions=check_actions)
    policy = make_policy()
    with torch.no_grad():
        env.rollout(3, policy, break_when_any_done=False)  # warm-up (the hooks' first calls learn)
        assert rollout_reads(env, policy, 2 * T) - rollout_reads(env, policy, T) == 0


@pytest.mark.parametrize("kind, options", [("plain", {}), ("plain", {"nan_policy": "truncate"}), ("ensemble", {}),
                                           ("discrete", {"check_actions": "raise"})],
                         ids=["default", "truncate", "ensemble", "discrete-raise"])
def test_rollout_with_the_default_reset_schedule_reads_only_done_per_step(kind, options):
    """reset_schedule="when_done" (the default, exact for any reset hook) reads done.any() once
    at every step (the restart needs it: see rollout._loop), and the reset's merge reads its mask
    at steps with an episode end, and nothing else per step: the NaN checks' sums (``item``), a
    truncation's rows, an ensemble's checks and an integer action check are read once per
    rollout (before: truncate, ensembles and integer action checks read at every step)."""
    env, policy = _make(kind, **options), None if kind == "discrete" else make_policy()

    def count(steps):
        with HostReadCounter() as counter:
            env.rollout(steps, policy, break_when_any_done=False)
        return counter.counts

    with torch.no_grad():
        count(3)
        short, long = count(T), count(2 * T)
    per_step = long - short
    assert per_step["any"] >= T and per_step["__bool__"] >= T
    assert set(per_step) <= {"any", "__bool__", "all"}  # beyond done.any(): the merge of restarted rows


@pytest.mark.parametrize("way", ["collector", "EnvBase.rollout"])
def test_collector_path_reads_nothing_per_steady_state_step(way):
    """TorchRL's Collector (track_traj_ids=False: its own trajectory ids read the done flags)
    and EnvBase.rollout, both through step_and_maybe_reset: with masked resets and
    nan_policy="ignore", 0 reads per step. (nan_policy="raise" reads its check at every step
    there: see the next test.)"""
    env, policy = make_env(reset_schedule="every_step", nan_policy="ignore"), make_policy()
    with torch.no_grad():
        if way == "collector":
            assert collector_reads(env, policy, 2 * T) - collector_reads(env, policy, T) == 0
        else:
            def count(steps):
                return reads(lambda: EnvBase.rollout(env, steps, policy, break_when_any_done=False))
            count(3)
            assert count(2 * T) - count(T) == 0


def test_collector_path_reads_the_nan_check_at_each_step():
    """What is left on the collector path with nan_policy="raise": the step's NaN/inf check
    (the reward's and the observation's sums, 2 reads on the CPU, one sync on CUDA) and the
    reset's (1), at every step. TorchRL's collector gives the env no point before it hands out a
    batch at which a deferred check could be read, so the check stays per step there."""
    env, policy = make_env(reset_schedule="every_step"), make_policy()
    with torch.no_grad():
        assert collector_reads(env, policy, 2 * T) - collector_reads(env, policy, T) == 3 * T


def test_every_step_schedule_gives_the_default_schedules_numbers():
    """With a reset hook that draws no random numbers, masked resets give the numbers of the
    default schedule (the only difference: keys a reset does not give, such as the action, are
    zeroed in the reset rows when every env restarts at once; the policy overwrites them)."""
    policy = make_policy()
    with torch.no_grad():
        exact = make_env().rollout(2 * T, policy, break_when_any_done=False)
        masked = make_env(reset_schedule="every_step").rollout(2 * T, policy, break_when_any_done=False)
    assert (exact == masked).all()


def test_collector_every_step_schedule_gives_the_default_schedules_numbers():
    policy = make_policy()
    out = []
    with torch.no_grad():
        for schedule in ("when_done", "every_step"):
            collector = Collector(make_env(reset_schedule=schedule), policy, frames_per_batch=N * 2 * T,
                                  total_frames=N * 2 * T, auto_register_policy_transforms=False,
                                  track_traj_ids=False)
            out.append(next(iter(collector)))
            collector.shutdown()
    assert (out[0] == out[1]).all()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1"])
def test_check_every_is_validated(value):
    with pytest.raises(ValueError, match="check_every"):
        make_env(check_every=value)


def test_reset_schedule_is_validated():
    with pytest.raises(ValueError, match="reset_schedule"):
        make_env(reset_schedule="sometimes")


def _nan_env(check_every):
    """Random starts (the env's generator), a model drawing noise from the global RNG, and a NaN
    observation in env 2 at its 7th step."""

    def reset(seed=None, options=None, batch_size=(), generator=None):
        return torch.rand(*batch_size, DIM, generator=generator)

    def transition(state, action):
        nxt = state + 0.01 * torch.randn_like(state) + action
        bad = (torch.arange(N) == 2)[:, None] & (nxt[:, :1] > 6.5)
        obs = torch.where(bad, float("nan"), nxt)
        return {"state": nxt, "observation": obs, "reward": nxt.sum(-1)}

    return WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                         gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), reset_fn=reset, transition_fn=transition,
                         batch_size=(N,), seed=3, check_every=check_every)


def _counting_policy(td):  # one step per call, plus noise from the global RNG
    return td.set("action", torch.ones(N, 1) + 0.001 * torch.randn(N, 1))


@pytest.mark.parametrize("check_every", [None, 3, 5])
def test_a_deferred_check_raises_the_per_step_error_and_leaves_the_per_step_state(check_every):
    """A NaN at step 7 of a 10-step rollout: read at the end (or every K steps), the check
    raises the error the per-step check (check_every=1) raises, and the env and its streams are
    then where the per-step check leaves them (the next rollout, from the same global seed, is
    the same)."""
    outcomes = []
    for every in (1, check_every):
        torch.manual_seed(5)
        env = _nan_env(every)
        with torch.no_grad(), pytest.raises(ValueError) as err:
            env.rollout(10, _counting_policy, break_when_any_done=False)
        torch.manual_seed(6)  # the policy's own draws: it was called 10 times deferred, 8 per-step
        with torch.no_grad():
            after = env.rollout(4, _counting_policy, break_when_any_done=False)
        outcomes.append((str(err.value), after))
    (message, after), (deferred_message, deferred_after) = outcomes
    assert "env index [2]" in message and deferred_message == message
    assert (deferred_after == after).all()


@pytest.mark.parametrize("check_every", [None, 3])
def test_a_deferred_check_never_calls_the_policy_again(check_every):
    """On a failed deferred check the env steps the recorded actions again: a policy with a state
    of its own (here an iterator of actions, as `torchwm-rl check`'s parity replay) sees each step
    once, and the error is the per-step one (before: the rollout re-ran the policy, which raised
    StopIteration)."""
    messages, counts = [], []
    for every in (1, check_every):
        actions = iter([torch.ones(N, 1)] * 10)
        calls = []

        def replay(td):
            calls.append(1)
            return td.set("action", next(actions))

        with torch.no_grad(), pytest.raises(ValueError) as err:
            _nan_env(every).rollout(10, replay, break_when_any_done=False)
        messages.append(str(err.value))
        counts.append(len(calls))
    assert messages[0] == messages[1]
    # per-step: stops at the NaN's step; deferred: each step once, up to the read that saw it
    read_at = 10 if check_every is None else -(-counts[0] // check_every) * check_every
    assert counts[0] < 10 and counts[1] == read_at


def test_a_rollout_without_failure_is_the_same_whatever_check_every():
    outs = []
    for every in (1, None, 4):
        torch.manual_seed(5)
        with torch.no_grad():
            outs.append(_nan_env(every).rollout(5, _counting_policy, break_when_any_done=False))
    assert (outs[0] == outs[1]).all() and (outs[0] == outs[2]).all()


@pytest.mark.parametrize("case", ["tensor", "dict", "tensordict", "dict_obs", "truncate"])
def test_masked_resets_agree_between_the_fast_rollout_and_envbase_rollout(case):
    """With reset_schedule="every_step" both rollouts call the reset hook at every step (the
    fast path through its masked write, EnvBase.rollout through WorldModelEnv.maybe_reset), so
    on the same seeds they give identical tensordicts, for every state layout and optional key."""
    from test_rollout_fast_path import Model, assert_identical, both, make_env as make_fast_env, policy_module

    kwargs = {"reset_schedule": "every_step"}
    if case in ("tensor", "dict", "tensordict"):
        def make():
            return make_fast_env(model=Model(state=case), **kwargs)
    elif case == "dict_obs":
        def make():
            return make_fast_env(dict_obs=True, **kwargs)
    else:
        def make():
            return make_fast_env(model=Model(nan=True), nan_policy="truncate", **kwargs)
    policy = policy_module("position" if case == "dict_obs" else "observation")
    fast, general = both(make, 12, policy, break_when_any_done=False)
    assert_identical(fast, general)
    done = fast["next", "done"].squeeze(-1)
    assert bool((done.any(0) & ~done.all(0)).any())  # partial resets happened


@pytest.mark.parametrize("check_every", [None, 4])
def test_a_deferred_action_check_raises_the_per_step_error(check_every):
    """check_actions="raise": an action outside the space at step 6, found at the end of the
    rollout (or at the next K-th step), raises the per-step check's error (rows and values)."""
    def policy(td):
        step = td["elapsed_steps"].squeeze(-1)  # the 6th step of env 1's first episode
        action = torch.where(((torch.arange(N) == 5) & (step == 5))[:, None], 2.0, 0.5)
        return td.set("action", action)

    messages = []
    for every in (1, check_every):
        with torch.no_grad(), pytest.raises(ValueError) as err:
            make_env(check_actions="raise", check_every=every).rollout(10, policy, break_when_any_done=False)
        messages.append(str(err.value))
    assert "env index [5]" in messages[0] and messages[1] == messages[0]


def test_deferred_clip_gives_the_per_step_clip():
    def policy(td):
        return td.set("action", torch.linspace(-2, 2, N)[:, None] * torch.ones(N, 1))

    outs = []
    for every in (1, None):
        with torch.no_grad():
            outs.append(make_env(check_actions="clip", check_every=every).rollout(8, policy,
                                                                                break_when_any_done=False))
    assert (outs[0] == outs[1]).all()


def _stateful_policy_env(check_every):
    """A NaN observation exactly where the action is 1.0 (the model is deterministic)."""

    def transition(state, action):
        nxt = state + action
        return {"state": nxt, "observation": torch.where(action > 0.9, float("nan"), nxt), "reward": nxt.sum(-1)}

    return WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                         gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                         reset_fn=lambda batch_size=(): torch.zeros(*batch_size, DIM), transition_fn=transition,
                         batch_size=(N,), seed=0, check_every=check_every)


@pytest.mark.parametrize("check_every", [None, 3])
def test_a_stateful_policy_gets_the_per_step_error(check_every):
    """A policy whose actions depend on a state of its own (a call counter: an exploration
    schedule) is not called again after a failed deferred check: the recorded actions are
    stepped again, so the NaN at step 3 is found again and the per-step error is raised (before
    the replay: the policy was re-run, its other actions missed the NaN, and the re-run's other
    trajectory came back with no error)."""
    def make_policy():
        calls = [0]

        def policy(td):
            calls[0] += 1
            return td.set("action", torch.full((N, DIM), 1.0 if calls[0] == 3 else 0.1))
        return policy

    messages = []
    for every in (1, check_every):
        with torch.no_grad(), pytest.raises(ValueError, match="NaN/inf in \\['observation'\\]") as err:
            _stateful_policy_env(every).rollout(5, make_policy(), break_when_any_done=False)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("check_every", [None, 3])
def test_a_deferred_failure_the_replay_does_not_repeat_is_an_error_not_a_silent_result(check_every):
    """A HOOK keeping a state the env cannot put back (a call counter; likewise its own generator
    or numpy's RNG) makes the NaN the deferred check saw at its 3rd call vanish from the replay:
    returning the replay's other trajectory would hide it, so an error says why and how to check
    per step (fails before: no error)."""
    def make_env(every):
        calls = [0]

        def transition(state, action):
            calls[0] += 1
            nxt = state + action
            return {"state": nxt, "observation": nxt * (float("nan") if calls[0] == 3 else 1.0),
                    "reward": nxt.sum(-1)}

        return WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                             gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                             reset_fn=lambda batch_size=(): torch.zeros(*batch_size, DIM), transition_fn=transition,
                             batch_size=(N,), seed=0, check_every=every)

    def policy(td):
        return td.set("action", torch.full((N, DIM), 0.1))

    with torch.no_grad(), pytest.raises(ValueError, match="NaN/inf in \\['observation'\\]"):
        make_env(1).rollout(5, policy, break_when_any_done=False)
    with torch.no_grad(), pytest.raises(RuntimeError, match="check_every=1") as err:
        make_env(check_every).rollout(5, policy, break_when_any_done=False)
    assert "did not repeat" in str(err.value)


def test_a_deferred_false_positive_still_returns_the_rollout():
    """Finite values whose sum overflows float32 make the deferred flag read True; the re-run,
    checking each step, passes and repeats the first run: its result is returned, the same as
    with per-step checks."""
    def transition(state, action):
        nxt = state + action
        return {"state": nxt, "observation": nxt * 0 + 3e38, "reward": nxt.sum(-1)}

    outs = []
    for every in (1, None):
        env = WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
                            gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
                            reset_fn=lambda batch_size=(): torch.zeros(*batch_size, DIM), transition_fn=transition,
                            batch_size=(N,), seed=0, check_every=every)
        with torch.no_grad():
            outs.append(env.rollout(4, lambda td: td.set("action", torch.ones(N, 1)), break_when_any_done=False))
    assert torch.isfinite(outs[1]["next", "observation"]).all()
    assert (outs[0] == outs[1]).all()


def test_a_rerun_from_a_given_tensordict_starts_where_the_first_run_started():
    """auto_reset=False from a tensordict with a done row (the collection pattern): the first
    run's maybe_reset replaces that row's entries in the caller's tensordict, so the re-run after
    a false positive (finite rewards whose sum overflows) started from the reset row, drew no
    start there and shifted every later start: env 0's second episode repeated its first start
    (0.99 twice) where per-step checks give a new one, with no error (fails before). The re-run
    now starts from the tensordict as given: the same trajectory as check_every=1."""
    def reset(seed=None, options=None, batch_size=(), generator=None):
        return torch.rand(*batch_size, 2, generator=generator)

    def transition(state, action):
        nxt = state + action
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1) + 3e38}

    outs = []
    for every in (1, None):
        env = WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                            gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), reset_fn=reset,
                            transition_fn=transition, max_episode_steps=torch.tensor([2, 50, 50]), batch_size=(3,),
                            seed=0, check_every=every)
        policy = lambda td: td.set("action", torch.full((3, 1), 0.5))  # noqa: E731
        with torch.no_grad():
            start = step_mdp(env.rollout(2, policy, break_when_any_done=False)[..., -1])
            assert start["done"].flatten().tolist() == [True, False, False]
            outs.append(env.rollout(6, policy, break_when_any_done=False, auto_reset=False, tensordict=start))
    assert (outs[0] == outs[1]).all()


@pytest.mark.parametrize("read", [
    lambda x, m: torch.equal(x, x), lambda x, m: torch.allclose(x, x), lambda x, m: x.masked_select(m),
    lambda x, m: torch.unique(x), lambda x, m: torch.where(m), lambda x, m: torch.argwhere(m),
    lambda x, m: torch.is_nonzero(m[:1]), lambda x, m: torch.repeat_interleave(x, m.long()),
], ids=["equal", "allclose", "masked_select", "unique", "where(cond)", "argwhere", "is_nonzero",
        "repeat_interleave"])
def test_the_counter_counts_every_call_that_reads_values_on_the_host(read):
    """Each of these returns a Python value or a tensor whose shape depends on the values (a
    device sync on CUDA); the counter missed them all (fails before), so a per-step one added
    to the step path would pass the CI tests above unseen."""
    x, mask = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([False, True, True])
    with HostReadCounter() as counter:
        read(x, mask)
    assert counter.total >= 1


@pytest.mark.parametrize("options", [{"check_every": None}, {"check_every": 3}], ids=["deferred", "every-3"])
def test_a_restart_of_every_row_refuses_a_bad_reset_as_the_per_step_path_does(options):
    """All envs end at once (one time limit) and the reset hook then returns a wrong shape: the
    deferred checks pass the reset its mask even when every row resets (no host read of
    mask.all()), so the error became a plain ValueError with the partial-reset hint ("return all
    3 rows"), not the ValueMismatch the per-step path raises (fails before). The hint is for
    partial resets (reset_schedule="every_step" calls the hook at every step: there it is one)."""
    def make(**kwargs):
        calls = [0]

        def reset(batch_size=()):
            calls[0] += 1  # the env's probe and the rollout's first reset are fine, the restart is not
            return torch.zeros(*batch_size, 2 + (calls[0] >= 3))

        return WorldModelEnv(None, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                             gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), reset_fn=reset,
                             transition_fn=lambda s, a: (s + a, s + a, s.sum(-1)), max_episode_steps=2,
                             batch_size=(3,), seed=0, **kwargs)

    errors = []
    for kwargs in ({"check_every": 1}, options):
        with pytest.raises(ValueError) as err:
            make(**kwargs).rollout(4, lambda td: td.set("action", torch.zeros(3, 2)), break_when_any_done=False)
        errors.append(err.value)
    assert type(errors[1]) is type(errors[0]) and str(errors[1]) == str(errors[0])
    assert "partial reset" not in str(errors[0])


def test_a_policy_writing_into_a_recorded_action_gets_the_per_step_error():
    """The replay after a failed deferred check steps the recorded actions: a policy that
    alternates between two buffers and refills the one it returned two steps earlier. The
    trajectory holds copies of each step's action (written in place into its [*B, T] buffer),
    so the replay steps what the policy gave and raises the per-step error (before the
    preallocated trajectory: refused naming step 1, since the record kept the policy's own
    tensors; before that: the replay stepped the rewritten values)."""
    messages = []
    for every in (1, None):
        buffers, calls = [torch.ones(N, 1), torch.ones(N, 1)], [0]

        def alternating(td):
            buffer = buffers[calls[0] % 2]
            buffer.fill_(1.0 + 0.001 * calls[0])
            calls[0] += 1
            return td.set("action", buffer)

        with torch.no_grad(), pytest.raises(ValueError) as err:
            _nan_env(every).rollout(10, alternating, break_when_any_done=False)
        messages.append(str(err.value))
    assert "env index [2]" in messages[0] and messages[1] == messages[0]


# ------------------------------- truncation, ensembles and integer actions without per-step reads
E = 3


class EnsembleModel(Model):
    """E members that differ by a scale; member ``nan_member`` (if any) gives NaN in env 2 once
    its first coordinate passes 0.3; ``negative``: uncertainty_fn below 0 there instead."""

    def __init__(self, nan_member=None):
        super().__init__()
        self.nan_member = nan_member

    def forward(self, state, action):
        members = []
        for i in range(E):
            nxt = super().forward(state, action) * (1 + 0.01 * i)
            if i == self.nan_member:
                nxt = torch.where(((torch.arange(N) == 2)[:, None] & (nxt[:, :1] > 0.3)), float("nan"), nxt)
            members.append(nxt)
        return torch.stack(members)


def make_ensemble_env(nan_member=None, negative=False, **options) -> WorldModelEnv:
    def spread(observations):  # [E, N, DIM] -> [N]; negative in env 2 past 0.3 when asked
        value = observations.std(0).sum(-1)
        if negative:
            value = torch.where((torch.arange(N) == 2) & (observations[0, :, 0] > 0.3), -1.0, value)
        return value

    return make_env(model=EnsembleModel(nan_member), ensemble_size=E,
                    uncertainty_fn=spread if negative else None, **options)


def make_discrete_env(**options) -> WorldModelEnv:
    return make_env(action_space=gym.spaces.Discrete(3), **options)


def _make(kind: str, **options) -> WorldModelEnv:
    return make_discrete_env(**options) if kind == "discrete" else (
        make_ensemble_env(**options) if kind == "ensemble" else make_env(**options))


@pytest.mark.parametrize("kind, options", [
    ("plain", {"nan_policy": "truncate"}),
    ("ensemble", {}),
    ("ensemble", {"nan_policy": "truncate"}),
    ("ensemble", {"negative": False, "uncertainty_penalty": 0.1}),
    ("discrete", {}),
    ("discrete", {"check_actions": "raise"}),
    ("discrete", {"check_actions": "clip"}),
], ids=["truncate", "ensemble", "ensemble-truncate", "ensemble-penalty", "discrete", "discrete-raise",
        "discrete-clip"])
def test_truncation_ensembles_and_integer_action_checks_read_nothing_per_step(kind, options):
    """nan_policy="truncate" (masked writes of the truncated rows), an ensemble's checks (NaN in
    its uncertainty) and check_actions on an integer space are deferred as the NaN check is: 0
    reads per step with masked resets (before: truncate 2 per step, an ensemble 3, an integer
    action check 2)."""
    env = _make(kind, reset_schedule="every_step", **options)
    policy = None if kind == "discrete" else make_policy()
    with torch.no_grad():
        env.rollout(3, policy, break_when_any_done=False)
        assert rollout_reads(env, policy, 2 * T) - rollout_reads(env, policy, T) == 0


@pytest.mark.parametrize("schedule", ["when_done", "every_step"])
def test_a_deferred_truncation_gives_the_per_step_truncation(schedule):
    """nan_policy="truncate" during env.rollout truncates by masked writes: the trajectory equals
    the per-step path's (EnvBase.rollout) value for value, dtype for dtype, with NaN truncations
    in it, for a plain env and an ensemble whose member gives NaN."""
    from test_rollout_fast_path import assert_identical

    for make in (lambda: make_env(model=_NanModel(), nan_policy="truncate", reset_schedule=schedule),
                 lambda: make_ensemble_env(nan_member=1, nan_policy="truncate", reset_schedule=schedule)):
        outs = []
        for rollout in (WorldModelEnv.rollout, EnvBase.rollout):
            policy = make_policy()
            with torch.no_grad():
                outs.append(rollout(make(), 2 * T, policy, break_when_any_done=False))
        fast, general = outs
        assert bool(fast["next", "nonfinite"].any())  # truncations happened
        assert_identical(fast, general)


class _NanModel(Model):
    """NaN in env 2's observation whenever its first coordinate passes 0.3."""

    def forward(self, state, action):
        nxt = super().forward(state, action)
        return torch.where(((torch.arange(N) == 2)[:, None] & (nxt[:, :1] > 0.3)), float("nan"), nxt)


@pytest.mark.parametrize("check_every", [None, 4])
@pytest.mark.parametrize("case", ["nan-member", "negative-uncertainty", "truncate-negative-uncertainty"])
def test_a_deferred_ensemble_check_raises_the_per_step_error(case, check_every):
    """An ensemble's NaN member (nan_policy="raise") and a negative uncertainty_fn value (an error
    under any nan_policy), read once per rollout or every K steps, raise the per-step error."""
    options = {"nan_member": 1} if case == "nan-member" else {"negative": True}
    if case.startswith("truncate"):
        options["nan_policy"] = "truncate"
    messages = []
    for every in (1, check_every):
        with torch.no_grad(), pytest.raises(ValueError) as err:
            make_ensemble_env(check_every=every, **options).rollout(2 * T, make_policy(), break_when_any_done=False)
        messages.append(str(err.value))
    assert "[2]" in messages[0] and messages[1] == messages[0]


@pytest.mark.parametrize("check_every", [None, 4])
def test_a_deferred_integer_action_check_raises_the_per_step_error(check_every):
    """check_actions="raise" on a Discrete(3) space: action 3 in env 5 at its 6th step, read at the
    end (or every K steps), raises the per-step error; "clip" gives the per-step clip's numbers,
    floats rounded first."""
    def policy(td):
        step = td["elapsed_steps"].squeeze(-1)
        return td.set("action", torch.where((torch.arange(N) == 5) & (step == 5), 3, 1))

    def floats(td):
        return td.set("action", torch.linspace(-1.2, 3.4, N))

    messages, clipped = [], []
    for every in (1, check_every):
        with torch.no_grad(), pytest.raises(ValueError) as err:
            make_discrete_env(check_actions="raise", check_every=every).rollout(10, policy, break_when_any_done=False)
        messages.append(str(err.value))
        with torch.no_grad():
            clipped.append(make_discrete_env(check_actions="clip", check_every=every).rollout(
                8, floats, break_when_any_done=False))
    assert "env index [5]" in messages[0] and messages[1] == messages[0]
    assert (clipped[0] == clipped[1]).all()
