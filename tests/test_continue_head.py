"""A model whose termination is a probability (Dreamer's continue head): ``continue_fn`` and
``continue_threshold`` (issue 22 item 4), through the one adapter on every path.

The convention under test (``ModelAdapter``'s docs): ``continue_fn(model, next_state, obs,
action)`` returns the probability of CONTINUING; with ``continue_threshold=None`` each step draws
ONE ``torch.rand(batch_size)`` from the env's generator (the one ``seed`` seeds) and a row ends
where ``u >= p``; with a threshold ``t`` a row ends where ``p < t``. The drawn end is OR-ed with
the terminal flag; time limits are unaffected. The probability is ``("next", "continue_prob")``
``[*B, 1]`` on TorchRL (1 after a reset), ``info["continue_prob"]`` on Gymnasium,
``infos["continue_prob"]`` on the vector export and ``infos[i]["continue_prob"]`` on SB3.

Also here: issue 22's bad-input line "a NaN or inf latent is caught by nan_policy even when the
decoded image is finite", for a Dreamer-like ``{"deter", "stoch"}`` latent decoded to a uint8
image, in every ``nan_policy`` mode on the TorchRL path and the exports.
"""

from __future__ import annotations

import re
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import check_env_specs

from harness import ALL_PATHS, BATCHED, UNBATCHED, Driver, make, on_paths
from torchwm_rl import GymWorldModelEnv, WorldModelEnv

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 6


def reset_zeros(model, batch_size=()):
    """Every episode starts at 0 (the state is the observation); draws nothing."""
    return torch.zeros(*batch_size, 3)


def step_counter(model, state, action):
    """Column 0 counts the steps of the episode; columns 1-2 add up the actions."""
    action = torch.as_tensor(action, dtype=torch.float32)
    ones = torch.ones(*state.shape[:-1], 1)
    nxt = state + torch.cat([ones, action], -1)
    return {"state": nxt, "observation": nxt, "reward": nxt[..., 0].clone()}


def constant(p):
    """A continue head that says ``p`` for every env."""

    def continue_fn(model, next_state):
        return torch.full(next_state.shape[:-1], float(p))

    return continue_fn


def by_row(values):
    """A continue head giving env ``i`` the probability ``values[i]`` (a batched env)."""
    probs = torch.tensor(values, dtype=torch.float32)

    def continue_fn(model, next_state):
        return probs.clone()

    return continue_fn


def build(path, continue_fn, n=None, **kwargs):
    """The env for ``path`` over the step-counter model with ``continue_fn``."""
    return make(path, None, OBS, ACT, n=n, reset_fn=reset_zeros, transition_fn=step_counter,
                continue_fn=continue_fn, **kwargs)


def zero_actions(n=None):
    return np.zeros(ACT.shape if n is None else (n, *ACT.shape), np.float32)


def expected_draws(seed, steps, batch):
    """What the convention says the draws are: one ``torch.rand(batch)`` per step from a
    generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, generator=generator) for _ in range(steps)]


def run(path, env, steps, seed, n=None):
    """``(terminated, continue_prob)`` per step on ``path``, as numpy arrays (one row per step)."""
    driver = Driver(path, env)
    driver.reset(seed=seed)
    terminated, probs = [], []
    for _ in range(steps):
        _, _, term, _, info = driver.step(zero_actions(n))
        terminated.append(np.asarray(term, dtype=bool))
        if path == "torchrl":
            probs.append(driver.td["continue_prob"].squeeze(-1).numpy().copy())
        elif path == "sb3":
            probs.append(np.array([i["continue_prob"] for i in info], dtype=np.float32))
        elif path == "vector" and "final_info" in info:  # SAME_STEP: the ended envs' step info is there
            stepped = info["_continue_prob"]
            probs.append(np.where(stepped, info["continue_prob"], info["final_info"].get("continue_prob", 0)))
        else:
            probs.append(np.asarray(info["continue_prob"]))
    return np.stack(terminated), np.stack(probs)


# ------------------------------------------------------------------------ the draws
@on_paths(UNBATCHED)
def test_same_seed_same_draws_unbatched(path):
    """The unbatched TorchRL env and the Gymnasium env draw ``torch.rand(())`` per step from
    the generator ``seed`` seeds: the same flags, the same as computed here."""
    p = 0.5
    terminated, probs = run(path, build(path, constant(p)), 30, seed=7)
    expected = np.stack([(u >= p).numpy() for u in expected_draws(7, 30, ())])
    assert terminated.tolist() == expected.tolist()
    assert 0 < expected.sum() < 30  # both outcomes occur
    assert np.all(probs == np.float32(p))


@on_paths(BATCHED)
def test_same_seed_same_draws_batched(path):
    """TorchRL, the vector export and SB3: one ``torch.rand(N)`` per step, every row drawn
    whatever it does (SB3 resets ended envs within the step and the reset draws nothing), so
    the flags are the ones computed here on every path."""
    p = 0.6
    terminated, probs = run(path, build(path, constant(p), n=N, autoreset_mode=AutoresetMode.SAME_STEP), 20,
                            seed=11, n=N)
    expected = np.stack([(u >= p).numpy() for u in expected_draws(11, 20, (N,))])
    assert terminated.tolist() == expected.tolist()
    assert np.all(probs == np.float32(p))


def test_next_step_autoreset_draws_for_restarting_rows_too():
    """Gymnasium's default NEXT_STEP autoreset: an env that ended restarts on the next step and
    reports terminated=False there, but its row was drawn as every row is (one draw for the
    batch per step), so every other step's flags stay those of the same seed elsewhere."""
    p = 0.6
    envs = build("vector", constant(p), n=N)
    envs.reset(seed=11)
    draws = expected_draws(11, 20, (N,))
    ended = np.zeros(N, dtype=bool)
    for u in draws:
        _, _, terminated, _, infos = envs.step(zero_actions(N))
        assert terminated.tolist() == ((u >= p).numpy() & ~ended).tolist()
        assert infos["_continue_prob"].tolist() == (~ended).tolist()  # restarting envs carry no step info
        ended = terminated


def test_a_seed_repeats_and_another_seed_differs():
    env = build("torchrl", constant(0.5), n=N)
    first = env.rollout(10, break_when_any_done=False, tensordict=None)
    env.set_seed(0)
    a = env.rollout(10, break_when_any_done=False)["next", "terminated"]
    env.set_seed(0)
    b = env.rollout(10, break_when_any_done=False)["next", "terminated"]
    env.set_seed(1)
    c = env.rollout(10, break_when_any_done=False)["next", "terminated"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert first["next", "continue_prob"].shape == (N, 10, 1)


@pytest.mark.parametrize("p, rate", [(0.0, 1.0), (1.0, 0.0), (0.3, 0.7)])
def test_draws_follow_the_probability(p, rate):
    """p=0 always ends, p=1 never does; p=0.3 ends 70% of 20,000 seeded rows (the bound is
    over 10 standard deviations wide, and the seed is fixed: it cannot flake)."""
    env = build("torchrl", constant(p), n=2000, seed=3)
    td = env.rollout(10, break_when_any_done=False)
    ended = td["next", "terminated"].float().mean().item()
    assert abs(ended - rate) < 0.035
    if p in (0.0, 1.0):
        assert ended == rate


def test_per_row_probabilities_are_drawn_row_by_row():
    probs = [0.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    env = build("torchrl", by_row(probs), n=N, seed=5)
    ended = env.rollout(8, break_when_any_done=False)["next", "terminated"].squeeze(-1)
    assert ended[[0, 2]].all() and not ended[[1, 3]].any()
    expected = torch.stack([u >= torch.tensor(probs) for u in expected_draws(5, 8, (N,))], 1)
    assert torch.equal(ended, expected)


def test_the_fast_rollout_and_envbase_rollout_agree():
    env = build("torchrl", by_row([0.2, 0.9, 0.5, 0.5, 0.7, 1.0]), n=N)
    policy = TensorDictModule(lambda obs: torch.tanh(obs[..., 1:]), in_keys=["observation"], out_keys=["action"])
    env.set_seed(4)
    fast = env.rollout(12, policy, break_when_any_done=False)
    env.set_seed(4)
    slow = env.rollout(12, policy, break_when_any_done=False, callback=lambda env, td: None)
    for key in (("next", "terminated"), ("next", "continue_prob"), "continue_prob", ("next", "observation")):
        assert torch.equal(fast[key], slow[key]), key


def test_an_ensemble_draws_its_member_then_the_continue_flags_from_one_stream():
    """With an ensemble, continue_fn sees the propagated state (no ensemble dim) and the draws
    come from the same seeded stream on every path."""
    shapes = []

    def members(model, state, action):
        out = step_counter(model, state, action)
        offsets = torch.arange(3.0).reshape(3, *([1] * state.ndim))
        return {"state": out["state"] + offsets, "observation": out["state"] + offsets,
                "reward": out["reward"] + offsets.reshape(3, *([1] * (state.ndim - 1)))}

    def continue_fn(model, next_state):
        shapes.append(tuple(next_state.shape))
        return torch.full(next_state.shape[:-1], 0.7)

    def env():
        return WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=members, continue_fn=continue_fn,
                             ensemble_size=3, batch_size=(N,))

    flags = {}
    for path in ("torchrl", "sb3"):
        built = env() if path == "torchrl" else env().to_sb3()
        flags[path] = run(path, built, 10, seed=2, n=N)[0]
    assert flags["torchrl"].tolist() == flags["sb3"].tolist()
    assert set(shapes) == {(N, 3)}
    check_env_specs(env(), seed=0)


# ----------------------------------------------------------------------- threshold
@on_paths(ALL_PATHS)
def test_threshold_mode_is_exact_and_draws_nothing(path):
    """``continue_threshold=t``: terminated exactly where p < t, whatever the seed."""
    n = None if path in ("torchrl", "gym") else N
    probs = [0.1, 0.49, 0.5, 0.51, 0.9, 1.0]
    cont = constant(0.3) if n is None else by_row(probs)
    extra = {"autoreset_mode": AutoresetMode.SAME_STEP} if path == "vector" else {}
    env = build(path, cont, n=n, continue_threshold=0.5, **extra)
    a, _ = run(path, env, 5, seed=0, n=n)
    b, _ = run(path, env, 5, seed=1, n=n)
    want = True if n is None else [p < 0.5 for p in probs]
    assert a.tolist() == b.tolist() == [want] * 5


def test_threshold_one_ends_everything_but_certainty():
    env = build("torchrl", by_row([1.0, 0.999, 0.0, 1.0, 0.5, 1.0]), n=N, continue_threshold=1.0)
    ended = env.rollout(3, break_when_any_done=False)["next", "terminated"].squeeze(-1)
    assert ended[:, 0].tolist() == [False, True, True, False, True, False]


# ----------------------------------------------------------- terminal OR drawn, time limits
def test_terminal_fn_and_continue_fn_together_end_on_either():
    """terminated = terminal_fn's flag OR the drawn end: env 0 always ends by the hard rule
    (though its head says continue), env 1 by its head, env 2 never."""

    def terminal_fn(model, next_state):
        return torch.arange(next_state.shape[0]) == 0

    env = build("torchrl", by_row([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), n=N, terminal_fn=terminal_fn)
    ended = env.rollout(4, break_when_any_done=False)["next", "terminated"].squeeze(-1)
    assert ended[:, 0].tolist() == [True, True, False, False, False, False]
    assert ended.all(1).tolist() == [True, True, False, False, False, False]


def test_a_transition_terminated_flag_is_ored_too():
    def ends_row_2(model, state, action):
        out = step_counter(model, state, action)
        return {**out, "terminated": torch.arange(state.shape[0]) == 2}

    env = WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=ends_row_2, continue_fn=constant(1.0),
                        batch_size=(N,))
    ended = env.rollout(2, break_when_any_done=False)["next", "terminated"].squeeze(-1)
    assert ended[:, 0].tolist() == [False, False, True, False, False, False]


@on_paths(ALL_PATHS)
def test_time_limits_are_unaffected(path):
    """A head that always continues never terminates; the time limit truncates as before."""
    n = None if path in ("torchrl", "gym") else N
    env = build(path, constant(1.0), n=n, max_episode_steps=3)
    driver = Driver(path, env)
    driver.reset(seed=0)
    for t in range(3):
        _, _, terminated, truncated, _ = driver.step(zero_actions(n))
        assert not np.any(terminated) and np.all(np.asarray(truncated) == (t == 2))


# --------------------------------------------------------------------- key and spec
def test_torchrl_key_values_and_spec():
    """``("next", "continue_prob")`` is float32 ``[*B, 1]`` holding continue_fn's values, 1 at a
    reset, declared in the observation spec (check_env_specs passes)."""
    probs = [0.25, 0.5, 0.75, 1.0, 0.0, 0.125]
    env = build("torchrl", by_row(probs), n=N)
    check_env_specs(env, seed=0)
    spec = env.observation_spec["continue_prob"]
    assert spec.shape == (N, 1) and spec.dtype == torch.float32
    td = env.rollout(3, break_when_any_done=False)
    nxt = td["next", "continue_prob"]
    assert nxt.dtype == torch.float32 and nxt.shape == (N, 3, 1)
    assert nxt[:, :, 0].tolist() == [[p] * 3 for p in probs]
    reset = env.reset()
    assert reset["continue_prob"].tolist() == [[1.0]] * N


def test_torchrl_unbatched_key_and_spec():
    env = build("torchrl", constant(0.375))
    check_env_specs(env, seed=0)
    out = env.rand_step(env.reset())
    assert out["next", "continue_prob"].tolist() == [0.375]


def test_continue_prob_accepts_the_documented_return_forms():
    """``[*B]``, ``[*B, 1]``, numpy float64 and (unbatched) a Python float or a 1-element array."""
    def hook(form):
        return lambda model, next_state: form(next_state)

    forms = [lambda s: torch.full((N,), 0.5), lambda s: torch.full((N, 1), 0.5),
             lambda s: np.full(N, 0.5), lambda s: torch.full((N,), 0.5, dtype=torch.float64)]
    for form in forms:
        env = build("torchrl", hook(form), n=N)
        assert env.rand_step(env.reset())["next", "continue_prob"].tolist() == [[0.5]] * N
    for form in (lambda s: 0.5, lambda s: np.array([0.5]), lambda s: torch.tensor(0.5)):
        env = build("gym", hook(form))
        env.reset(seed=0)
        assert env.step(zero_actions())[4]["continue_prob"] == 0.5


def test_given_start_states_start_with_continue_prob_one():
    env = build("torchrl", constant(0.5), n=N)
    start = TensorDict({"model_state": torch.zeros(N, 3)}, batch_size=(N,))
    td = env.rollout(2, tensordict=start, auto_reset=False, break_when_any_done=False)
    assert td["continue_prob"][:, 0].tolist() == [[1.0]] * N
    assert env.reset(start, set_state=True)["continue_prob"].tolist() == [[1.0]] * N


def test_repr_says_how_terminated_is_made():
    assert "continue_fn = " in repr(build("torchrl", constant(0.5)))
    assert "drawn from it with the env's generator" in repr(build("torchrl", constant(0.5)))
    assert "terminated where it is < 0.25" in repr(build("torchrl", constant(0.5), continue_threshold=0.25))


# ------------------------------------------------------------------------- gradients
class ContinueHead(nn.Module):
    """A learned continue head over the state reached: sigmoid(w . state + b)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 0.5, -0.5]))
        self.b = nn.Parameter(torch.tensor(1.0))

    def forward(self, state, action):
        return step_counter(self, state, action)


def test_the_gradient_flows_through_continue_prob():
    """With grad enabled (the TorchRL path's differentiable imagination) continue_prob keeps
    its graph: a loss weighting returns by it back-propagates into the continue head and,
    through the states the actions reach, into the policy."""
    head = ContinueHead()

    def continue_fn(model, next_state):
        return torch.sigmoid(next_state @ model.w + model.b)

    env = WorldModelEnv(head, OBS, ACT, reset_fn=reset_zeros, continue_fn=continue_fn, batch_size=(N,))
    policy = TensorDictModule(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), in_keys=["observation"], out_keys=["action"])
    td = env.rollout(4, policy, break_when_any_done=False)
    weights = td["next", "continue_prob"].squeeze(-1).cumprod(-1)
    assert weights.requires_grad
    (weights * td["next", "reward"].squeeze(-1)).sum().backward()
    assert head.w.grad is not None and bool(head.w.grad.abs().sum() > 0) and head.b.grad is not None
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in policy.parameters())


def test_the_exports_hand_out_plain_numbers():
    head = ContinueHead()

    def continue_fn(model, next_state):
        return torch.sigmoid(next_state @ model.w + model.b)

    env = WorldModelEnv(head, OBS, ACT, reset_fn=reset_zeros, continue_fn=continue_fn, batch_size=(N,))
    vec = env.to_gymnasium()
    vec.reset(seed=0)
    info = vec.step(zero_actions(N))[4]
    assert info["continue_prob"].dtype == np.float32 and info["continue_prob"].shape == (N,)
    sb3 = env.to_sb3()
    sb3.reset()
    sb3.step_async(zero_actions(N))
    infos = sb3.step_wait()[3]
    assert all(type(i["continue_prob"]) is float for i in infos)
    np.testing.assert_allclose([i["continue_prob"] for i in infos], info["continue_prob"], rtol=1e-6)


# ----------------------------------------------------------------------- partial resets
@pytest.mark.parametrize("rollout", ["fast", "EnvBase"])
def test_partial_resets_keep_the_other_rows_exact(rollout):
    """Envs ending by the drawn flag restart alone: every other env continues from its exact
    next observation, state, step count and continue_prob; a restarted env starts at 1."""
    env = build("torchrl", by_row([0.5, 0.9, 0.7, 1.0, 0.3, 0.8]), n=N, seed=9)
    extra = {} if rollout == "fast" else {"callback": lambda env, td: None}
    td = env.rollout(12, break_when_any_done=False, **extra)
    done = td["next", "done"].squeeze(-1)
    assert done.any() and not done.all()
    for t in range(11):
        for i in range(N):
            if done[i, t]:
                assert int(td[i, t + 1]["elapsed_steps"]) == 0 and td[i, t + 1]["continue_prob"].item() == 1.0
                assert td[i, t + 1]["model_state"].tolist() == [0.0, 0.0, 0.0]
            else:
                for key in ("observation", "model_state", "elapsed_steps", "continue_prob"):
                    assert torch.equal(td[i, t + 1][key], td[i, t]["next", key]), (i, t, key)


def test_a_vector_partial_reset_keeps_the_other_rows_exact():
    envs = build("vector", constant(1.0), n=N, autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0)
    for _ in range(3):
        envs.step(zero_actions(N))
    before = envs.state.clone()
    mask = np.array([True, False, True, False, False, False])
    envs.reset(options={"reset_mask": mask})
    assert torch.equal(envs.state[~torch.as_tensor(mask)], before[~torch.as_tensor(mask)])
    assert envs.state[torch.as_tensor(mask)].abs().sum() == 0
    obs, _, terminated, _, infos = envs.step(zero_actions(N))
    assert obs[:, 0].tolist() == [1.0, 4.0, 1.0, 4.0, 4.0, 4.0] and not terminated.any()
    assert infos["continue_prob"].tolist() == [1.0] * N


# ------------------------------------------------------------------------ bad input
def _rows(shape):
    return shape[:-1]


BAD_OUTPUTS = [
    # (id, continue_fn output from the state reached, error type, message pattern)
    ("above one", lambda s: torch.full(_rows(s.shape), 1.5), ValueError,
     r"continue_fn returned values outside \[0, 1\](?: at env index \[0, 1, 2, 3, 4, 5\])?: got \[1\.5.*"
     r"probability of CONTINUING"),
    ("negative", lambda s: torch.full(_rows(s.shape), -0.25), ValueError,
     r"continue_fn returned values outside \[0, 1\].*got \[-0\.25"),
    ("bool", lambda s: s[..., 0] > 100, TypeError,
     r"continue_fn \(read as the continue probability\): continue_prob: expected the probability of continuing "
     r"\(floats in \[0, 1\]\), got bool values: a bool is almost surely a terminal flag .* pass it as terminal_fn"),
    ("int", lambda s: torch.ones(_rows(s.shape), dtype=torch.int64), TypeError,
     r"continue_fn .*continue_prob: expected the probability of continuing as floats in \[0, 1\], got dtype "
     r"torch\.int64"),
    ("wrong shape", lambda s: torch.full((*_rows(s.shape), 2), 0.5), ValueError,
     r"continue_fn \(read as the continue probability\): continue_prob: expected (a scalar|shape \(6,\) or "
     r"\(6, 1\)), got shape \((6, 2|2,)\)"),
    ("nan", lambda s: torch.full(_rows(s.shape), float("nan")), ValueError,
     r"continue_fn returned NaN/inf in \[\"continue_prob \(continue_fn's output\)\"\].*nan_policy='truncate'"),
    ("a string", lambda s: "0.5", TypeError, r"continue_fn .*continue_prob: expected numbers, got str"),
]


@on_paths(ALL_PATHS)
@pytest.mark.parametrize("case", BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
def test_bad_continue_outputs_are_refused_naming_the_hook(path, case):
    _, output, error, pattern = case
    n = None if path in ("torchrl", "gym") else N
    env = build(path, lambda model, next_state: output(next_state), n=n)
    driver = Driver(path, env)
    driver.reset(seed=0)
    with pytest.raises(error, match=pattern):
        driver.step(zero_actions(n))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_range_check_is_finite_exactly_on_the_unit_interval(dtype):
    """``probability_check`` (what the step's one NaN/inf reduction reads) is finite for every
    probability, the interval's ends and the values next to them included, and non-finite for
    anything else, in every float dtype."""
    from torchwm_rl.validation import probability_check

    one, zero = torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)
    inside = torch.stack([zero, one, -zero, torch.nextafter(one, zero), torch.nextafter(zero, one),
                          torch.tensor(0.5, dtype=dtype), torch.tensor(1e-3, dtype=dtype)])
    outside = torch.stack([torch.nextafter(one, one + 1), torch.nextafter(zero, -one), one * 2, -one,
                           torch.tensor(float("nan"), dtype=dtype), torch.tensor(float("inf"), dtype=dtype),
                           torch.tensor(-float("inf"), dtype=dtype)])
    assert torch.isfinite(probability_check(inside)).all()
    assert not torch.isfinite(probability_check(outside)).any()
    dense = torch.rand(100_000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.isfinite(probability_check(dense)).all()


def test_a_scalar_for_a_batched_env_is_refused():
    env = build("torchrl", lambda model, next_state: 0.5, n=N)
    with pytest.raises(ValueError, match=r"continue_fn .*continue_prob: a batched env needs one value per env"):
        env.rand_step(env.reset())


@pytest.mark.parametrize("value", [1.5, -0.25])
def test_a_value_outside_the_unit_interval_is_refused_whatever_the_nan_policy(value):
    env = build("torchrl", constant(value), n=N, nan_policy="truncate")
    with pytest.raises(ValueError, match=r"continue_fn returned values outside \[0, 1\] at env index"):
        env.rand_step(env.reset())


def test_only_the_offending_rows_are_named():
    env = build("torchrl", by_row([0.5, 1.25, 0.5, 0.5, -1.0, 0.5]), n=N)
    with pytest.raises(ValueError, match=re.escape("outside [0, 1] at env index [1, 4]: got [1.25, -1.0]")):
        env.rand_step(env.reset())


@on_paths(ALL_PATHS)
def test_a_nan_probability_truncates_its_row_under_truncate(path):
    """nan_policy='truncate': a NaN probability ends that env's episode as truncated (not a drawn
    end), flagged nonfinite, its continue_prob reading 0; the other envs run on."""
    n = None if path in ("torchrl", "gym") else N

    def continue_fn(model, next_state):
        p = torch.full(next_state.shape[:-1], 1.0)
        p.view(-1)[0] = float("nan")
        return p

    env = build(path, continue_fn, n=n, nan_policy="truncate")
    driver = Driver(path, env)
    driver.reset(seed=0)
    _, _, terminated, truncated, info = driver.step(zero_actions(n))
    assert not np.any(terminated)
    assert np.asarray(truncated).reshape(-1).tolist() == [True] + [False] * ((n or 1) - 1)
    if path == "torchrl":
        prob = driver.td["continue_prob"].reshape(-1).tolist()
    elif path == "sb3":
        prob = [i["continue_prob"] for i in info]
        assert info[0]["nonfinite"]
    else:
        prob = np.asarray(info["continue_prob"]).reshape(-1).tolist()
        assert np.asarray(info["nonfinite"]).reshape(-1)[0]
    assert prob == [0.0] + [1.0] * ((n or 1) - 1)


def test_nan_policy_ignore_skips_the_value_checks():
    """As for uncertainty_fn, the value checks ride on the NaN check: 'ignore' passes values
    through unchecked (documented on ModelAdapter)."""
    env = build("torchrl", constant(1.5), n=N, nan_policy="ignore")
    out = env.rand_step(env.reset())
    assert out["next", "continue_prob"].tolist() == [[1.5]] * N and not out["next", "terminated"].any()


@pytest.mark.parametrize("threshold", [0, 0.0, 1.5, -0.1, float("nan"), True, "0.5"])
def test_a_bad_threshold_is_refused(threshold):
    for cls in (WorldModelEnv, GymWorldModelEnv):
        with pytest.raises(ValueError, match=re.escape("continue_threshold: expected None (terminated is drawn from "
                                                       "continue_fn's probability) or a number in (0, 1]")):
            cls(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, continue_fn=constant(0.5),
                continue_threshold=threshold)


def test_a_threshold_without_continue_fn_is_refused():
    with pytest.raises(ValueError, match=r"continue_threshold=0\.5 needs continue_fn"):
        WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, continue_threshold=0.5)


def test_continue_fn_must_be_callable_and_bindable():
    with pytest.raises(TypeError, match="continue_fn must be callable, got float"):
        WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, continue_fn=0.5)
    with pytest.raises(TypeError, match=r"continue_fn: cannot bind"):
        WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter,
                      continue_fn=lambda model, next_state, obs, action, extra: 0.5)


def test_misspelt_options_are_refused_with_the_right_name():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'continue_treshold'; did you mean "
                                        r"'continue_threshold'"):
        WorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, continue_fn=constant(0.5),
                      continue_treshold=0.5)
    with pytest.raises(TypeError, match=r"did you mean 'continue_fn'"):
        GymWorldModelEnv(None, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, continue_func=constant(0.5))


def test_zoo_make_env_forwards_the_options(monkeypatch):
    """A zoo model whose make_env forwards the model options (as cartpole-pixels does) gets
    continue_fn / continue_threshold through ``zoo.make_env``; a misspelling is refused there."""
    from torchwm_rl import zoo

    module = types.ModuleType("torchwm_rl_test_zoo_head")

    def make_env(model=None, batch_size=(), **options):
        return WorldModelEnv(model, OBS, ACT, reset_fn=reset_zeros, transition_fn=step_counter, batch_size=batch_size,
                             **options)

    module.make_env = make_env
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(zoo._REGISTRY, "headtest", (module.__name__, "CartPole-v1"))
    env = zoo.make_env("headtest", batch_size=(N,), continue_fn=constant(0.5), continue_threshold=0.75)
    assert env.rand_step(env.reset())["next", "terminated"].all()
    with pytest.raises(TypeError, match=r"zoo\.make_env\(\) got an unexpected keyword argument 'continue_threshhold'"):
        zoo.make_env("headtest", continue_fn=constant(0.5), continue_threshhold=0.5)


def test_a_failed_step_leaves_the_stream_as_it_was():
    """A continue_fn that raises leaves the env's generator untouched: the retried steps draw
    what a run without the failure draws."""
    calls = {"n": 0}

    def flaky(model, next_state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("head failed on purpose")
        return torch.full(next_state.shape[:-1], 0.5)

    env = build("torchrl", flaky, n=N, seed=1)
    td = env.reset()
    flags = []
    for _ in range(4):
        try:
            out = env.step(env.rand_action(td))
        except RuntimeError:
            out = env.step(env.rand_action(td))
        flags.append(out["next", "terminated"].squeeze(-1))
        td = out["next"]
    assert torch.equal(torch.stack(flags), torch.stack([u >= 0.5 for u in expected_draws(1, 4, (N,))]))


# ------------------------------------------- issue 22: a NaN latent behind a finite image
IMAGE = gym.spaces.Box(0, 255, shape=(3, 8, 8), dtype=np.uint8)
LATENT_ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
BAD_ROW = 1


class ToyRSSM(nn.Module):
    """A Dreamer-shaped latent: ``{"deter", "stoch"}`` (a dict or a TensorDict), decoded to a
    uint8 channel-first image. At step ``at`` the deterministic part of env ``BAD_ROW`` (env 0
    unbatched) becomes ``bad`` (NaN or inf): its image is a uint8 cast, finite whatever it is."""

    def __init__(self, kind, bad, at=2):
        super().__init__()
        self.kind, self.bad, self.at = kind, bad, at
        self.gru = nn.GRUCell(4 + 2, 4)
        self.decoder = nn.Linear(8, 3 * 8 * 8)

    def latent(self, deter, stoch):
        if self.kind == "tensordict":
            return TensorDict({"deter": deter, "stoch": stoch}, batch_size=deter.shape[:-1])
        return {"deter": deter, "stoch": stoch}

    def decode(self, deter, stoch):
        pixels = torch.sigmoid(self.decoder(torch.cat([deter, stoch], -1))) * 255
        return pixels.reshape(*deter.shape[:-1], 3, 8, 8).to(torch.uint8)  # NaN -> some finite byte

    def reset_fn(self, batch_size=()):
        deter, stoch = torch.zeros(*batch_size, 4), torch.zeros(*batch_size, 4)
        return {"state": self.latent(deter, stoch), "observation": self.decode(deter, stoch)}

    def transition_fn(self, state, action):
        deter, stoch = state["deter"], state["stoch"]
        flat_in = torch.cat([stoch, action], -1).reshape(-1, 6)
        deter = self.gru(flat_in, deter.reshape(-1, 4)).reshape(deter.shape)
        stoch = torch.tanh(deter + stoch + 1.0)
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps >= self.at:
            deter = deter.clone()
            deter.reshape(-1, 4)[BAD_ROW if deter.ndim > 1 else 0, 0] = self.bad
        return {"state": self.latent(deter, stoch), "observation": self.decode(deter, stoch),
                "reward": stoch[..., 0].detach().clone()}


def _rssm_env(path, kind, bad, nan_policy, n):
    model = ToyRSSM(kind, bad).eval()
    return make(path, model, IMAGE, LATENT_ACT, n=n, reset_fn=lambda batch_size=(): model.reset_fn(batch_size),
                transition_fn=lambda state, action: model.transition_fn(state, action), nan_policy=nan_policy)


def _deter(state):
    return np.asarray(state["deter"].detach() if not isinstance(state, dict) else state["deter"])


@pytest.mark.parametrize("path, n", [("torchrl", None), ("gym", None), ("torchrl", N), ("vector", N), ("sb3", N)],
                         ids=["torchrl", "gym", "torchrl-batched", "vector", "sb3"])
@pytest.mark.parametrize("kind", ["dict", "tensordict"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("nan_policy", ["raise", "truncate", "ignore"])
def test_a_nonfinite_rssm_latent_behind_a_uint8_image(path, n, kind, bad, nan_policy):
    """Issue 22: a NaN/inf in the deterministic latent, decoded to a uint8 image that reads
    finite, is caught by every nan_policy mode on every path: 'raise' names the latent entry
    (and the env), 'truncate' ends only that env's episode with its last finite latent,
    'ignore' passes it through."""
    env = _rssm_env(path, kind, bad, nan_policy, n)
    driver = Driver(path, env)
    driver.reset(seed=0)
    actions = np.zeros(LATENT_ACT.shape if n is None else (n, *LATENT_ACT.shape), np.float32)
    obs, *_ = driver.step(actions)
    assert obs.dtype == np.uint8
    if nan_policy == "raise":
        where = "" if n is None else rf" at env index \[{BAD_ROW}\]"
        with pytest.raises(ValueError, match=r"transition_fn returned NaN/inf in \[\"state\['deter'\]\"\]" + where):
            driver.step(actions)
        return
    obs, _, terminated, truncated, info = driver.step(actions)
    assert obs.dtype == np.uint8  # the image is finite either way: only the latent tells
    row = 0 if n is None else BAD_ROW
    if nan_policy == "ignore":
        assert not np.any(truncated)
        if path == "torchrl":
            state = driver.td["model_state"]
        else:  # the SB3 VecEnv has no public state: its snapshot holds it
            state = env._snapshot.state if path == "sb3" else env.state
        assert not np.isfinite(_deter(state).reshape(-1, 4)[row, 0])
        return
    flags = np.asarray(truncated).reshape(-1)
    assert flags.tolist() == [i == row for i in range(n or 1)]
    if path == "torchrl":
        assert driver.td["nonfinite"].reshape(-1).tolist() == flags.tolist()
        # the truncated env's final latent is the finite one its step started from
        assert np.isfinite(_deter(driver.td["model_state"])).all()
    elif path == "sb3":
        assert info[row]["nonfinite"]
    else:
        assert np.asarray(info["nonfinite"]).reshape(-1)[row]
        assert np.isfinite(_deter(env.state)).all()


@pytest.mark.parametrize("bad", [1.25, float("nan")], ids=["outside", "nan"])
@pytest.mark.parametrize("check_every", [None, 2])
def test_env_rollout_reads_the_continue_checks_once_and_raises_the_per_step_error(bad, check_every):
    """env.rollout reads the step checks once per rollout (check_every=None, the default) or
    every K steps: continue_fn's range check and its NaN ride on that deferred reduction, and a
    value going bad at step 4 in env 2 raises what check_every=1 raises, the same text."""
    def continue_fn(model, next_state):
        step = next_state[..., 0]  # step_counter: the step count
        return torch.where((torch.arange(N) == 2) & (step == 4), bad, 0.999)

    messages = []
    for every in (1, check_every):
        env = build("torchrl", continue_fn, n=N, seed=0, check_every=every)
        with pytest.raises(ValueError) as err:
            env.rollout(8, break_when_any_done=False)
        messages.append(str(err.value))
    assert "env index [2]" in messages[0] and messages[1] == messages[0]
