"""A call that fails leaves no trace, and nothing handed out aliases the model's tensors.

Covers the exports' side of the adversarial battery (issue 13): failures in conversions and
infos, failures during an autoreset (the random streams are rolled back, so a retry gives what a
run without the failure gives), the vector export's next-step autoreset never stepping a state
past an episode end, refused non-bool reset masks, and flags that must not alias the model's
buffers. Observations handed out are the caller's: writing into them cannot change the env.
(A model that raises mid-step on every path: ``test_atomic_steps.py``.)
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from harness import Driver, on_paths
from reliability_models import Scripted, action_for, make
from torchwm_rl import GymWorldModelEnv, WorldModelEnv

BOX = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 3


class Flaky:
    """Random dynamics (from the env's generator) that can fail on chosen calls: the transition
    on call ``fail_step`` (info of an unconvertible dtype) and the reset on call ``fail_reset``."""

    def __init__(self, fail_step=None, fail_reset=None):
        self.steps = self.resets = 0
        self.fail_step, self.fail_reset = fail_step, fail_reset

    def reset_fn(self, model, seed=None, options=None, batch_size=(), *, generator):
        self.resets += 1
        if self.resets == self.fail_reset:
            raise RuntimeError("reset failed on purpose")
        return torch.rand(*batch_size, 2, generator=generator) * 0.2

    def transition_fn(self, model, state, action, *, generator):
        self.steps += 1
        nxt = state + 0.3 + 0.1 * torch.rand(state.shape, generator=generator)
        info = {"noise": nxt.sum(-1)}
        if self.steps == self.fail_step:
            info = {"noise": torch.empty(nxt.shape[:-1], device="meta")}  # no data to convert: fails
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1), "terminated": nxt[..., 0] > 1.0,
                "info": info}


def _make(kind: str, model: Flaky):
    hooks = dict(reset_fn=model.reset_fn, transition_fn=model.transition_fn)
    if kind == "gym":
        return GymWorldModelEnv(model, BOX, ACT, seed=0, **hooks)
    env = WorldModelEnv(model, BOX, ACT, batch_size=(N,), seed=0, **hooks)
    return env.to_gymnasium() if kind == "vector" else env.to_sb3()


def _drive(kind: str, env, steps: int, retry: bool):
    """Observations and rewards of ``steps`` steps of the harness driver; with ``retry`` a failed
    call is repeated."""
    out = []

    def call(fn):
        try:
            return fn()
        except (RuntimeError, TypeError):
            if not retry:
                raise
            return fn()

    driver = Driver(kind, env, action=np.zeros((N, 2) if kind != "gym" else 2, np.float32))
    out.append(call(lambda: driver.reset(seed=0 if kind == "vector" else None)))
    for _ in range(steps):
        obs, reward, *_ = call(driver.step)
        out.append(np.asarray(obs).copy())
        out.append(np.asarray(reward, dtype=np.float64).copy())
        if kind == "gym" and bool(np.any(np.asarray(obs)[..., 0] > 1.0)):
            out.append(call(driver.reset))
    return out


@pytest.mark.parametrize("kind", ["gym", "vector", "sb3"])
@pytest.mark.parametrize("failure", ["step", "reset"])
def test_a_failed_call_leaves_no_trace_and_a_retry_gives_the_unfailed_run(kind, failure):
    steps = 8
    clean = _drive(kind, _make(kind, Flaky()), steps, retry=False)
    # the 4th transition call fails in conversion; or the first reset after an episode end fails
    # (the batched envs reset once at construction and once in reset(): the 3rd is an autoreset)
    first_end = 2 if kind == "gym" else 3
    flaky = Flaky(fail_step=4) if failure == "step" else Flaky(fail_reset=first_end)
    retried = _drive(kind, _make(kind, flaky), steps, retry=True)
    if failure == "step":
        assert flaky.steps == steps + 1  # the failed step really happened, and was retried
    else:
        assert flaky.resets > first_end
    assert len(clean) == len(retried)
    for a, b in zip(clean, retried):
        np.testing.assert_array_equal(a, b)


def test_failed_conversion_in_a_single_env_does_not_advance_it():
    model = Flaky(fail_step=1)
    env = _make("gym", model)
    env.reset()
    before = env.state.clone()
    with pytest.raises(NotImplementedError, match="meta"):
        env.step(np.zeros(2, np.float32))
    torch.testing.assert_close(env.state, before)
    *_, info = env.step(np.zeros(2, np.float32))
    assert info["elapsed_steps"] == 1  # the failed step did not count


def test_vector_next_step_autoreset_never_steps_a_state_past_the_end():
    """A model that raises outside its domain (past an episode end) works in the vector
    export's default mode: the envs restarting in a step are reset before the model call."""

    def reset(model, seed=None, options=None, batch_size=()):
        return torch.zeros(*batch_size, 2)

    def transition(model, state, action):
        if bool((state[..., 0] >= 1.0).any()):
            raise ValueError("stepped a state past the episode end")
        nxt = state + torch.tensor([0.5, 0.0]) * (1 + torch.arange(N).unsqueeze(-1))
        return {"state": nxt, "observation": nxt, "reward": nxt[..., 0], "terminated": nxt[..., 0] >= 1.0}

    envs = WorldModelEnv(object(), BOX, ACT, reset_fn=reset, transition_fn=transition, batch_size=(N,)).to_gymnasium()
    envs.reset(seed=0)
    ended = np.zeros(N, dtype=bool)
    for _ in range(6):
        _, _, terminated, _, _ = envs.step(np.zeros((N, 2), np.float32))
        ended |= terminated
    assert ended.all()  # every env reached its end and restarted


def test_vector_reset_mask_must_be_bool():
    envs = _make("vector", Flaky())
    envs.reset(seed=0)
    for mask in ([1, 0, 1], np.array([1.0, 0.0, 1.0])):
        with pytest.raises(TypeError, match=re.escape("reset_mask: expected a bool mask of shape (3,), got dtype")):
            envs.reset(options={"reset_mask": mask})
    envs.reset(options={"reset_mask": np.array([True, False, True])})


@pytest.mark.parametrize("kind", ["vector", "sb3"])
def test_flags_do_not_alias_a_buffer_the_model_reuses(kind):
    buffer = torch.zeros(N, dtype=torch.bool)

    def reset(model, seed=None, options=None, batch_size=()):
        return torch.zeros(*batch_size, 2)

    def transition(model, state, action):
        nxt = state + 1.0
        buffer.copy_(nxt[..., 0] > 1.5)  # the model writes its flags into one preallocated buffer
        return {"state": nxt, "observation": nxt, "terminated": buffer}

    env = WorldModelEnv(object(), BOX, ACT, reset_fn=reset, transition_fn=transition, batch_size=(N,))
    env = env.to_gymnasium() if kind == "vector" else env.to_sb3()
    env.reset() if kind == "sb3" else env.reset(seed=0)
    first = env.step(np.zeros((N, 2), np.float32))
    flags = first[2].copy()
    assert not flags.any()
    env.step(np.zeros((N, 2), np.float32))  # the buffer now holds True
    np.testing.assert_array_equal(first[2], flags)


def test_configuration_that_would_be_read_one_way_is_refused():
    """max_episode_steps 2.5 (was 2), inf/nan/"3"/True; a Tuple space (failed at the first
    value); a bank with fewer state rows than observation rows (failed at a random reset)."""
    hooks = dict(reset_fn=lambda: torch.zeros(2), transition_fn=lambda s, a: s)
    for bad in (2.5, float("inf"), float("nan"), "3", True):
        with pytest.raises(TypeError, match="max_episode_steps: expected a positive int or one per env"):
            GymWorldModelEnv(object(), BOX, ACT, max_episode_steps=bad, **hooks)
    with pytest.raises(TypeError, match=re.escape("observation_space: Tuple spaces are not supported")):
        GymWorldModelEnv(object(), gym.spaces.Tuple((BOX, BOX)), ACT, **hooks)
    bank = {"observation": torch.zeros(5, 2), "state": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match=re.escape("start_states: 'state' has 3 rows but 'observation' has 5")):
        GymWorldModelEnv(object(), BOX, ACT, start_states=bank, transition_fn=lambda s, a: s)


def test_partial_reset_returning_only_the_masked_rows_says_to_return_all():
    def reset(model, batch_size=(), reset_mask=None):
        rows = batch_size[0] if reset_mask is None else int(reset_mask.sum())
        return torch.zeros(rows, 2)

    envs = WorldModelEnv(object(), BOX, ACT, reset_fn=reset, transition_fn=lambda s, a: {"state": s, "observation": s},
                         batch_size=(N,)).to_gymnasium()
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("a partial reset still computes the full batch: return all 3 rows")):
        envs.reset(options={"reset_mask": np.array([True, False, False])})


def test_vector_info_key_colliding_with_a_mask_is_refused():
    def transition(model, state, action):
        return {"state": state, "observation": state, "info": {"x": state[..., 0], "_x": state[..., 1]}}

    envs = WorldModelEnv(object(), BOX, ACT, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
                         transition_fn=transition, batch_size=(N,)).to_gymnasium()
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("info: keys 'x' and '_x' collide")):
        envs.step(np.zeros((N, 2), np.float32))


@pytest.mark.parametrize("fast", [True, False], ids=["env.rollout", "EnvBase.rollout"])
def test_a_model_writing_into_one_buffer_gives_a_rollout_of_every_steps_values(fast):
    """Tensors the model returns are not kept by reference when it reuses their memory: each
    recorded step holds its own values (observation, state, reward, flags)."""
    from torchrl.envs import EnvBase

    buffers = {"state": torch.zeros(N, 2), "reward": torch.zeros(N), "done": torch.zeros(N, dtype=torch.bool)}

    def reset(model, batch_size=()):
        return torch.zeros(*batch_size, 2)

    def transition(model, state, action):
        torch.add(state, 1.0, out=buffers["state"])
        torch.sum(buffers["state"], -1, out=buffers["reward"])
        torch.gt(buffers["state"][..., 0], 2.5, out=buffers["done"])
        return {"state": buffers["state"], "observation": buffers["state"], "reward": buffers["reward"],
                "terminated": buffers["done"]}

    env = WorldModelEnv(object(), BOX, ACT, reset_fn=reset, transition_fn=transition, batch_size=(N,))
    rollout = env.rollout(4, break_when_any_done=False) if fast else EnvBase.rollout(env, 4, break_when_any_done=False)
    obs = rollout["next", "observation"][0, :, 0].tolist()
    assert obs[:3] == [1.0, 2.0, 3.0]  # each step's own value (then the auto-reset restarts at 1)
    assert rollout["next", "reward"][0, :3, 0].tolist() == [2.0, 4.0, 6.0]
    assert rollout["next", "terminated"][0, :3, 0].tolist() == [False, False, True]


def test_writing_into_the_observation_never_changes_the_model_state():
    env = WorldModelEnv(object(), BOX, ACT, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
                        transition_fn=lambda s, a: s + 1.0, batch_size=(N,))  # the observation is the state
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    out = env.step(td)["next"]
    out["observation"].mul_(100.0)
    assert out["model_state"].tolist() == [[1.0, 1.0]] * N


def test_tensordict_key_collisions_and_batch_sizes_are_refused():
    hooks = dict(reset_fn=lambda: {"elapsed_steps": torch.zeros(2), "pos": torch.zeros(2)}, transition_fn=lambda s, a: s)
    space = gym.spaces.Dict({"elapsed_steps": BOX, "pos": BOX})
    with pytest.raises(ValueError, match=re.escape("key(s) ['elapsed_steps'] collide with the tensordict's own keys")):
        WorldModelEnv(object(), space, ACT, **hooks)
    hooks = dict(reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2), transition_fn=lambda s, a: s)
    for bad in ((0,), (-1,), (2, 3)):
        with pytest.raises(ValueError, match=re.escape("batch_size must be () or (N,) with N >= 1")):
            WorldModelEnv(object(), BOX, ACT, batch_size=bad, **hooks)
    assert WorldModelEnv(object(), BOX, ACT, batch_size=4, **hooks).batch_size == torch.Size([4])  # N is (N,)


def test_a_nan_action_is_blamed_on_the_policy_not_the_model():
    env = GymWorldModelEnv(object(), BOX, ACT, reset_fn=lambda: torch.zeros(2),
                           transition_fn=lambda s, a: {"state": s + a, "observation": s + a})
    env.reset()
    with pytest.raises(ValueError, match=re.escape("the action was NaN/inf (the policy's output;")):
        env.step(np.array([np.nan, 0.0], np.float32))


def test_a_torchrl_view_of_a_gymnasium_env_leaves_its_seed_and_streams_alone():
    """WorldModelEnv.from_logic (used by `torchwm-rl check`) probes a reset to build its specs:
    the Gymnasium env it views keeps its pending seed and random streams."""
    def build():
        model = Flaky()
        return GymWorldModelEnv(model, BOX, ACT, seed=5, reset_fn=model.reset_fn, transition_fn=model.transition_fn)

    alone = build()
    expected = [alone.reset()[0], alone.step(np.zeros(2, np.float32))[0]]
    viewed = build()
    WorldModelEnv.from_logic(viewed.logic)
    got = [viewed.reset()[0], viewed.step(np.zeros(2, np.float32))[0]]
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_a_failed_step_after_an_autoreset_keeps_the_fixed_ensemble_members(monkeypatch):
    """The transaction also restores an ensemble's "fixed" members (the autoreset redraws them)."""
    import torchwm_rl.sb3 as sb3_module

    E = 3

    def reset(model, batch_size=(), *, generator):
        return torch.rand(*batch_size, 2, generator=generator)

    def transition(model, state, action):
        nxt = state.unsqueeze(0) + torch.arange(E, dtype=torch.float32).reshape(E, 1, 1) + 0.5
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1), "terminated": nxt[..., 0] > 2.0}

    def build():
        env = WorldModelEnv(object(), BOX, ACT, reset_fn=reset, transition_fn=transition, batch_size=(8,),
                            seed=11, ensemble_size=E, propagation="fixed")
        venv = env.to_sb3()
        venv.seed(11)
        venv.reset()
        return venv

    action = np.zeros((8, 2), np.float32)
    clean = build()
    want = [clean.step(action)[1] for _ in range(4)]
    venv = build()
    got = [venv.step(action)[1]]
    real = sb3_module.observation_to_numpy
    calls = {"n": 0}

    def failing(*args, **kwargs):  # the conversion right after the step's autoreset fails once
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sb3_module, "observation_to_numpy", failing)
    for _ in range(3):
        try:
            got.append(venv.step(action)[1])
        except KeyboardInterrupt:
            got.append(venv.step(action)[1])
    assert calls["n"] >= 2
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_vector_reset_takes_a_seed_list_only_as_gymnasium_means_it():
    envs = _make("vector", Flaky())
    a = envs.reset(seed=[4, 5, 6])[0]
    b = envs.reset(seed=4)[0]
    np.testing.assert_array_equal(a, b)  # [s, s+1, s+2] is what reset(seed=s) means
    with pytest.raises(ValueError, match=re.escape("a list must be [s, s+1, ..., s+2]")):
        envs.reset(seed=[1, 99, 98])


# --------------------------------------------------------------------------------------------
# arrays handed out are the caller's: writing into them cannot change the env


def _obs_is_state_reset(model, seed=None, options=None):
    mask = (options or {}).get("reset_mask")
    return torch.full((3,) if mask is None else (int(mask.shape[0]), 3), 0.5)


def _obs_is_state_transition(model, state, action):
    return 0.5 * state + 0.1  # no state returned: the observation is the model state


@on_paths(["gym", "vector", "sb3"])
def test_writing_into_returned_observations_does_not_touch_the_env(path):
    n = None if path == "gym" else 2
    env = make(path, Scripted(), n=n, reset_fn=_obs_is_state_reset, transition_fn=_obs_is_state_transition)
    driver = Driver(path, env)
    obs = driver.reset(seed=0)
    obs *= 0.0  # e.g. in-place normalization by the caller
    np.testing.assert_allclose(driver.step(action_for(n))[0], np.full_like(obs, 0.35), rtol=1e-6)
    obs, _, _, _, info = driver.step(action_for(n))
    obs += 1.0
    if path == "gym":
        info["model_state"] += 1.0
    np.testing.assert_allclose(driver.step(action_for(n))[0], np.full_like(obs, 0.5 * 0.275 + 0.1), rtol=1e-6)
