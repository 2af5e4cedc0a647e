"""Atomic steps: a model that raises mid-step (or mid-reset, or in an autoreset) leaves no trace.

After the failure the env's held state, observation, step counts, random streams and pending
seed are exactly what they were, and a retry gives the step a run without the failure gives;
on the Gymnasium env, the TorchRL env (tensor and opaque states), the vector export (next-step
and same-step autoreset) and the SB3 VecEnv. Failures in the exports' conversions and infos are
in ``test_no_trace.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from reliability_models import N, ModelFailure, Scripted, action_for, make, opaque_reset, opaque_transition


def _gym_fingerprint(env):
    snap = env._snapshot
    return {
        "state": snap.state.clone(),
        "observation": snap.observation.clone() if isinstance(snap.observation, torch.Tensor) else snap.observation,
        "elapsed": snap.elapsed.clone(),
        "np_random": env.np_random.bit_generator.state,
        "generator": env.logic.generator.get_state(),
        "pending_seed": env.logic.pending_seed,
    }


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        else:
            assert a == b, key


@pytest.mark.parametrize("bank", [False, True], ids=["reset_hook", "start_state_bank"])
def test_gym_step_that_raises_is_atomic(bank):
    kwargs = {"start_states": torch.rand(7, 3, generator=torch.Generator().manual_seed(1))} if bank else {}
    reference = make("gym", Scripted(), max_episode_steps=3, **kwargs)
    env = make("gym", Scripted(raise_at=3), max_episode_steps=3, **kwargs)
    reference.reset(seed=5)
    env.reset(seed=5)
    for _ in range(2):
        np.testing.assert_array_equal(reference.step(action_for())[0], env.step(action_for())[0])
    before = _gym_fingerprint(env)
    with pytest.raises(ModelFailure):
        env.step(action_for())
    _assert_same(before, _gym_fingerprint(env))
    # the retried step is the step that would have happened, then the time limit still counts
    for _ in range(3):
        expected, got = reference.step(action_for()), env.step(action_for())
        np.testing.assert_array_equal(expected[0], got[0])
        assert expected[1:4] == got[1:4] and expected[4]["elapsed_steps"] == got[4]["elapsed_steps"]
    np.testing.assert_array_equal(reference.reset()[0], env.reset()[0])


def test_gym_reset_that_raises_keeps_state_seed_and_rngs():
    env = make("gym", Scripted(reset_raise_at=2), seed=3)
    env.reset()  # consumes seed 3
    env.step(action_for())
    before = _gym_fingerprint(env)
    with pytest.raises(ModelFailure):
        env.reset(seed=11)
    _assert_same(before, _gym_fingerprint(env))
    env.step(action_for())  # still usable
    obs, _ = env.reset(seed=11)
    np.testing.assert_array_equal(obs, make("gym", Scripted()).reset(seed=11)[0])


def test_a_seed_given_to_the_constructor_survives_a_failed_first_reset():
    env = make("gym", Scripted(reset_raise_at=1), seed=3)
    with pytest.raises(ModelFailure):
        env.reset()
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, make("gym", Scripted()).reset(seed=3)[0])


def test_torchrl_step_that_raises_is_atomic_tensor_state():
    model = Scripted(raise_at=3)
    env = make("torchrl", model, n=N, max_episode_steps=4)
    reference = make("torchrl", Scripted(), n=N, max_episode_steps=4)
    td, ref = env.reset(seed=2), reference.reset(seed=2)
    action = torch.full((N, 3), 0.5)
    for _ in range(2):
        td = env.step_and_maybe_reset(td.set("action", action))[1]
        ref = reference.step_and_maybe_reset(ref.set("action", action))[1]
    td.set("action", action)
    before, generator = td.clone(), env.logic.generator.get_state()
    with pytest.raises(ModelFailure):
        env.step(td)
    assert "next" not in td.keys() and (td == before).all()
    assert torch.equal(env.logic.generator.get_state(), generator)
    for _ in range(4):  # crosses the time limit: auto-reset still happens at the same step
        out, td = env.step_and_maybe_reset(td.set("action", action))
        ref_out, ref = reference.step_and_maybe_reset(ref.set("action", action))
        assert (out.exclude("action") == ref_out.exclude("action")).all()


def test_torchrl_step_that_raises_is_atomic_opaque_state():
    model = Scripted(raise_at=3)
    env = make("torchrl", model, reset_fn=opaque_reset, transition_fn=opaque_transition, seed=1)
    td = env.reset()
    action = torch.full((3,), 0.5)
    for _ in range(2):
        td = env.step_and_maybe_reset(td.set("action", action))[1]
    held, before = env._held_state, td.clone()
    values = held.value.clone()
    with pytest.raises(ModelFailure):
        env.step(td.set("action", action))
    assert env._held_state is held and torch.equal(held.value, values)
    assert "next" not in td.keys() and (td == before.set("action", action)).all()
    out = env.step(td)
    assert torch.allclose(out["next", "observation"], 0.9 * values + 0.05)
    assert out["next", "elapsed_steps"].item() == 3


def _vector_fingerprint(envs):
    fp = _gym_fingerprint(envs)
    fp["needs_reset"] = envs._needs_reset.clone()
    return fp


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("fail", ["step", "autoreset"])
def test_vector_step_that_raises_is_atomic(mode, fail):
    # max_episode_steps=2: step 2 truncates; the autoreset runs in step 3 (NEXT_STEP) or 2 (SAME_STEP)
    autoreset_step = 3 if mode is AutoresetMode.NEXT_STEP else 2
    model = Scripted(raise_at=autoreset_step) if fail == "step" else Scripted(reset_raise_at=3)
    # reset calls: 1 = construction, 2 = reset(seed), 3 = the first autoreset
    kwargs = dict(n=N, max_episode_steps=2, autoreset_mode=mode)
    envs, reference = make("vector", model, **kwargs), make("vector", Scripted(), **kwargs)
    envs.reset(seed=0), reference.reset(seed=0)
    for _ in range(autoreset_step - 1):
        envs.step(action_for(N)), reference.step(action_for(N))
    before = _vector_fingerprint(envs)
    with pytest.raises(ModelFailure):
        envs.step(action_for(N))
    _assert_same(before, _vector_fingerprint(envs))
    for _ in range(3):
        got, expected = envs.step(action_for(N)), reference.step(action_for(N))
        for a, b in zip(got[:4], expected[:4]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fail", ["step", "autoreset"])
def test_sb3_step_that_raises_is_atomic(fail):
    model = Scripted(raise_at=2) if fail == "step" else Scripted(reset_raise_at=3)
    venv, reference = make("sb3", model, n=N, max_episode_steps=2), make("sb3", Scripted(), n=N, max_episode_steps=2)
    venv.seed(0), reference.seed(0)
    venv.reset(), reference.reset()
    venv.step(action_for(N)), reference.step(action_for(N))
    snap = venv._snapshot
    state, elapsed, generator = snap.state.clone(), snap.elapsed.clone(), venv.logic.generator.get_state()
    with pytest.raises(ModelFailure):
        venv.step(action_for(N))
    assert venv._snapshot is snap and torch.equal(snap.state, state) and torch.equal(snap.elapsed, elapsed)
    assert torch.equal(venv.logic.generator.get_state(), generator)
    for _ in range(3):
        got, expected = venv.step(action_for(N)), reference.step(action_for(N))
        for a, b in zip(got[:3], expected[:3]):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- TorchRL: failures after the model ran
class _Noisy:
    """A stochastic model (noise from the env's ``generator``, or from the global torch RNG)
    whose step info lacks the declared key ``"x"`` on step call ``drop_info_at``: the env then
    fails after the model ran (and drew). A reset's info ``"x"`` has a wrong shape on reset call
    ``bad_reset_at`` (the failure comes after the reset hook drew)."""

    def __init__(self, use_generator: bool, drop_info_at=None, bad_reset_at=None):
        self.use_generator, self.drop_info_at, self.bad_reset_at = use_generator, drop_info_at, bad_reset_at
        self.calls = self.reset_calls = 0

    def _noise(self, shape, generator):
        return torch.rand(shape, generator=generator) if self.use_generator else torch.rand(shape)

    def reset_fn(self, model, seed=None, options=None, generator=None):
        self.reset_calls += 1
        state = self._noise((N, 3), generator)
        bad = self.reset_calls == self.bad_reset_at
        return state, state.clone(), {"x": torch.zeros(N + 1 if bad else N)}

    def transition_fn(self, model, state, action, generator=None):
        self.calls += 1
        nxt = 0.5 * state + self._noise(state.shape, generator)
        info = {} if self.calls == self.drop_info_at else {"x": nxt[:, 0]}
        return {"state": nxt, "observation": nxt.clone(), "reward": nxt.sum(-1), "info": info}


def _noisy_env(model):
    from torchwm_rl import WorldModelEnv
    from reliability_models import ACT, OBS

    if model.use_generator:
        reset_fn, transition_fn = model.reset_fn, model.transition_fn
    else:  # hooks that do not take generator: the env swaps its seeded stream into the global RNG
        reset_fn = lambda model_, seed=None, options=None: model.reset_fn(model_, seed, options)  # noqa: E731
        transition_fn = lambda model_, state, action: model.transition_fn(model_, state, action)  # noqa: E731
    return WorldModelEnv(None, OBS, ACT, reset_fn=reset_fn, transition_fn=transition_fn, batch_size=(N,),
                         info_keys=["x"], seed=7)


def _streams(env):
    logic = env.logic
    return (logic.generator.get_state(), logic.hook_generator.get_state(), logic.rng_state, logic.pending_seed)


def _same_streams(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[3] == b[3]
    assert (a[2] is None) == (b[2] is None)
    if a[2] is not None:
        assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))


@pytest.mark.parametrize("use_generator", [True, False], ids=["generator", "global-rng"])
def test_torchrl_step_that_fails_after_the_model_ran_is_atomic(use_generator):
    """The step info lacks a declared key: the error comes after the model drew from the env's
    stream. The streams are as before the call, and the retried step is the reference's."""
    env = _noisy_env(_Noisy(use_generator, drop_info_at=4))  # call 1: the info_keys probe
    reference = _noisy_env(_Noisy(use_generator))
    td, ref = env.reset(), reference.reset()
    action = torch.full((N, 3), 0.5)
    for _ in range(2):
        td = env.step(td.set("action", action))["next"]
        ref = reference.step(ref.set("action", action))["next"]
    before = _streams(env)
    with pytest.raises(KeyError, match="'x'"):
        env.step(td.set("action", action))
    _same_streams(before, _streams(env))
    for _ in range(2):  # the retry is the step a run without the failure gives
        out = env.step(td.set("action", action))["next"]
        ref_out = reference.step(ref.set("action", action))["next"]
        assert torch.equal(out["observation"], ref_out["observation"]) and torch.equal(out["x"], ref_out["x"])
        td, ref = out, ref_out


@pytest.mark.parametrize("use_generator", [True, False], ids=["generator", "global-rng"])
def test_torchrl_reset_that_fails_after_the_hook_ran_is_atomic(use_generator):
    """The reset info has a wrong shape: the error comes after the reset hook drew (and after
    the constructor's seed was taken). The streams and the pending seed are as before."""
    env = _noisy_env(_Noisy(use_generator, bad_reset_at=2))  # reset call 1: the constructor's probe
    reference = _noisy_env(_Noisy(use_generator))
    before = _streams(env)
    with pytest.raises(ValueError, match=r"info\['x'\]"):
        env.reset()
    _same_streams(before, _streams(env))
    assert torch.equal(env.reset()["observation"], reference.reset()["observation"])
