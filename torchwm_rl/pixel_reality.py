"""Reality check from pixels: a policy trained in a latent (Dreamer-style) world model, run in the
real env through the model's posterior filter.

``pixel_reality_check(policy, world_model_env, real_env, episodes=20)`` scores ``policy`` twice:

* **imagined**: greedy episodes in ``world_model_env`` (the TorchRL :class:`~torchwm_rl.WorldModelEnv`
  over the latent model, observation = the latent features), from its own seeded resets;
* **real, from pixels**: each real step renders the real env's ``rgb_array`` frame, which goes
  through ``model.preprocess`` and one posterior update ``z = model.observe(z, action, frame)``
  (``action=None`` at the episode's first frame); the policy acts on ``model.features(z)``.

From the real episodes it measures what limits the policy:

* **open-loop pixel error by horizon**: from the posterior latent at every ``stride``-th real step,
  the model imagines ahead (``model.imagine`` with the prior mean) on the real actions; the
  decoded frame ``h`` steps ahead is compared with the real frame ``h`` steps ahead (per-pixel
  MSE on a 0..1 scale), next to copying the last real frame (the trivial predictor);
* **state error through a linear probe**: a least-squares linear map (with bias) from the
  posterior features to the real env's state (``real_state(real_env)``, by default
  ``real_env.unwrapped.state``), fit on the even-numbered real episodes and scored on the odd
  ones (held out): R^2 per state dim and RMSE in the state's units.

The model (``world_model_env.world_model``) follows :mod:`torchwm_rl.latent`'s protocol plus
``imagine(latent, action)`` (a prior step), ``features(latent)`` (the policy's input) and
``decode(latent)`` (uint8 frames in ``preprocess``'s form).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .reality import ReturnSummary

__all__ = ["PixelEpisode", "PixelRealityReport", "filter_episode", "pixel_reality_check", "LATENT_PROTOCOL"]

#: what the model must provide (see the module docs)
LATENT_PROTOCOL = ("frame_shape", "preprocess", "initial_latent", "observe", "imagine", "features", "decode")


@dataclass
class PixelEpisode:
    """One real episode run from pixels (:func:`filter_episode`), ``T`` steps.

    ``frames`` uint8 ``[T + 1, *image]`` (preprocessed real frames, the one after each step);
    ``actions`` ``[T]``; ``latents`` the posterior latent after each frame (TensorDict ``[T + 1]``);
    ``states`` float64 ``[T + 1, S]`` (the real state at each frame); ``ret`` the real return."""

    frames: torch.Tensor
    actions: torch.Tensor
    latents: Any
    states: np.ndarray
    ret: float
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class PixelRealityReport(ReturnSummary):
    """Result of :func:`pixel_reality_check`; ``to_dict()`` is JSON-ready (frames left out)."""

    episodes: int
    horizon: int
    imagined_returns: list[float]
    imagined_lengths: list[int]
    real_returns: list[float]
    real_lengths: list[int]
    real_terminated: list[bool]
    real_final_states: list[list[float]]
    # pixel_error[k - 1]: mean per-pixel MSE (0..1 scale) of the frame decoded k steps ahead of a
    # real posterior latent (open loop, real actions) against the real frame; *_count: how many
    # (episode, start) pairs it is the mean over; copy_error: the last real frame as the prediction
    pixel_error: list[float]
    pixel_error_count: list[int]
    copy_error: list[float]
    horizons: list[int]
    probe_names: list[str]
    probe_r2: list[float]
    probe_rmse: list[float]
    probe_fit_frames: int
    probe_test_frames: int
    # episode 0: real frames [T + 1, *image] and the model's open-loop frames from its first
    # posterior latent on its real actions [T + 1, *image] (row 0 is the posterior's decoding)
    example_real_frames: Optional[np.ndarray] = field(default=None, repr=False)
    example_open_loop_frames: Optional[np.ndarray] = field(default=None, repr=False)

    def pixel_error_at(self, h: int) -> float:
        """Open-loop pixel MSE ``h`` steps ahead (nan where no real episode was that long)."""
        return self.pixel_error[h - 1] if 1 <= h <= len(self.pixel_error) else math.nan

    def error_at(self, step: int) -> float:
        """:meth:`pixel_error_at` under :class:`torchwm_rl.reality.RealityReport`'s name (the app's
        result record reads either report)."""
        return self.pixel_error_at(step)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("example_")}
        d.update(imagined_mean_return=self.imagined_mean_return,
                 imagined_std_return=self.imagined_std_return, real_mean_return=self.real_mean_return,
                 real_std_return=self.real_std_return, return_gap=self.return_gap,
                 pixel_error_by_horizon={str(h): self.pixel_error_at(h) for h in self.horizons},
                 copy_error_by_horizon={str(h): (self.copy_error[h - 1] if h <= len(self.copy_error) else math.nan)
                                        for h in self.horizons})
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        err = ", ".join(f"h={h}: {self.pixel_error_at(h):.2g}" for h in self.horizons)
        probe = ", ".join(f"{n} {r:.2f} ({e:.3g})" for n, r, e in zip(self.probe_names, self.probe_r2, self.probe_rmse))
        return (f"imagined return {self.imagined_mean_return:.1f} | real return from pixels "
                f"{self.real_mean_return:.1f} +/- {self.real_std_return:.1f} ({self.episodes} episodes)\n"
                f"open-loop pixel MSE (0..1 scale): {err}\n"
                f"linear probe on the posterior latent, held out: R^2 (RMSE) {probe}")


def _check_model(model) -> None:
    missing = [name for name in LATENT_PROTOCOL if not hasattr(model, name)]
    if missing:
        raise TypeError(f"pixel_reality_check: world_model_env.world_model ({type(model).__name__}) lacks "
                        f"{missing}; a latent model needs {list(LATENT_PROTOCOL)} (see torchwm_rl.pixel_reality)")


def _cartpole_state(real_env) -> np.ndarray:
    return np.asarray(real_env.unwrapped.state, dtype=np.float64)


def _frame(model, real_env) -> torch.Tensor:
    """The real env's current frame, preprocessed, with a batch of one."""
    from .latent import check_frames

    frame = real_env.render()
    if frame is None:
        raise ValueError("pixel_reality_check: real_env.render() returned None; make the real env with "
                         "render_mode='rgb_array' (gym.make(env_id, render_mode='rgb_array'))")
    return model.preprocess(check_frames(frame, model.frame_shape, "pixel_reality_check (real_env.render())"))[None]


@torch.no_grad()
def filter_episode(model, policy: Callable[[torch.Tensor], Any], real_env, seed: Optional[int] = None,
                   horizon: int = 500, real_state: Callable[[Any], np.ndarray] = _cartpole_state) -> PixelEpisode:
    """One real episode acted from pixels: reset ``real_env`` (with ``seed``), then each step

    ``x_t = preprocess(render())``; ``z_t = observe(z_{t-1}, a_{t-1}, x_t)`` (``z_0 =
    observe(initial_latent(1), None, x_0)``); ``a_t = policy(features(z_t))``, with ``policy``
    taking features ``[1, F]`` and returning one action (a tensor or int; the real env gets an int
    for a Discrete space). Stops at the real episode's end or after ``horizon`` steps."""
    from .reality import _to_real_action

    real_env.reset(seed=seed)
    x = _frame(model, real_env)
    z = model.observe(model.initial_latent(1), None, x)
    frames, latents, actions, states = [x[0]], [z[0]], [], [real_state(real_env)]
    total, terminated, truncated = 0.0, False, False
    while len(actions) < horizon and not (terminated or truncated):
        action = torch.as_tensor(policy(model.features(z))).reshape(-1)
        _, reward, terminated, truncated, _ = real_env.step(_to_real_action(action, real_env.action_space))
        total += float(reward)
        x = _frame(model, real_env)
        z = model.observe(z, action.reshape(1, *action.shape[1:]) if action.numel() == 1 else action[None], x)
        actions.append(action.reshape(()) if action.numel() == 1 else action)
        frames.append(x[0])
        latents.append(z[0])
        states.append(real_state(real_env))
    act = torch.stack(actions) if actions else torch.zeros(0, dtype=torch.long)
    return PixelEpisode(torch.stack(frames), act, torch.stack(latents), np.stack(states), total,
                        bool(terminated), bool(truncated))


@torch.no_grad()
def open_loop_pixel_error(model, episodes: Sequence[PixelEpisode], max_horizon: int, stride: int = 5):
    """``(error, count, copy_error)`` lists over horizons ``1..K`` (``K <= max_horizon``: the
    longest horizon any start reached; see the module docs). Starts at every ``stride``-th step
    ``t`` of every episode (``t < T``); a start counts at horizon ``k`` while ``t + k <= T``. All
    starts are imagined in one batch with the prior mean (``model.imagine(z, a)``)."""
    err, cnt, copy = np.zeros(max_horizon), np.zeros(max_horizon, dtype=np.int64), np.zeros(max_horizon)
    rows = [(i, t) for i, ep in enumerate(episodes) for t in range(0, ep.length, stride)]
    if not rows:
        return [], [], []
    # every episode's frames and actions in one flat tensor; row r reads episode i at offset[i] + step
    offset = np.cumsum([0] + [ep.length + 1 for ep in episodes])[:-1]
    frames = torch.cat([ep.frames for ep in episodes]).float() / 255.0
    actions = torch.cat([torch.cat([ep.actions, ep.actions[-1:]]) for ep in episodes])  # padded to T + 1 per episode
    base = torch.tensor([int(offset[i]) for i, _ in rows])
    start = torch.tensor([t for _, t in rows])
    length = torch.tensor([episodes[i].length for i, _ in rows])
    z = torch.stack([episodes[i].latents[t] for i, t in rows])
    last = frames[base + start]
    for k in range(1, max_horizon + 1):
        valid = start + k <= length
        if not bool(valid.any()):
            break
        z = model.imagine(z, actions[base + torch.clamp(start + k - 1, max=length - 1)])
        real = frames[base + torch.clamp(start + k, max=length)]  # clamped rows are masked out
        mse = (model.decode(z).float() / 255.0 - real).pow(2).flatten(1).mean(1)
        err[k - 1] = float(mse[valid].mean())
        copy[k - 1] = float((last - real).pow(2).flatten(1).mean(1)[valid].mean())
        cnt[k - 1] = int(valid.sum())
    k_max = int(np.max(np.nonzero(cnt)[0]) + 1) if cnt.any() else 0
    return err[:k_max].tolist(), cnt[:k_max].tolist(), copy[:k_max].tolist()


def linear_probe(features_fit: torch.Tensor, states_fit: torch.Tensor, features_test: torch.Tensor,
                 states_test: torch.Tensor) -> tuple[list[float], list[float]]:
    """Least squares (with bias, float64) from features to states on the fit rows; ``(R^2, RMSE)``
    per state dim on the test rows (R^2 is nan for a dim that does not vary in the test rows)."""
    def design(f):
        return torch.cat([f.double(), torch.ones(len(f), 1, dtype=torch.float64)], 1)

    coef = torch.linalg.lstsq(design(features_fit), states_fit.double()).solution
    resid = states_test.double() - design(features_test) @ coef
    var = (states_test.double() - states_test.double().mean(0)).pow(2).sum(0)
    r2 = torch.where(var > 0, 1 - resid.pow(2).sum(0) / var, torch.full_like(var, math.nan))
    return r2.tolist(), resid.pow(2).mean(0).sqrt().tolist()


def _policy_fn(module, dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    from tensordict import TensorDict

    def act(features: torch.Tensor) -> torch.Tensor:
        return module(TensorDict(observation=features.to(dtype), batch_size=[1]))["action"][0]

    return act


def _check_horizons(horizons) -> list[int]:
    hs = list(horizons) if isinstance(horizons, (list, tuple)) else None
    if not hs or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hs):
        raise ValueError(f"pixel_reality_check: horizons must be a non-empty list/tuple of ints >= 1 (e.g. "
                         f"(1, 5, 15, 50)); got {horizons!r}")
    return sorted(set(hs))


@torch.no_grad()
def pixel_reality_check(
    policy,
    world_model_env,
    real_env,
    episodes: int = 20,
    horizon: Optional[int] = None,
    seed: Optional[int] = 0,
    horizons: Sequence[int] = (1, 5, 15, 50),
    stride: int = 5,
    real_state: Callable[[Any], np.ndarray] = _cartpole_state,
    state_names: Optional[Sequence[str]] = None,
) -> PixelRealityReport:
    """Score ``policy`` in imagination and in the real env from pixels (see the module docs).

    Args:
        policy: as :func:`torchwm_rl.reality_check` takes it (a tensordict module reading
            ``"observation"``, a Stable-Baselines3 model or policy, or a callable
            ``features [B, F] -> action``), acting greedily on the latent features.
        world_model_env: the :class:`torchwm_rl.WorldModelEnv` over the latent model (or a bare
            export of one) with the features as its observation (``observation="latent"``).
        real_env: the Gymnasium env the model was learned from, made with ``render_mode="rgb_array"``.
        episodes: real episodes (and imagined ones); at least 2 (the probe is fit on the even
            ones and scored on the odd ones).
        horizon: steps per episode at most (default: the model env's time limit, else the real
            env's ``spec.max_episode_steps``, else 1000).
        seed: seeds the model env (``set_seed``) and the real resets (``seed + episode``).
        horizons: the open-loop horizons reported by name (the error is computed for every step
            up to the largest).
        stride: open-loop starts every ``stride`` real steps.
        real_state: ``fn(real_env) -> state vector`` read at each real frame for the probe
            (default ``real_env.unwrapped.state``); never shown to the model or the policy.
        state_names: names of the state dims (default ``"0"``, ``"1"``, ...).

    Returns:
        a :class:`PixelRealityReport`. Grad is disabled throughout.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from .reality import _as_module, _default_horizon, _imagined_episodes, _torchrl_env

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise ValueError(f"pixel_reality_check: episodes must be an int >= 2 (the linear probe is fit on the even "
                         f"episodes and scored on the odd ones); got {episodes!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"pixel_reality_check: stride must be an int >= 1; got {stride!r}")
    hs = _check_horizons(horizons)
    env = _torchrl_env(world_model_env)
    model = getattr(env, "world_model", None)
    if model is None:
        raise TypeError("pixel_reality_check: world_model_env has no world_model (an nn.Module latent model); "
                        "build it with zoo.make_env('cartpole-pixels') or WorldModelEnv(your_rssm, ...)")
    _check_model(model)
    n_features = int(model.features(model.initial_latent(1)).shape[-1])
    obs_shape = tuple(env.observation_spec["observation"].shape[len(env.batch_size):])
    if obs_shape != (n_features,):
        raise ValueError(f"pixel_reality_check: world_model_env's observation has shape {obs_shape}, but the policy "
                         f"acts on the latent features, shape ({n_features},) in the real env; make the env with "
                         "observation='latent'")
    if getattr(real_env, "render_mode", None) != "rgb_array":
        raise ValueError(f"pixel_reality_check: real_env must render frames: make it with render_mode='rgb_array' "
                         f"(got render_mode={getattr(real_env, 'render_mode', None)!r})")
    if len(env.batch_size) > 1:
        raise ValueError(f"pixel_reality_check needs a 0- or 1-dim batch, got {tuple(env.batch_size)}")
    horizon = int(horizon) if horizon is not None else _default_horizon(env, real_env)
    module = _as_module(policy, env)
    act = _policy_fn(module, env.observation_spec["observation"].dtype)
    unbatched = len(env.batch_size) == 0
    n_env = 1 if unbatched else int(env.batch_size[0])
    if seed is not None:
        env.set_seed(int(seed))

    imag_ret, imag_len, real_eps = [], [], []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while len(imag_ret) < episodes:
            td0 = env.reset()
            r, ln, _ = _imagined_episodes(env, module, td0.unsqueeze(0) if unbatched else td0, horizon,
                                          unbatched, n_env)
            take = min(n_env, episodes - len(imag_ret))
            imag_ret += r[:take].tolist()
            imag_len += ln[:take].tolist()
        for i in range(episodes):
            real_eps.append(filter_episode(model, act, real_env, None if seed is None else int(seed) + i,
                                           horizon, real_state))

    err, cnt, copy = open_loop_pixel_error(model, real_eps, max(hs), stride)
    feats = [model.features(ep.latents) for ep in real_eps]
    states = [torch.as_tensor(ep.states) for ep in real_eps]
    fit_f, fit_s = torch.cat(feats[0::2]), torch.cat(states[0::2])
    test_f, test_s = torch.cat(feats[1::2]), torch.cat(states[1::2])
    r2, rmse = linear_probe(fit_f, fit_s, test_f, test_s)
    names = list(state_names) if state_names is not None else [str(d) for d in range(fit_s.shape[1])]
    if len(names) != fit_s.shape[1]:
        raise ValueError(f"pixel_reality_check: state_names has {len(names)} names for a {fit_s.shape[1]}-dim "
                         f"real state; got {names!r}")
    first = real_eps[0]
    open_loop = [model.decode(first.latents[:1])]
    z = first.latents[:1]
    for t in range(first.length):
        z = model.imagine(z, first.actions[t:t + 1])
        open_loop.append(model.decode(z))
    return PixelRealityReport(
        episodes=episodes, horizon=horizon,
        imagined_returns=[float(x) for x in imag_ret], imagined_lengths=[int(x) for x in imag_len],
        real_returns=[ep.ret for ep in real_eps], real_lengths=[ep.length for ep in real_eps],
        real_terminated=[ep.terminated for ep in real_eps],
        real_final_states=[ep.states[-1].tolist() for ep in real_eps],
        pixel_error=err, pixel_error_count=cnt, copy_error=copy, horizons=hs,
        probe_names=names, probe_r2=r2, probe_rmse=rmse, probe_fit_frames=len(fit_f), probe_test_frames=len(test_f),
        example_real_frames=first.frames.cpu().numpy(),
        example_open_loop_frames=torch.cat(open_loop).cpu().numpy(),
    )
