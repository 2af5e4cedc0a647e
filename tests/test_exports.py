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
