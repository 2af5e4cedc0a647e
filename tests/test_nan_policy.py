"""The NaN/inf policy (``nan_policy``: "raise" by default, "truncate", "ignore").

"raise" names the hook, the key and (batched) the env index; a reset or a start-state bank with
NaN/inf is refused under every policy; "truncate" ends only the episode that produced it, with
the last finite observation as its final one; "ignore" passes values through. Each behaviour is
asserted on the TorchRL env AND the Gymnasium env (and on the vector / SB3 exports for batched
cases). Next-step autoreset computes one model call for all N envs, including envs that restart
on this step: NaN in those thrown-away rows must not raise (or flag) anything.

Errors for malformed model output (shapes, dtypes, structure) are in ``test_errors.py``; NaN
actions under ``check_actions`` are in ``test_action_checks.py``.
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from models import DictModel, dict_reset, dict_spaces, dict_transition
from harness import BATCHED, UNBATCHED, Driver, on_paths
from reliability_models import (
    N,
    SOURCES,
    Scripted,
    action_for,
    first_reset,
    first_step,
    make,
    source_kwargs,
    with_value,
)
from torchwm_rl import WorldModelEnv


NONFINITE = [float("nan"), float("inf"), -float("inf")]
NONFINITE_IDS = ["nan", "inf", "-inf"]


def _nan_in_row(row, key="observation", value=float("nan")):
    """A ``bad`` that puts ``value`` (NaN by default) in the first entry of env ``row`` of ``key``
    (row None: unbatched)."""

    def bad(out):
        out = dict(out)
        tensor = out[key].clone()
        if row is None:
            tensor.view(-1)[0] = value
        else:
            tensor[row].view(-1)[0] = value  # one entry of that env's row
        out[key] = tensor
        return out

    return bad


@on_paths(UNBATCHED)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", ["observation", "reward"])
@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
def test_nonfinite_raises_by_default_naming_the_hook_and_key(path, source, key, value):
    message = f"{source} returned NaN/inf in ['{key}']; pass nan_policy='truncate'"
    with pytest.raises(ValueError, match=re.escape(message)):
        first_step(path, _nan_in_row(None, key, value), **source_kwargs(source))


@on_paths(UNBATCHED)
def test_nonfinite_dict_observation_names_the_entry(path):
    obs_space, act_space = dict_spaces()

    def transition(model, state, action):
        out = list(dict_transition(model, state, action))
        out[1] = {**out[1], "position": torch.full((6,), float("nan"))}
        return tuple(out)

    driver = Driver(path, make(path, DictModel(), obs_space, act_space, reset_fn=dict_reset, transition_fn=transition))
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("""transition_fn returned NaN/inf in ["observation['position']"]""")):
        driver.step(np.zeros(2, dtype=np.float32))


@on_paths(BATCHED)
def test_nan_raise_names_the_env_index(path):
    with pytest.raises(ValueError, match=re.escape("model.step returned NaN/inf in ['observation'] at env index [2]")):
        first_step(path, _nan_in_row(2), n=N)


@on_paths(BATCHED)
def test_inf_reward_raise_names_the_env_index(path):
    bad = with_value("reward", lambda out: torch.where(torch.arange(N) == 1, torch.inf, out["reward"]))
    with pytest.raises(ValueError, match=re.escape("model.step returned NaN/inf in ['reward'] at env index [1]")):
        first_step(path, bad, n=N)


@on_paths(UNBATCHED)
def test_nan_from_the_reward_hook_is_caught(path):
    def reward_fn(model, next_state, obs, action):
        return float("nan")

    def transition_fn(model, state, action):
        return {"state": state, "observation": state}  # no reward: the reward hook supplies it

    env = make(path, Scripted(), reward_fn=reward_fn, transition_fn=transition_fn)
    driver = Driver(path, env)
    driver.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("reward_fn returned NaN/inf in ['reward']; pass")):
        driver.step(action_for())


@on_paths(UNBATCHED)
def test_nan_in_the_observation_and_a_hook_reward_names_each_hook(path):
    def transition_fn(model, state, action):
        return {"state": state, "observation": torch.full_like(state, float("inf"))}

    env = make(path, Scripted(), reward_fn=lambda next_state: float("nan"), transition_fn=transition_fn)
    driver = Driver(path, env)
    driver.reset(seed=0)
    message = "transition_fn returned NaN/inf in ['observation'] and reward_fn returned NaN/inf in ['reward']; pass"
    with pytest.raises(ValueError, match=re.escape(message)):
        driver.step(action_for())


@on_paths(UNBATCHED)
@pytest.mark.parametrize("nan_policy", ["raise", "truncate"])
def test_nan_in_reset_raises_even_when_truncating(path, nan_policy):
    """There is no episode to truncate at a reset: "raise" and "truncate" both refuse it."""
    message = "reset_fn returned NaN/inf in ['observation']; a reset must be finite."
    with pytest.raises(ValueError, match=re.escape(message)):
        first_reset(path, torch.tensor([0.0, float("nan"), 0.0]), nan_policy=nan_policy)


@on_paths(UNBATCHED)
def test_nan_in_a_start_state_bank_is_refused_when_built(path):
    bank = torch.zeros(5, 3)
    bank[3, 1] = float("nan")
    # the whole bank is checked once, when the env is built (not only the rows a reset samples)
    with pytest.raises(ValueError, match=re.escape("start_states: NaN/inf in ['observation'] at bank row(s) [3]")):
        make(path, Scripted(), start_states=bank, seed=0)


def _reference(path, n, steps):
    """(obs, reward) per step of a clean run with the same seed."""
    driver = Driver(path, make(path, Scripted(), n=n))
    driver.reset(seed=0)
    return [driver.step(action_for(n))[:2] for _ in range(steps)]


@on_paths(BATCHED)
def test_nan_truncate_ends_only_that_episode(path):
    reference = _reference(path, N, 3)
    driver = Driver(path, make(path, Scripted(bad=_nan_in_row(2), bad_at=2), n=N, nan_policy="truncate"))
    driver.reset(seed=0)
    obs, reward, terminated, truncated, info = driver.step(action_for(N))
    np.testing.assert_array_equal(obs, reference[0][0])
    assert not truncated.any()
    obs, reward, terminated, truncated, info = driver.step(action_for(N))
    np.testing.assert_array_equal(truncated, [False, False, True, False])
    assert not terminated.any()
    others = [0, 1, 3]
    if path == "sb3":  # SB3 resets the finished env at once; the sanitized obs is the terminal one
        assert info[2]["nonfinite"] is True and info[2]["TimeLimit.truncated"] is True
        final = info[2]["terminal_observation"]
        assert all("nonfinite" not in info[i] for i in others)
    else:
        np.testing.assert_array_equal(info["nonfinite"], [False, False, True, False])
        final = obs[2]
    # learners bootstrap from the final observation of a truncated episode: it is the last
    # finite one (the observation the NaN step started from), never zeros or NaN
    assert np.isfinite(final).all()
    np.testing.assert_array_equal(final, reference[0][0][2])
    assert np.isfinite(reward).all()
    np.testing.assert_array_equal(obs[others], reference[1][0][others])
    np.testing.assert_array_equal(reward[others], reference[1][1][others])


def test_nan_truncate_unbatched_gym():
    env = make("gym", Scripted(bad=_nan_in_row(None), bad_at=2), nan_policy="truncate")
    env.reset(seed=0)
    before, _, _, truncated, info = env.step(action_for())
    assert truncated is False and not info.get("nonfinite", False)
    obs, reward, terminated, truncated, info = env.step(action_for())
    assert truncated is True and terminated is False and info["nonfinite"] is True
    # the final observation is the last finite one (what the NaN step started from)
    np.testing.assert_array_equal(obs, before)
    assert np.isfinite(reward)


def test_nan_truncate_unbatched_torchrl_sets_done_and_flag():
    env = make("torchrl", Scripted(bad=_nan_in_row(None), bad_at=2), nan_policy="truncate")
    td = env.rollout(5, policy=lambda td: td.set("action", torch.full((3,), 0.5)), break_when_any_done=False)
    np.testing.assert_array_equal(td["next", "truncated"].squeeze(-1), [False, True, False, False, False])
    np.testing.assert_array_equal(td["next", "done"].squeeze(-1), [False, True, False, False, False])
    np.testing.assert_array_equal(td["next", "terminated"].squeeze(-1), [False] * 5)
    np.testing.assert_array_equal(td["next", "nonfinite"].squeeze(-1), [False, True, False, False, False])
    # the truncated episode was reset: the step after it starts from elapsed 0 again
    np.testing.assert_array_equal(td["elapsed_steps"].squeeze(-1), [0, 1, 0, 1, 2])
    assert torch.isfinite(td["next", "observation"]).all() and torch.isfinite(td["next", "reward"]).all()


@on_paths(UNBATCHED)
def test_nan_truncate_zeroes_a_nonfinite_reward(path):
    driver = Driver(path, make(path, Scripted(bad=_nan_in_row(None, "reward")), nan_policy="truncate"))
    driver.reset(seed=0)
    obs, reward, terminated, truncated, info = driver.step(action_for())
    assert reward == 0.0 and truncated and info["nonfinite"]


def test_nan_truncate_torchrl_batched_rollout_resets_only_that_env():
    env = make("torchrl", Scripted(bad=_nan_in_row(2), bad_at=2), n=N, nan_policy="truncate")
    td = env.rollout(3, policy=lambda td: td.set("action", torch.full((N, 3), 0.5)), break_when_any_done=False)
    # batched rollouts are [N, T]
    assert td["next", "truncated"].squeeze(-1)[:, 1].tolist() == [False, False, True, False]
    assert td["next", "nonfinite"].squeeze(-1)[:, 1].tolist() == [False, False, True, False]
    assert td["elapsed_steps"].squeeze(-1)[2].tolist() == [0, 1, 0]
    assert td["elapsed_steps"].squeeze(-1)[0].tolist() == [0, 1, 2]
    assert not td["next", "truncated"][[0, 1, 3]].any()
    # the truncated env's final observation was sanitized and its next episode started afresh
    assert torch.isfinite(td["next", "observation"]).all() and torch.isfinite(td["observation"]).all()
    assert torch.isfinite(td["next", "model_state"][[0, 1, 3]]).all()


@on_paths(UNBATCHED)
def test_nan_ignore_passes_values_through(path):
    driver = Driver(path, make(path, Scripted(bad=_nan_in_row(None, "reward")), nan_policy="ignore"))
    driver.reset(seed=0)
    obs, reward, terminated, truncated, info = driver.step(action_for())
    assert np.isnan(reward) and not truncated and "nonfinite" not in info


@on_paths(BATCHED)
def test_nan_ignore_batched(path):
    driver = Driver(path, make(path, Scripted(bad=_nan_in_row(1)), n=N, nan_policy="ignore"))
    driver.reset(seed=0)
    obs, reward, terminated, truncated, info = driver.step(action_for(N))
    assert np.isnan(obs[1, 0]) and np.isfinite(obs[1, 1:]).all() and np.isfinite(obs[[0, 2, 3]]).all()
    assert not truncated.any()


def test_unknown_nan_policy_is_refused():
    with pytest.raises(ValueError, match=re.escape("nan_policy must be one of ('raise', 'truncate', 'ignore'), got 'skip'")):
        make("gym", Scripted(), nan_policy="skip")


# --------------------------------------------------------------------------------------------
# next-step autoreset: NaN in the rows of envs that restart on this step is thrown away unchecked

DISCARD_OBS = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
DISCARD_ACT = gym.spaces.Box(-1, 1, (1,), np.float32)


def _zeros_reset(options=None):
    return torch.zeros(len(options["reset_mask"]), 1)


def _nan_after_the_end(state, action):
    """Env 0 counts up and terminates at 2; stepping a terminated state gives NaN."""
    nxt = state + torch.tensor([[1.0], [0.1]])
    nxt = torch.where(state >= 2, torch.full_like(state, float("nan")), nxt)
    return {"observation": nxt, "reward": torch.ones(len(state)), "terminated": nxt[:, 0] >= 2}


@pytest.mark.parametrize("nan_policy", ["raise", "truncate"])
def test_restarting_rows_are_not_nan_checked(nan_policy):
    env = WorldModelEnv(object(), DISCARD_OBS, DISCARD_ACT, reset_fn=_zeros_reset, transition_fn=_nan_after_the_end,
                        batch_size=(2,), nan_policy=nan_policy).to_gymnasium()
    env.reset(seed=0)
    actions = np.zeros((2, 1), np.float32)
    env.step(actions)
    obs, reward, terminated, truncated, info = env.step(actions)
    assert terminated.tolist() == [True, False]
    obs, reward, terminated, truncated, info = env.step(actions)  # env 0 restarts: its NaN step is discarded
    np.testing.assert_allclose(obs[:, 0], [0.0, 0.3], rtol=1e-6)
    assert reward.tolist() == [0.0, 1.0] and not truncated.any() and not terminated.any()
    assert "nonfinite" not in info


def test_nan_in_a_running_row_still_raises():
    def always_nan_for_env1(state, action):
        nxt = state + 1
        nxt[1] = float("nan")
        return nxt

    env = WorldModelEnv(object(), DISCARD_OBS, DISCARD_ACT, reset_fn=_zeros_reset, transition_fn=always_nan_for_env1,
                        batch_size=(2,)).to_gymnasium()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"NaN/inf.*env index \[1\]"):
        env.step(np.zeros((2, 1), np.float32))


# ---------------------------------------------- final observation after another env's reset
PARTIAL_OBS = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


def _partial_then_nan_env():
    """Counting state, observation twice the state (so not the state). Env 0 terminates at its
    2nd step (a partial reset before env 1's NaN); env 1's 3rd step is NaN: its final
    observation is [4, 4], the observation at its step 2."""

    def reset(batch_size=()):
        state = torch.zeros(*batch_size, 2)
        return state, 2 * state

    def transition(state, action):
        nxt = state + 1.0
        obs = 2 * nxt
        obs = torch.where((torch.arange(len(nxt)) == 1)[:, None] & (nxt == 3.0), float("nan"), obs)
        terminated = (torch.arange(len(nxt)) == 0) & (nxt[:, 0] == 2.0)
        return {"state": nxt, "observation": obs, "reward": nxt.sum(-1), "terminated": terminated}

    return WorldModelEnv(None, PARTIAL_OBS, PARTIAL_OBS, reset_fn=reset, transition_fn=transition,
                         batch_size=(3,), nan_policy="truncate")


def _zero_policy(td):
    return td.set("action", torch.zeros(*td.batch_size, 2))


def _final_after_partial_reset(way):
    """Env 1's ("next", "observation") at its truncated 3rd step, stepped ``way``."""
    from torchrl.collectors import Collector
    from torchrl.envs import EnvBase, ParallelEnv, SerialEnv

    if way == "fast rollout":
        td = _partial_then_nan_env().rollout(3, _zero_policy, break_when_any_done=False)
        return td["next"][1, 2]
    if way == "EnvBase.rollout":
        td = EnvBase.rollout(_partial_then_nan_env(), 3, _zero_policy, break_when_any_done=False)
        return td["next"][1, 2]
    if way == "step_and_maybe_reset":
        env = _partial_then_nan_env()
        td = env.reset()
        for _ in range(3):
            out, td = env.step_and_maybe_reset(_zero_policy(td))
        return out["next"][1]
    if way == "Collector":
        collector = Collector(_partial_then_nan_env(), _zero_policy, frames_per_batch=9, total_frames=9)
        batch = next(iter(collector))
        collector.shutdown()
        return batch["next"][1, 2]
    batched = {"ParallelEnv": ParallelEnv, "SerialEnv": SerialEnv}[way]
    env = batched(1, _partial_then_nan_env)
    td = env.rollout(3, _zero_policy, break_when_any_done=False)
    env.close()
    return td["next"][0, 1, 2]


@pytest.mark.parametrize("way", ["fast rollout", "EnvBase.rollout", "step_and_maybe_reset", "Collector",
                                 "SerialEnv", "ParallelEnv"])
def test_truncate_gives_the_last_finite_observation_after_another_envs_partial_reset(way):
    """TorchRL's own loops (EnvBase.rollout, step_and_maybe_reset, the Collector, batched envs)
    merge a partial reset into new tensors; the truncated env's final observation is still the
    last finite one (GAE bootstraps from it), as on the fast rollout and the exports."""
    nxt = _final_after_partial_reset(way)
    assert nxt["truncated"].item() and nxt["nonfinite"].item()
    assert nxt["observation"].tolist() == [4.0, 4.0]


# ------------------------------------------------------- a non-finite state behind a finite image
U8 = gym.spaces.Box(0, 255, shape=(2,), dtype=np.uint8)
LATENT_ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


def _latent_model(bad_row, kind="tensor", at=2):
    """A latent decoded to a uint8 image: from step ``at`` on, env ``bad_row``'s latent is NaN
    (its image, a cast, still reads finite). ``kind``: the latent as a tensor, a dict or a
    TensorDict."""
    from tensordict import TensorDict

    def wrap(latent):
        if kind == "dict":
            return {"h": latent, "count": torch.zeros(latent.shape[:-1], dtype=torch.int64)}
        if kind == "tensordict":
            return TensorDict({"h": latent}, batch_size=latent.shape[:-1])
        return latent

    def unwrap(state):
        return state if isinstance(state, torch.Tensor) else state["h"]

    def reset(batch_size=()):
        return wrap(torch.zeros(*batch_size, 3)), torch.zeros(*batch_size, 2, dtype=torch.uint8)

    def transition(model, state, action):
        latent = unwrap(state) + 1.0
        if float(latent.reshape(-1, 3)[0, 0]) >= at:
            latent = latent.clone()
            latent.view(-1, 3)[0 if bad_row is None else bad_row, 1] = float("nan")
        image = torch.nan_to_num(latent[..., :2], nan=0.0).to(torch.uint8)
        return {"state": wrap(latent), "observation": image, "reward": latent[..., 0].clone()}

    return reset, transition


def _latent_env(path, bad_row, kind="tensor", n=None, **kwargs):
    reset, transition = _latent_model(bad_row, kind)
    from harness import make as make_on

    return make_on(path, None, U8, LATENT_ACT, n=n, reset_fn=reset, transition_fn=transition, **kwargs)


STATE_KINDS = ["tensor", "dict", "tensordict"]


@on_paths(UNBATCHED)
@pytest.mark.parametrize("kind", STATE_KINDS)
def test_a_nonfinite_state_behind_a_finite_image_raises(path, kind):
    """Issue 25: a NaN latent decoded to a uint8 image (the cast turns NaN into 0) was never caught."""
    driver = Driver(path, _latent_env(path, None, kind))
    driver.reset(seed=0)
    driver.step(np.zeros(2, np.float32))
    key = "state" if kind == "tensor" else "state['h']"
    with pytest.raises(ValueError, match=re.escape(f"transition_fn returned NaN/inf in [\"{key}\"]")
                       if kind != "tensor" else re.escape("transition_fn returned NaN/inf in ['state']")):
        driver.step(np.zeros(2, np.float32))


@on_paths(BATCHED)
def test_a_nonfinite_state_raise_names_the_env_index(path):
    driver = Driver(path, _latent_env(path, 2, n=N))
    driver.reset(seed=0)
    driver.step(np.zeros((N, 2), np.float32))
    with pytest.raises(ValueError, match=re.escape("transition_fn returned NaN/inf in ['state'] at env index [2]")):
        driver.step(np.zeros((N, 2), np.float32))


@pytest.mark.parametrize("kind", STATE_KINDS)
def test_a_nonfinite_state_truncates_that_env_with_its_last_finite_state_torchrl(kind):
    env = _latent_env("torchrl", 2, kind, n=N, nan_policy="truncate")
    td = env.rollout(3, lambda td: td.set("action", torch.zeros(N, 2)), break_when_any_done=False)
    assert td["next", "truncated"].squeeze(-1)[:, 1].tolist() == [False, False, True, False]
    assert td["next", "nonfinite"].squeeze(-1)[:, 1].tolist() == [False, False, True, False]
    state = td["next", "model_state"] if kind == "tensor" else td["next", "model_state", "h"]
    # the truncated env's final state is the one its step started from, as its final observation is
    torch.testing.assert_close(state[2, 1], torch.ones(3))
    assert torch.isfinite(state).all()
    assert td["elapsed_steps"].squeeze(-1)[2].tolist() == [0, 1, 0]


@pytest.mark.parametrize("kind", ["vector", "sb3"])
def test_a_nonfinite_state_truncates_that_env_on_the_exports(kind):
    env = _latent_env("torchrl", 2, n=N, nan_policy="truncate")
    export = env.to_gymnasium() if kind == "vector" else env.to_sb3()
    export.reset() if kind == "sb3" else export.reset(seed=0)
    export.step(np.zeros((N, 2), np.float32))
    out = export.step(np.zeros((N, 2), np.float32))
    if kind == "vector":
        assert out[3].tolist() == [False, False, True, False] and out[4]["nonfinite"].tolist()[2]
        assert torch.isfinite(export.state).all()
    else:
        assert out[2].tolist() == [False, False, True, False] and out[3][2]["nonfinite"]


def test_a_finite_state_behind_an_image_needs_no_extra_check():
    """An integer (or finite) latent passes: only floating leaves are checked."""
    driver = Driver("torchrl", _latent_env("torchrl", None, "dict"))
    driver.reset(seed=0)
    driver.step(np.zeros(2, np.float32))


@on_paths(UNBATCHED)
def test_a_reset_with_a_nonfinite_state_is_refused(path):
    from harness import make as make_on

    def reset(batch_size=()):
        return torch.full((*batch_size, 3), float("nan")), torch.zeros(*batch_size, 2, dtype=torch.uint8)

    with pytest.raises(ValueError, match=re.escape("reset_fn returned NaN/inf in ['state']; a reset must be finite")):
        env = make_on(path, None, U8, LATENT_ACT, reset_fn=reset, transition_fn=_latent_model(None)[1])
        Driver(path, env).reset(seed=0)


# --------------------------------------------------- partial resets: only the rows in use
def _garbage_outside_the_mask(model, seed=None, options=None, batch_size=()):
    """A reset that computes only the rows reset_mask asks for and leaves the others as
    ``torch.empty`` would (here: NaN, and garbage in the state)."""
    mask = options["reset_mask"]
    obs = torch.zeros(*batch_size, 2)
    obs[~mask] = float("nan")
    state = torch.zeros(*batch_size, 3)
    state[~mask] = float("inf")
    return {"state": state, "observation": obs}


def _ends_env_1(model, state, action):
    nxt = state + 1.0
    done = torch.zeros(state.shape[0], dtype=torch.bool)
    done[1] = True
    return {"state": nxt, "observation": nxt[:, :2], "reward": nxt[:, 0], "terminated": done}


@pytest.mark.parametrize("kind", ["fast-rollout", "EnvBase.rollout", "vector", "vector-same-step", "sb3"])
def test_a_partial_reset_checks_only_the_rows_being_reset(kind):
    """Issue 25: NaN in rows a partial reset does not use (reset_mask) was refused, giving
    intermittent errors with torch.empty."""
    box = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)

    def reset(model, seed=None, options=None, batch_size=()):
        mask = (options or {}).get("reset_mask")
        if mask is None or bool(mask.all()):
            return {"state": torch.zeros(*batch_size, 3), "observation": torch.zeros(*batch_size, 2)}
        return _garbage_outside_the_mask(model, seed, options, batch_size)

    env = WorldModelEnv(None, box, LATENT_ACT, reset_fn=reset, transition_fn=_ends_env_1, batch_size=(N,))
    if kind in ("fast-rollout", "EnvBase.rollout"):
        extra = {} if kind == "fast-rollout" else {"callback": lambda env, td: None}
        td = env.rollout(4, lambda td: td.set("action", torch.zeros(N, 2)), break_when_any_done=False, **extra)
        assert torch.isfinite(td["observation"]).all() and torch.isfinite(td["model_state"]).all()
        # env 1 restarts every step; the others never do
        assert td["elapsed_steps"].squeeze(-1)[1].tolist() == [0, 0, 0, 0]
        assert td["elapsed_steps"].squeeze(-1)[0].tolist() == [0, 1, 2, 3]
        return
    if kind == "sb3":
        export = env.to_sb3()
        export.reset()
    else:
        from gymnasium.vector import AutoresetMode

        mode = AutoresetMode.SAME_STEP if kind == "vector-same-step" else AutoresetMode.NEXT_STEP
        export = env.to_gymnasium(autoreset_mode=mode)
        export.reset(seed=0)
    for _ in range(3):
        obs = export.step(np.zeros((N, 2), np.float32))[0]
        assert np.isfinite(obs).all()
    assert torch.isfinite(export._snapshot.state).all()
