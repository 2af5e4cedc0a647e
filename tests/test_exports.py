"""The batched exports: the Gymnasium vector env (next-step and same-step autoreset) and the
Stable-Baselines3 VecEnv, checked step by step against each library's own vector env of N
single envs on the same model, plus partial resets, SB3's VecEnv methods, PPO and a
CleanRL-style loop."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn

from drift_models import ACT_SPACE, LIMITS, N, OBS_SPACE, PUSH, START, DriftModel, Hooks, batched_env, single_env
from harness import assert_same_info
from torchwm_rl import GymVectorWorldModelEnv, WorldModelEnv

STEPS = 24


def actions(seed: int = 0, steps: int = STEPS) -> np.ndarray:
    """Random actions biased to +x, so episodes end by termination and by time limit."""
    rng = np.random.default_rng(seed)
    return rng.uniform([-0.5, -1.0], [1.0, 1.0], size=(steps, N, 2)).astype(np.float32)


def singles_with_timelimit(with_info: bool = False):
    """N single Gymnasium envs, each under Gymnasium's own TimeLimit with its row's limit."""
    return [lambda i=i: gym.wrappers.TimeLimit(single_env(i, with_info=with_info), max_episode_steps=LIMITS[i])
            for i in range(N)]


DIAGNOSTICS = ("model_state", "elapsed_steps")  # single envs' own info entries (not the model's)


def user_info(info):
    """A (vector or single) info without the single env's diagnostic entries."""
    if isinstance(info, dict):
        return {k: user_info(v) for k, v in info.items() if k.lstrip("_") not in DIAGNOSTICS}
    return info


# ------------------------------------------------------------------------- Gymnasium vector
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda m: m.value)
def test_vector_export_matches_sync_vector_env_of_single_envs(mode):
    env, hooks = batched_env()
    envs = env.to_gymnasium(autoreset_mode=mode)
    assert isinstance(envs, GymVectorWorldModelEnv) and isinstance(envs, gym.vector.VectorEnv)
    assert envs.num_envs == N and envs.metadata["autoreset_mode"] is mode
    assert envs.observation_space.shape == (N, 2) and envs.single_observation_space == OBS_SPACE
    reference = gym.vector.SyncVectorEnv(singles_with_timelimit(), autoreset_mode=mode)
    ours_obs, _ = envs.reset(seed=0)
    ref_obs, _ = reference.reset(seed=0)
    assert np.array_equal(ours_obs, ref_obs)
    calls_before = len(hooks.transition_shapes)
    ended = 0
    for t, action in enumerate(actions()):
        ours = envs.step(action)
        ref = reference.step(action)
        for name, a, b in zip(("obs", "reward", "terminated", "truncated"), ours[:4], ref[:4]):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, t)
            assert np.array_equal(a, b), (name, t, a, b)
        ended += int(np.logical_or(ref[2], ref[3]).sum())
        if mode is AutoresetMode.SAME_STEP:
            ref_final = ref[4].get("_final_obs", np.zeros(N, bool))
            assert np.array_equal(ours[4].get("_final_obs", np.zeros(N, bool)), ref_final), t
            for i in np.flatnonzero(ref_final):
                assert np.array_equal(ours[4]["final_obs"][i], ref[4]["final_obs"][i]), (t, i)
    assert ended >= N  # the comparison covered many episode ends, of both kinds
    # ONE model call per step for all N envs, whatever the resets
    assert hooks.transition_shapes[calls_before:] == [(N, 2)] * STEPS


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=lambda m: m.value)
def test_vector_export_infos_match_sync_vector_env_of_single_envs(mode):
    # the model's info (one dict for the batch: per-env rows and shared entries) reaches each
    # env as SyncVectorEnv would hand out the single envs' infos: reset infos for envs that
    # restart, final_info under SAME_STEP, detached (the "gain" entry is a trainable Parameter)
    env, _ = batched_env(with_info=True)
    envs = env.to_gymnasium(autoreset_mode=mode)
    reference = gym.vector.SyncVectorEnv(singles_with_timelimit(with_info=True), autoreset_mode=mode)
    ours, ref = envs.reset(seed=0)[1], user_info(reference.reset(seed=0)[1])
    assert_same_info(ours, ref, "reset")
    assert set(ours) == {"start_y", "_start_y", "source", "_source", "gain", "_gain"}
    restarts = 0
    for t, action in enumerate(actions()):
        ours, ref = envs.step(action)[4], user_info(reference.step(action)[4])
        assert_same_info(ours, ref, t)
        restarts += int(ref.get("_start_y", np.zeros(N, bool)).sum())
    assert restarts >= N  # reset infos of many restarted envs were compared


def test_vector_export_next_step_autoreset_ignores_the_action_and_reports_zero_reward():
    env, _ = batched_env()
    envs = env.to_gymnasium()
    envs.reset(seed=0)
    push = np.stack([PUSH] * N)
    for _ in range(2):
        obs, reward, terminated, truncated, _ = envs.step(push)
    assert truncated.tolist() == [True, False, False, False, False]  # env 0: limit 2
    obs, reward, terminated, truncated, _ = envs.step(push)
    assert np.array_equal(obs[0], START[0].numpy()) and reward[0] == 0.0
    assert not terminated[0] and not truncated[0]
    assert truncated[1] and terminated[4]  # the others carried on to their own ends


def test_vector_export_reset_mask_restarts_only_masked_envs():
    env, hooks = batched_env()
    envs = env.to_gymnasium()
    envs.reset(seed=0)
    push = np.stack([PUSH] * N)
    for _ in range(3):
        obs, *_ = envs.step(push * 0.5)  # slow push: nobody ends for a while except by limit
    state = envs.state.clone()
    mask = np.array([False, False, True, False, True])
    new_obs, _ = envs.reset(options={"reset_mask": mask})
    assert torch.equal(hooks.reset_masks[-1], torch.as_tensor(mask))
    for i in range(N):
        if mask[i]:
            assert np.array_equal(new_obs[i], START[i].numpy())
        else:
            assert np.array_equal(new_obs[i], obs[i])
            assert torch.equal(envs.state[i], state[i])
    # step counts were kept for the others: env 3 (limit 5, 3 steps taken) truncates in 2 more
    # steps, env 2 (limit 5, just restarted) only after 5
    for k in range(1, 6):
        _, _, _, truncated, _ = envs.step(np.zeros((N, 2), np.float32))
        assert truncated[3] == (k == 2) and truncated[2] == (k == 5), k
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.ones(N + 1, bool)})


# ------------------------------------------------------------------------------------- SB3
def sb3_singles():
    return DummyVecEnv(singles_with_timelimit())


def test_sb3_export_matches_dummy_vec_env_of_single_envs():
    env, hooks = batched_env()
    venv = env.to_sb3()
    assert isinstance(venv, VecEnv) and venv.num_envs == N
    reference = sb3_singles()
    assert np.array_equal(venv.reset(), reference.reset())
    calls_before = len(hooks.transition_shapes)
    seen_timeout = seen_terminal = False
    for t, action in enumerate(actions(1)):
        obs, rewards, dones, infos = venv.step(action)
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(action)
        assert np.array_equal(obs, ref_obs), t
        assert rewards.dtype == ref_rewards.dtype and np.array_equal(rewards, ref_rewards), t
        assert np.array_equal(dones, ref_dones), t
        for i in range(N):
            assert ("terminal_observation" in infos[i]) == bool(ref_dones[i]), (t, i)
            if ref_dones[i]:
                assert np.array_equal(infos[i]["terminal_observation"], ref_infos[i]["terminal_observation"])
                assert infos[i]["TimeLimit.truncated"] == ref_infos[i]["TimeLimit.truncated"], (t, i)
                seen_timeout |= ref_infos[i]["TimeLimit.truncated"]
                seen_terminal |= not ref_infos[i]["TimeLimit.truncated"]
    assert seen_timeout and seen_terminal
    assert hooks.transition_shapes[calls_before:] == [(N, 2)] * STEPS


def test_sb3_export_infos_match_dummy_vec_env_of_single_envs():
    env, _ = batched_env(with_info=True)
    venv = env.to_sb3()
    reference = DummyVecEnv(singles_with_timelimit(with_info=True))
    venv.reset(), reference.reset()

    def same(mine, theirs, where):
        theirs = user_info(theirs)
        assert set(mine) == set(theirs), where
        for key, value in theirs.items():
            assert np.array_equal(mine[key], value) and type(mine[key]) is type(value), (where, key)

    for i in range(N):
        same(venv.reset_infos[i], reference.reset_infos[i], ("reset", i))
    for t, action in enumerate(actions(1)):
        _, _, dones, infos = venv.step(action)
        _, _, ref_dones, ref_infos = reference.step(action)
        for i in range(N):
            same(infos[i], ref_infos[i], (t, i))
            same(venv.reset_infos[i], reference.reset_infos[i], ("reset", t, i))
    assert not isinstance(infos[0]["gain"], torch.Tensor)  # detached to numpy


def test_sb3_export_auto_resets_only_done_envs():
    env, hooks = batched_env()
    venv = env.to_sb3()
    venv.reset()
    push = np.stack([PUSH] * N)
    previous = venv.step(push)[0]
    obs, _, dones, infos = venv.step(push)  # env 0 hits its limit (2)
    assert dones.tolist() == [True, False, False, False, False]
    assert torch.equal(hooks.reset_masks[-1], torch.as_tensor(dones))
    assert np.array_equal(obs[0], START[0].numpy())
    assert infos[0]["TimeLimit.truncated"] is True
    assert np.allclose(infos[0]["terminal_observation"], previous[0] + 0.1 * PUSH)
    for i in range(1, N):
        assert np.allclose(obs[i], previous[i] + 0.1 * PUSH) and infos[i] == {"TimeLimit.truncated": False}
    obs, _, dones, infos = venv.step(push)  # env 4 terminates by the model, env 1 by limit
    assert dones.tolist() == [False, True, False, False, True]
    assert infos[4]["TimeLimit.truncated"] is False and infos[1]["TimeLimit.truncated"] is True


def test_sb3_export_vec_env_methods():
    env, _ = batched_env()
    venv = env.to_sb3()
    assert venv.env_method("describe") == ["drift"] * N
    assert venv.env_method("describe", "!", indices=[0, 3]) == ["drift!"] * 2
    assert venv.get_attr("render_mode") == [None] * N
    venv.set_attr("horizon", 7)
    assert venv.get_attr("horizon", indices=1) == [7]
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False] * N
    assert len(venv.seed(3)) == N


def test_sb3_export_seed_makes_bank_resets_reproducible():
    bank = torch.linspace(-0.9, 0.9, 400).reshape(200, 2)
    env = WorldModelEnv(DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks().reset,
                        transition_fn=Hooks().transition, start_states=bank, batch_size=(N,))
    venv = env.to_sb3()
    venv.seed(7)
    first = venv.reset()
    venv.seed(7)
    assert np.array_equal(venv.reset(), first)
    venv.seed(8)
    assert not np.array_equal(venv.reset(), first)


def test_unbatched_to_sb3_is_sb3s_own_dummy_vec_env():
    env = WorldModelEnv(DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks(row=4).reset,
                        transition_fn=Hooks().transition, max_episode_steps=100)
    venv = env.to_sb3()
    assert isinstance(venv, DummyVecEnv) and venv.num_envs == 1
    obs = venv.reset()
    assert obs.shape == (1, 2) and np.array_equal(obs[0], START[4].numpy())
    for _ in range(2):
        obs, rewards, dones, infos = venv.step(PUSH[None])
        assert not dones[0]
    obs, rewards, dones, infos = venv.step(PUSH[None])  # env 4's start terminates at step 3
    assert dones[0] and infos[0]["TimeLimit.truncated"] is False
    assert np.array_equal(obs[0], START[4].numpy()) and "terminal_observation" in infos[0]


@pytest.mark.slow
@pytest.mark.parametrize("batched", [True, False], ids=["n_envs=N", "n_envs=1"])
def test_sb3_ppo_learns_on_the_export(batched):
    if batched:
        venv = batched_env()[0].to_sb3()
    else:
        venv = WorldModelEnv(DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks(row=0).reset,
                             transition_fn=Hooks().transition, max_episode_steps=8).to_sb3()
    n_steps = 16
    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=16, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    assert model.n_envs == venv.num_envs == (N if batched else 1)
    model.learn(total_timesteps=2 * n_steps * venv.num_envs)
    assert model.num_timesteps == 2 * n_steps * venv.num_envs
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (venv.num_envs, 2)


# ------------------------------------------------------------------------ CleanRL-style loop
def test_cleanrl_style_loop_on_the_vector_export():
    """A CleanRL PPO-shaped loop (rollout buffer, next-step autoreset bookkeeping, GAE, one
    clipped policy-gradient update) runs on the export without wrappers."""
    env, hooks = batched_env()
    envs = env.to_gymnasium()
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    critic = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    log_std = nn.Parameter(torch.zeros(2))
    params = [*actor.parameters(), *critic.parameters(), log_std]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    steps, gamma, lam = 16, 0.99, 0.95
    obs_buf = torch.zeros(steps, N, 2)
    act_buf = torch.zeros(steps, N, 2)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(steps, N) for _ in range(4))
    next_obs, _ = envs.reset(seed=0)
    next_obs, next_done = torch.as_tensor(next_obs), torch.zeros(N)
    for t in range(steps):
        obs_buf[t], done_buf[t] = next_obs, next_done
        with torch.no_grad():
            dist = torch.distributions.Normal(actor(next_obs), log_std.exp())
            action = dist.sample()
            logp_buf[t], val_buf[t] = dist.log_prob(action).sum(-1), critic(next_obs).squeeze(-1)
        act_buf[t] = action
        next_obs, reward, terminations, truncations, _ = envs.step(action.clamp(-1, 1).numpy())
        rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
        next_obs = torch.as_tensor(next_obs)
        next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)
    assert done_buf.sum() > 0  # episodes ended inside the buffer
    with torch.no_grad():
        advantages = torch.zeros(steps, N)
        last = torch.zeros(N)
        next_value = critic(next_obs).squeeze(-1)
        for t in reversed(range(steps)):
            nonterminal = 1.0 - (next_done if t == steps - 1 else done_buf[t + 1])
            value_next = next_value if t == steps - 1 else val_buf[t + 1]
            delta = rew_buf[t] + gamma * value_next * nonterminal - val_buf[t]
            advantages[t] = last = delta + gamma * lam * nonterminal * last
        returns = advantages + val_buf
    dist = torch.distributions.Normal(actor(obs_buf), log_std.exp())
    ratio = (dist.log_prob(act_buf).sum(-1) - logp_buf).exp()
    pg_loss = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
    v_loss = ((critic(obs_buf).squeeze(-1) - returns) ** 2).mean()
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    (pg_loss + 0.5 * v_loss).backward()
    optimizer.step()
    assert torch.isfinite(pg_loss) and torch.isfinite(v_loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, params))
    assert hooks.transition_shapes[-steps:] == [(N, 2)] * steps


def test_vector_infos_of_different_kinds_for_different_envs_keep_each_envs_value():
    from torchwm_rl.convert import merge_vector_infos, vector_info

    stepped = np.array([True, False, True])
    step = vector_info({"x": np.array([0.5, 0.25, 0.75], np.float32), "note": "step"}, 3, stepped)
    reset = vector_info({"x": np.array([1, 2, 3]), "start": {"y": 7}}, 3, ~stepped)
    infos = merge_vector_infos(step, reset)
    assert infos["x"].dtype == object and infos["x"].tolist() == [0.5, 2, 0.75]
    assert infos["_x"].tolist() == [True, True, True]
    assert infos["note"].tolist() == ["step", None, "step"] and infos["_note"].tolist() == [True, False, True]
    assert infos["start"]["y"].tolist() == [0, 7, 0] and infos["_start"].tolist() == [False, True, False]
    assert vector_info({"x": 1.0}, 3, np.zeros(3, bool)) == {}  # no env has it: no key, as Gymnasium


# ------------------------------------------------------------------ autoreset_mode=DISABLED
def test_vector_export_disabled_autoreset_matches_sync_vector_env_of_single_envs():
    """Gymnasium's DISABLED mode: no autoreset; the caller resets the envs that ended with
    ``reset(options={"reset_mask": mask})`` before the next step. Step by step as
    SyncVectorEnv(DISABLED) of N single envs, resets included; a step before that reset is
    refused (SyncVectorEnv asserts)."""
    env, hooks = batched_env()
    envs = env.to_gymnasium(autoreset_mode=AutoresetMode.DISABLED)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    reference = gym.vector.SyncVectorEnv(singles_with_timelimit(), autoreset_mode=AutoresetMode.DISABLED)
    assert np.array_equal(envs.reset(seed=0)[0], reference.reset(seed=0)[0])
    ended = 0
    for t, action in enumerate(actions()):
        ours, ref = envs.step(action), reference.step(action)
        for name, a, b in zip(("obs", "reward", "terminated", "truncated"), ours[:4], ref[:4]):
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), (name, t, a, b)
        done = np.logical_or(ref[2], ref[3])
        if done.any():
            ended += int(done.sum())
            if ended == int(done.sum()):  # the first end: stepping now is refused, and leaves no trace
                with pytest.raises(RuntimeError, match=r"autoreset_mode=DISABLED: the envs at index \[.*\] ended and "
                                   r"were not reset; reset them before the next step with "
                                   r"envs.reset\(options=\{'reset_mask': mask\}\)"):
                    envs.step(action)
            ours_obs, _ = envs.reset(options={"reset_mask": done})
            assert np.array_equal(ours_obs, reference.reset(options={"reset_mask": done})[0]), t
    assert ended >= N
    assert hooks.transition_shapes[-STEPS:] == [(N, 2)] * STEPS  # one model call per step, no extra


# ------------------------------------------------------------------------- seeds across modes
class _NoisyDrift:
    """A stochastic batched model (global-RNG noise in reset and step) with per-env limits."""

    def reset(self, model, batch_size=()):
        return torch.rand(*batch_size, 2) * 0.2

    def step(self, model, state, action):
        nxt = state + 0.1 * action + 0.05 * torch.randn_like(state)
        return nxt, nxt, nxt.sum(-1)


def test_next_step_export_gives_the_same_numbers_up_to_the_first_episode_end():
    """What the README promises across autoreset modes, for a model that draws random numbers:
    SAME_STEP gives the numbers of the TorchRL env and SB3 export; NEXT_STEP gives them up to
    the step in which the first episode ends, then the restarting envs' reset observations and
    the other envs' next step (the streams are drawn in the same order). After that a restarted
    env is stepped one model call later, so no promise is made about the numbers."""
    limits = torch.tensor([3, 5, 6, 7])
    noisy = _NoisyDrift()

    def make():
        return WorldModelEnv(object(), gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), ACT_SPACE,
                             reset_fn=noisy.reset, transition_fn=noisy.step, max_episode_steps=limits, batch_size=(4,))

    acts = np.random.default_rng(1).uniform(-1, 1, (8, 4, 2)).astype(np.float32)
    same, nxt, sb3 = make().to_gymnasium(autoreset_mode="SameStep"), make().to_gymnasium(), make().to_sb3()
    sb3.seed(3)
    assert np.array_equal(same.reset(seed=3)[0], nxt.reset(seed=3)[0]) and np.array_equal(sb3.reset(), nxt.reset(seed=3)[0])
    for t in range(3):  # env 0 is truncated at step 3 (t == 2)
        a, b = same.step(acts[t]), nxt.step(acts[t])
        sb3.step_async(acts[t])
        c = sb3.step_wait()
        np.testing.assert_array_equal(a[0], c[0])  # SAME_STEP is SB3's convention: reset observations in place
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[3], b[3])
        if t < 2:
            np.testing.assert_array_equal(a[0], b[0])
    assert a[3].tolist() == [True, False, False, False]
    np.testing.assert_array_equal(a[4]["final_obs"][0], b[0][0])  # env 0's final observation
    np.testing.assert_array_equal(a[0][1:], b[0][1:])
    reset_obs = a[0][0]  # env 0's new start under SAME_STEP (and SB3)
    a, b = same.step(acts[3]), nxt.step(acts[3])
    np.testing.assert_array_equal(b[0][0], reset_obs)  # NEXT_STEP restarts env 0 now: the same start
    assert b[1][0] == 0.0
    np.testing.assert_array_equal(a[0][1:], b[0][1:])  # and the other envs' next step is the same
    np.testing.assert_array_equal(a[1][1:], b[1][1:])


# ---------------------------------------------------------------- SB3: per-env options, render
def _options_env(n: int = 4, **kwargs):
    """A batched env whose reset reads ``options["start"]`` (default 0) for every row it is
    given, with the reset masks it got."""
    calls = []

    def reset(model, options):
        calls.append(dict(options))
        value = float(options.get("start", 0.0))
        return torch.full((n, 2), value)

    env = WorldModelEnv(DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=reset, transition_fn=Hooks().transition,
                        batch_size=(n,), **kwargs)
    return env, calls


def test_sb3_set_options_gives_each_env_its_own_options():
    """SB3's VecEnv.set_options([...]): one dict per env, used at the next reset. Envs with
    different options are reset by one hook call per distinct dict (a partial reset for all but
    the first), so env i starts from its own options, not from env 0's."""
    env, calls = _options_env()
    venv = env.to_sb3()
    venv.set_options([{"start": 0.5}, {"start": -0.25}, {"start": 0.5}, {}])
    calls.clear()  # (the env's own reset at construction)
    obs = venv.reset()
    np.testing.assert_array_equal(obs[:, 0], [0.5, -0.25, 0.5, 0.0])
    assert [c["reset_mask"].tolist() for c in calls] == [[True] * 4, [False, True, False, False], [False, False, False, True]]
    venv.set_options({"start": 0.125})  # one dict: every env; one hook call
    calls.clear()
    np.testing.assert_array_equal(venv.reset()[:, 0], [0.125] * 4)
    assert len(calls) == 1
    np.testing.assert_array_equal(venv.reset()[:, 0], [0.0] * 4)  # options are used once (SB3)
    with pytest.raises(ValueError, match=r"set_options: expected a dict, or a list of 4 dicts \(one per env\); got 2"):
        venv.set_options([{"start": 1.0}, {}])


def _rendering_env(n: int = 3):
    rows = max(n, 1)
    frames = torch.arange(rows, dtype=torch.uint8).reshape(rows, 1, 1, 1).expand(rows, 4, 6, 3).contiguous()
    env = WorldModelEnv(DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks(row=None if n else 0).reset,
                        transition_fn=Hooks().transition, render_fn=lambda model, state, obs: frames[: state.shape[0]] if state.ndim > 1 else frames[0],
                        batch_size=(n,) if n else ())
    return env


@pytest.mark.parametrize("n", [3, 0], ids=["batched", "unbatched"])
def test_sb3_export_render_mode_rgb_array_renders_the_tiled_frames(n):
    from stable_baselines3.common.vec_env.base_vec_env import tile_images

    venv = _rendering_env(n).to_sb3(render_mode="rgb_array")
    assert venv.render_mode == "rgb_array" and "rgb_array" in venv.metadata["render_modes"]
    venv.reset()
    image = venv.render()
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, tile_images(venv.get_images()))
    assert venv.render(mode="rgb_array") is not None
    assert _rendering_env(n).to_sb3().render_mode is None
    with pytest.raises(ValueError, match="render_mode must be one of"):
        _rendering_env(3).to_sb3(render_mode="human")


def test_sb3_export_records_with_vec_video_recorder(monkeypatch, tmp_path):
    """SB3's VecVideoRecorder asserts render_mode == 'rgb_array' and records render()'s tiled
    frames (moviepy, only needed to write the file at the end, is stubbed)."""
    import sys
    import types

    from stable_baselines3.common.vec_env import VecVideoRecorder

    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    venv = VecVideoRecorder(_rendering_env(3).to_sb3(render_mode="rgb_array"), str(tmp_path),
                            record_video_trigger=lambda step: step == 0, video_length=100)
    venv.reset()
    for _ in range(3):
        venv.step(np.zeros((3, 2), np.float32))
    assert len(venv.recorded_frames) == 4 and all(f.shape == (8, 12, 3) for f in venv.recorded_frames)
    venv.recording, venv.recorded_frames = False, []  # nothing to write: moviepy is a stub


# ------------------------------------------------------------------------ TransformedEnv exports
@pytest.mark.parametrize("method", ["to_gymnasium", "to_sb3"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_exporting_a_transformed_env_is_refused_not_stripped_of_its_transforms(method, batched):
    """TorchRL's TransformedEnv forwards attributes it lacks to its base env, so
    ``TransformedEnv(env, ObservationNorm(...)).to_gymnasium()`` exported the base env: un-
    normalised observations, no error. Refused now, naming the transforms and the fix; the base
    env (explicitly) and a TransformedEnv without transforms still export."""
    from torchrl.envs.transforms import Compose, ObservationNorm, RewardScaling, TransformedEnv

    env = batched_env()[0] if batched else WorldModelEnv(
        DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks(row=0).reset, transition_fn=Hooks().transition)
    wrapped = TransformedEnv(env, Compose(ObservationNorm(loc=1.0, scale=2.0, in_keys=["observation"]),
                                          RewardScaling(0.0, 3.0)))
    with pytest.raises(TypeError, match=rf"{method}\(\) was reached through a TransformedEnv.*WITHOUT its transforms "
                       rf"\(ObservationNorm, RewardScaling\).*env.base_env.{method}\(\)"):
        getattr(wrapped, method)()
    assert getattr(wrapped.base_env, method)() is not None
    assert getattr(TransformedEnv(env), method)() is not None  # nothing to drop
    assert getattr(env, method).__doc__ == getattr(WorldModelEnv, method).__doc__
