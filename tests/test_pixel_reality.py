"""The reality check from pixels (issue 22, item 6): the posterior filter the policy acts on in
the real env, the open-loop pixel error and the linear probe recomputed by hand, the report's
keys and finite numbers, and bad input refused. Tiny budgets (a few short episodes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("pygame")

from torchwm_rl import zoo  # noqa: E402
from torchwm_rl.pixel_reality import (  # noqa: E402
    PixelRealityReport, filter_episode, linear_probe, open_loop_pixel_error, pixel_reality_check,
)
from torchwm_rl.zoo import cartpole_pixels as C  # noqa: E402

NAMES = ["x", "x_dot", "theta", "theta_dot"]


@pytest.fixture(scope="module")
def model():
    return zoo.load("cartpole-pixels")


def real_env():
    import gymnasium as gym

    C.render_frames_headless()
    return gym.make("CartPole-v1", render_mode="rgb_array")


def sign_policy(features: torch.Tensor) -> torch.Tensor:
    """A deterministic policy of the features (not a constant: both actions occur)."""
    return (features[..., 3] > features[..., 7]).long()


def test_the_policy_acts_on_the_posterior_of_the_real_rendered_frames(model):
    """Every feature vector the policy sees is model.observe called by hand on
    preprocess(render()) of a second real env replaying the same seed and actions."""
    seen = []

    def policy(features):
        seen.append(features.clone())
        return torch.tensor(len(seen) % 3 == 0).long()  # both actions

    env = real_env()
    ep = filter_episode(model, policy, env, seed=11, horizon=8, real_state=lambda e: np.array(e.unwrapped.state))
    assert ep.length == len(seen) == 8 and ep.actions.unique().numel() == 2
    replay = real_env()
    replay.reset(seed=11)
    x = C.preprocess(torch.from_numpy(replay.render()))[None]
    with torch.no_grad():
        z = model.observe(model.initial_latent(1), None, x)
        for t in range(ep.length):
            assert torch.equal(seen[t], model.features(z)), t
            assert torch.equal(ep.frames[t], x[0]) and torch.equal(ep.latents[t]["deter"], z[0]["deter"]), t
            assert np.array_equal(ep.states[t], np.asarray(replay.unwrapped.state)), t
            replay.step(int(ep.actions[t]))
            x = C.preprocess(torch.from_numpy(replay.render()))[None]
            z = model.observe(z, ep.actions[t:t + 1], x)
    assert torch.equal(ep.latents[-1]["stoch"], z[0]["stoch"])


def test_open_loop_pixel_error_is_the_decoded_prior_against_the_real_frames(model):
    env = real_env()
    eps = [filter_episode(model, lambda f: sign_policy(f)[0], env, seed=s, horizon=9) for s in (3, 4)]
    err, cnt, copy = open_loop_pixel_error(model, eps, max_horizon=6, stride=4)  # starts t = 0, 4, 8
    with torch.no_grad():
        for k in (1, 2, 6):
            mse, base = [], []
            for ep in eps:
                for t in range(0, ep.length, 4):
                    if t + k > ep.length:
                        continue
                    z = ep.latents[t:t + 1]
                    for j in range(k):
                        z = model.imagine(z, ep.actions[t + j:t + j + 1])
                    real = ep.frames[t + k].float() / 255
                    mse.append(float((model.decode(z)[0].float() / 255 - real).pow(2).mean()))
                    base.append(float((ep.frames[t].float() / 255 - real).pow(2).mean()))
            assert cnt[k - 1] == len(mse) > 0
            assert err[k - 1] == pytest.approx(np.mean(mse), rel=1e-5)
            assert copy[k - 1] == pytest.approx(np.mean(base), rel=1e-5)


@pytest.mark.parametrize("case", ["exact", "constant dim"])
def test_linear_probe_r2_and_rmse(case):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 5, generator=g)
    states = torch.stack([f @ torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]) + 0.25, 2 * f[:, 1]], 1)
    if case == "constant dim":
        states[:, 1] = 7.0
    r2, rmse = linear_probe(f[:25], states[:25], f[25:], states[25:])
    assert r2[0] == pytest.approx(1.0) and rmse[0] == pytest.approx(0.0, abs=1e-6)
    if case == "exact":
        assert r2[1] == pytest.approx(1.0)
    else:
        assert math.isnan(r2[1]) and rmse[1] == pytest.approx(0.0, abs=1e-6)


def test_report_keys_finite_numbers_and_the_real_episodes_it_ran(model):
    wm = zoo.make_env("cartpole-pixels", model=model, batch_size=3, seed=0)
    rep = pixel_reality_check(sign_policy, wm, real_env(), episodes=4, horizon=15, seed=5, horizons=(1, 5, 10),
                              stride=3, state_names=NAMES)
    assert isinstance(rep, PixelRealityReport) and rep.episodes == 4 and rep.horizon == 15
    # the real episodes are filter_episode's from seeds seed + i
    for i in (0, 3):
        ep = filter_episode(model, lambda f: sign_policy(f)[0], real_env(), seed=5 + i, horizon=15)
        assert rep.real_returns[i] == ep.ret and rep.real_lengths[i] == ep.length
        assert rep.real_final_states[i] == ep.states[-1].tolist()
    assert len(rep.imagined_returns) == len(rep.imagined_lengths) == 4
    d = rep.to_dict()
    for key in ("imagined_mean_return", "real_mean_return", "return_gap", "pixel_error_by_horizon",
                "copy_error_by_horizon", "probe_r2", "probe_rmse", "probe_names", "real_terminated", "horizons"):
        assert key in d, key
    assert not any(k.startswith("example_") for k in d)
    json.dumps(d, allow_nan=False)  # strict JSON: every number finite
    assert set(d["pixel_error_by_horizon"]) == {"1", "5", "10"} and d["probe_names"] == NAMES
    assert all(math.isfinite(v) and v >= 0 for v in rep.pixel_error + rep.copy_error + rep.probe_rmse)
    assert all(math.isfinite(v) for v in rep.probe_r2) and rep.probe_fit_frames + rep.probe_test_frames == sum(
        n + 1 for n in rep.real_lengths)
    t = rep.real_lengths[0]
    assert rep.example_real_frames.shape == rep.example_open_loop_frames.shape == (t + 1, *C.IMAGE_SHAPE)
    assert rep.example_real_frames.dtype == np.uint8 and "real return from pixels" in rep.summary()


def _bad(model, **kw):
    args = dict(policy=sign_policy, world_model_env=zoo.make_env("cartpole-pixels", model=model, batch_size=2),
                real_env=real_env(), episodes=2, horizon=3)
    args.update(kw)
    return args


@pytest.mark.parametrize("change, error, match", [
    (dict(episodes=1), ValueError, r"episodes must be an int >= 2"),
    (dict(episodes=2.0), ValueError, r"episodes must be an int >= 2"),
    (dict(horizons=()), ValueError, r"horizons must be a non-empty list/tuple of ints >= 1"),
    (dict(horizons=(1, 0)), ValueError, r"horizons must be"),
    (dict(horizons=(1.5,)), ValueError, r"horizons must be"),
    (dict(stride=0), ValueError, r"stride must be an int >= 1"),
    (dict(state_names=["x"]), ValueError, r"state_names has 1 names for a 4-dim real state"),
    ("no render", ValueError, r"render_mode='rgb_array'"),
    ("pixel observations", ValueError, r"observation has shape \(1, 32, 120\).*observation='latent'"),
    ("small frames", ValueError, r"uint8 frames of shape \[\.\.\., 400, 600, 3\].*got shape \[200, 600, 3\]"),
    ("not a latent model", TypeError, r"lacks \['frame_shape', 'preprocess'"),
])
def test_bad_input_is_refused_naming_the_argument(model, change, error, match):
    import gymnasium as gym

    if change == "no render":
        change = dict(real_env=gym.make("CartPole-v1"))
    elif change == "pixel observations":
        change = dict(world_model_env=zoo.make_env("cartpole-pixels", model=model, batch_size=2, observation="pixels"))
    elif change == "small frames":
        class Cropped(gym.Wrapper):
            def render(self):
                return self.env.render()[:200]

        change = dict(real_env=Cropped(real_env()))
    elif change == "not a latent model":
        change = dict(world_model_env=zoo.make_env("cartpole"))
    with pytest.raises(error, match=match):
        pixel_reality_check(**_bad(model, **change))
