"""The cartpole-pixels zoo model (issue 22): registry names, frames from the real render, a
reproducible training run (tiny config), encode_frames as the posterior filter, start states,
exports stepping the TorchRL env's numbers, and bad input refused with its message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pygame")

from torchwm_rl import zoo  # noqa: E402
from torchwm_rl.latent import encode_frames  # noqa: E402
from torchwm_rl.zoo import cartpole_pixels as C  # noqa: E402
from torchwm_rl.zoo import cartpole_pixels_train as T  # noqa: E402

TINY = {"deter": 8, "stoch": 2, "hidden": 8, "depth": 2}


@pytest.fixture(scope="module")
def model():
    return zoo.load("cartpole-pixels")


@pytest.fixture(scope="module")
def real():
    """A real CartPole-v1 (rgb_array) and 4 short frame sequences with their actions."""
    env = T._real_env()
    frames, actions = [], []
    for i in range(4):
        env.reset(seed=100 + i)
        seq, acts = [env.render()], []
        for t in range(5):
            a = (i + t) % 2
            env.step(a)
            seq.append(env.render())
            acts.append(a)
        frames.append(np.stack(seq))
        actions.append(acts)
    yield env, np.stack(frames), torch.tensor(actions)
    env.close()


def test_registry_accepts_the_readable_name_and_its_spellings():
    for spelling in ("cartpole-pixels", "cartpole_pixels", "CartPole-Pixels", "cartpolepixels"):
        assert zoo.canonical(spelling) == "cartpole-pixels"
    assert zoo.canonical("CartPole-v1") == "cartpole"  # the others unchanged
    assert "cartpole-pixels" in zoo.available()
    assert zoo.real_env_id("cartpole-pixels") == "CartPole-v1"
    from torchwm_rl.app.cli import _parser

    assert "cartpole-pixels" in _parser()._subparsers._group_actions[0].choices["train-model"].format_help()


def test_preprocess_reads_the_render_cart_moves_with_the_real_cart(real):
    env = real[0]
    columns = []
    for x in (-1.5, 0.0, 1.5):
        env.state = np.array([x, 0.0, 0.0, 0.0])
        img = C.preprocess(torch.from_numpy(env.render()))
        assert img.shape == (1, 32, 120) and img.dtype == torch.uint8
        assert img[0, :2].max() == 0  # the background above the pole is empty (inverted: 0)
        mass = img[0, -12:-4].float().sum(0)  # the cart's rows
        columns.append(float((mass * torch.arange(120)).sum() / mass.sum()))
    assert columns[0] < columns[1] < columns[2]
    assert abs(columns[1] - 59.5) < 2


def test_train_is_reproducible_from_a_seed():
    kwargs = dict(n_frames=120, steps=2, batch=2, length=6, n_starts=3, eval_frames=0, **TINY)
    a, meta = T.train(seed=3, verbose=False, **kwargs)
    b, _ = T.train(seed=3, verbose=False, **kwargs)
    c, _ = T.train(seed=4, verbose=False, **kwargs)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert sa["start_deter"].shape == (3, 8) and meta["depth"] == 2


def test_train_model_writes_a_file_that_loads_and_builds_the_env(tmp_path):
    path = zoo.train_model("cartpole_pixels", seed=0, path=tmp_path / "m.safetensors", verbose=False,
                           n_frames=60, steps=1, batch=2, length=4, n_starts=2, eval_frames=0, **TINY)
    loaded = zoo.load("cartpole-pixels", path=path)
    assert loaded.config == TINY and loaded.start_latents().batch_size == (2,)
    env = zoo.make_env("cartpole-pixels", model=loaded, batch_size=2, seed=0)
    assert env.reset()["observation"].shape == (2, 10)
    assert zoo.default_train_path("cartpole_pixels").name == "cartpole-pixels.safetensors"


def test_bundled_weights_are_small_and_load_with_a_start_bank(model):
    assert C.WEIGHTS_PATH.stat().st_size <= 10 * 2**20
    bank = model.start_latents()
    assert bank.batch_size[0] >= 100 and torch.isfinite(bank["deter"]).all()
    assert 0.0 <= float(model.continue_prob(bank).min()) and float(model.continue_prob(bank).min()) > 0.5


def test_encode_frames_is_the_posterior_filter(model, real):
    _, frames, actions = real
    got = encode_frames(model, frames, actions)
    x = C.preprocess(torch.from_numpy(frames))
    z = model.observe(model.initial_latent(4), None, x[:, 0])
    for t in range(1, 6):
        z = model.observe(z, actions[:, t - 1], x[:, t])
    assert torch.equal(got["deter"], z["deter"]) and torch.equal(got["stoch"], z["stoch"])
    burned = encode_frames(model, frames, actions, burn_in=2)  # only the last 2 frames
    z = model.observe(model.initial_latent(4), None, x[:, 4])
    z = model.observe(z, actions[:, 4], x[:, 5])
    assert torch.equal(burned["deter"], z["deter"])
    assert not torch.equal(burned["deter"], got["deter"])


def test_given_start_latents_are_the_states_stepped(model, real):
    _, frames, actions = real
    latents = encode_frames(model, frames, actions)
    env = zoo.make_env("cartpole-pixels", model=model, batch_size=4, seed=0, start_latents=latents[:1].expand(1),
                       sample=False)
    td = env.reset()
    assert torch.equal(td["model_state", "deter"], latents["deter"][:1].expand(4, -1))
    assert torch.equal(td["observation"], model.features(latents[:1]).expand(4, -1))
    td["action"] = torch.tensor([0, 1, 0, 1])
    out = env.step(td)["next"]
    want = model.imagine(latents[:1].expand(4), td["action"])
    assert torch.equal(out["model_state", "deter"], want["deter"])
    assert torch.allclose(out["reward"][:, 0], model.reward(want))
    # reset(td, set_state=True): every row starts from its own latent; the observation is decoded
    given = env.reset().clone()
    given["model_state"] = latents.clone()
    start = env.reset(given.exclude("observation"), set_state=True)
    assert torch.equal(start["model_state", "stoch"], latents["stoch"])
    assert torch.equal(start["observation"], model.features(latents))


@pytest.mark.parametrize("observation", ["latent", "pixels", "both"])
def test_env_specs_batched_and_spaces(model, observation):
    from torchrl.envs.utils import check_env_specs

    env = zoo.make_env("cartpole-pixels", model=model, batch_size=3, seed=0, observation=observation)
    check_env_specs(env)
    td = env.rollout(4, break_when_any_done=False)
    if observation == "latent":
        assert td["observation"].shape == (3, 4, model.feature_size)
    else:
        pixels = td["observation" if observation == "pixels" else "pixels"]
        assert pixels.shape == (3, 4, 1, 32, 120) and pixels.dtype == torch.uint8
    gym_env = zoo.make_env("cartpole-pixels", model=model, seed=0, observation=observation).to_gymnasium(
        render_mode="rgb_array")
    from gymnasium.utils.env_checker import check_env

    check_env(gym_env, skip_render_check=False)
    gym_env.reset(seed=0)
    frame = gym_env.render()
    assert frame.shape == (32, 120, 3) and frame.dtype == np.uint8
    if observation == "pixels":
        space = gym_env.observation_space
        assert (space.shape, space.dtype, int(space.low.min()), int(space.high.max())) == ((1, 32, 120), np.uint8,
                                                                                               0, 255)


def test_exports_step_the_torchrl_numbers(model):
    actions = torch.tensor([[0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]])
    env = zoo.make_env("cartpole-pixels", model=model, batch_size=3, seed=7, max_episode_steps=500)
    td = env.reset()
    ref_obs, ref_rew = [td["observation"]], []
    for a in actions:
        td["action"] = a
        nxt = env.step(td)["next"]
        ref_obs.append(nxt["observation"])
        ref_rew.append(nxt["reward"][:, 0])
        td = nxt
    assert not torch.equal(ref_obs[1], ref_obs[2])
    for export in (zoo.make_env("cartpole-pixels", model=model, batch_size=3, seed=7).to_gymnasium(),
                   zoo.make_env("cartpole-pixels", model=model, batch_size=3, seed=7).to_sb3()):
        obs = export.reset(seed=7)[0] if not hasattr(export, "step_async") else (export.seed(7), export.reset())[1]
        np.testing.assert_array_equal(obs, ref_obs[0].numpy())
        for t, a in enumerate(actions):
            out = export.step(a.numpy())
            np.testing.assert_array_equal(out[0], ref_obs[t + 1].numpy())
            np.testing.assert_allclose(out[1], ref_rew[t].numpy(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------- bad input


def test_encode_frames_refuses_wrong_size_dtype_and_channel_order(model, real):
    _, frames, actions = real
    with pytest.raises(ValueError, match=r"expected uint8 frames of shape \[\.\.\., 400, 600, 3\].*got shape "
                                         r"\[4, 6, 200, 300, 3\]"):
        encode_frames(model, frames[:, :, ::2, ::2], actions)
    with pytest.raises(TypeError, match=r"uint8 frames of shape \[\.\.\., 400, 600, 3\].*got dtype torch.float32"):
        encode_frames(model, frames.astype(np.float32) / 255, actions)
    with pytest.raises(ValueError, match=r"channel-first \[4, 6, 3, 400, 600\].*Move the channel last"):
        encode_frames(model, np.moveaxis(frames, -1, -3), actions)
    with pytest.raises(ValueError, match=r"actions must be \[B=4, K-1=5"):
        encode_frames(model, frames, actions[:, :3])
    with pytest.raises(ValueError, match=r"need the 5 actions"):
        encode_frames(model, frames)
    with pytest.raises(ValueError, match=r"burn_in must be in \[1, K=6\]"):
        encode_frames(model, frames, actions, burn_in=7)
    for fractional in (2.7, True):  # not read as 2 / 1 frames: ambiguous, refused
        with pytest.raises(ValueError, match=r"burn_in must be in \[1, K=6\] \(an int"):
            encode_frames(model, frames, actions, burn_in=fractional)


def test_start_latents_with_mismatched_batch_or_nan_are_refused(model, real):
    _, frames, actions = real
    latents = encode_frames(model, frames, actions)
    bad = {"deter": latents["deter"], "stoch": latents["stoch"][:3]}
    with pytest.raises(ValueError, match=r"same M .*got \[4, 128\] and \[3, 16\]"):
        zoo.make_env("cartpole-pixels", model=model, start_latents=bad)
    nan = latents.clone()
    nan["stoch"][2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf in 'deter'/'stoch' at row\(s\) \[2\]"):
        zoo.make_env("cartpole-pixels", model=model, observation="pixels", start_latents=nan)
    wide = {"deter": torch.zeros(4, 64), "stoch": latents["stoch"]}
    with pytest.raises(ValueError, match=r"must be \[M, 128\] and \[M, 16\].*got \[4, 64\] and \[4, 16\]"):
        zoo.make_env("cartpole-pixels", model=model, start_latents=wide)
    # the library's own bank check, on this model's latents: rows of state and observation differ
    from torchwm_rl import WorldModelEnv

    env = zoo.make_env("cartpole-pixels", model=model, batch_size=4, seed=0)
    with pytest.raises(ValueError, match=r"start_states: 'state' has 3 rows but 'observation' has 4"):
        WorldModelEnv(model, observation_space=env.logic.adapter.observation_space, action_space=env.logic.adapter
                      .action_space, transition_fn=lambda m, s, a: s, start_states={
                          "observation": model.features(latents), "state": latents[:3]})


@pytest.mark.parametrize("policy", ["raise", "truncate"])
def test_nan_latent_behind_a_finite_image_is_caught_by_nan_policy(model, real, policy):
    _, frames, actions = real
    latents = encode_frames(model, frames, actions)
    nan = latents.clone()
    nan["deter"][1] = float("nan")
    decoded = model.decode(nan)
    assert decoded.dtype == torch.uint8  # the image alone looks fine: the uint8 cast hides the NaN
    env = zoo.make_env("cartpole-pixels", model=model, batch_size=4, seed=0, observation="pixels",
                       nan_policy=policy)
    td = env.reset()
    td["model_state"] = nan
    td = env.reset(td, set_state=True)
    td["action"] = torch.zeros(4, dtype=torch.long)
    if policy == "raise":
        with pytest.raises(ValueError, match=r"transition_fn returned NaN/inf in .*state\['deter'\].* at env index \[1\]"):
            env.step(td)
        return
    out = env.step(td)["next"]
    assert out["truncated"][:, 0].tolist() == [False, True, False, False]
    assert out["nonfinite"][:, 0].tolist() == [False, True, False, False]


def _push_right(td):
    return td.set("action", torch.ones(td.batch_size, dtype=torch.long))


def test_imagined_draws_come_from_the_env_seed_not_the_global_rng(model):
    def rollout(seed):
        env = zoo.make_env("cartpole-pixels", model=model, batch_size=2, seed=seed)
        return env.rollout(6, _push_right, break_when_any_done=False)["next", "model_state", "stoch"]

    before = torch.get_rng_state()
    a, b, c = rollout(1), rollout(1), rollout(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    mean = zoo.make_env("cartpole-pixels", model=model, batch_size=2, seed=1, sample=False)
    assert not torch.equal(mean.rollout(6, _push_right, break_when_any_done=False)["next", "model_state", "stoch"], a)


def test_the_continue_head_is_the_envs_continue_fn(model):
    """The reported probability is the model's continue head on the step's latent; with a threshold,
    terminated is exactly p < t; drawn ends follow the env's seed."""
    env = zoo.make_env("cartpole-pixels", model=model, batch_size=64, seed=0, continue_threshold=0.5)
    out = env.rollout(30, _push_right, break_when_any_done=False)
    p = out["next", "continue_prob"]
    assert p.shape == (64, 30, 1)
    latent = out["next", "model_state"]
    with torch.no_grad():
        assert torch.allclose(p[..., 0], model.continue_prob(latent), atol=1e-6)
    # pushing right for 30 steps ends every episode: the head must have said so on the way
    assert (p < 0.5).any(-2).all()
    assert torch.equal(out["next", "terminated"], p < 0.5)

    def drawn(seed):
        e = zoo.make_env("cartpole-pixels", model=model, batch_size=64, seed=seed)
        return e.rollout(30, _push_right, break_when_any_done=False)["next", "terminated"]

    assert torch.equal(drawn(3), drawn(3))
