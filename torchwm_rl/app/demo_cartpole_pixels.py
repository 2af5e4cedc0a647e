"""The pixel CartPole demo (``torchwm-rl demo cartpole-pixels``): SB3 PPO only in the bundled
latent world model learned from CartPole-v1's rendered frames, then the reality check from pixels.

:func:`run` (called by :func:`torchwm_rl.app.demo.run_demo`):

1. loads the bundled ``cartpole-pixels`` RSSM and builds its imagined env through the SB3 export
   (``zoo.make_env("cartpole-pixels", batch_size=N).to_sb3()``): starts from the bundled bank of
   posterior latents of real reset frames, observation = the latent features, ``terminated``
   drawn from the continue head with the env's generator (:class:`PixelPPOConfig` names the
   policy-side settings);
2. trains Stable-Baselines3 PPO (``MlpPolicy``) there, never touching the real env;
3. runs :func:`torchwm_rl.pixel_reality.pixel_reality_check` on the real ``CartPole-v1`` (20
   episodes by default): each real step renders the frame, which goes through the model's
   posterior filter, and the policy acts on the resulting latent;
4. writes ``policy.safetensors`` (the greedy policy as ``observation -> logits``;
   :func:`torchwm_rl.app.demo.load_policy` reads it), ``results.json`` and ``results.png`` (real
   frames beside the model's decoded open-loop frames over one real episode, the learning curve,
   the open-loop pixel error by horizon and the probe's R^2).

The result record has the other demos' keys (``real_mean_return``, ``imagined_mean_return``,
``wall_seconds``, ...) plus the pixel error by horizon, the probe and how the real episodes
ended. Deterministic given the seed (one torch thread; seeded env, PPO and real resets).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .runs import DemoConfig, NO_MATPLOTLIB, default_out_dir, finish_run, pyplot

__all__ = ["PixelPPOConfig", "run", "real_episode_ends", "policy_network"]

STATE_NAMES = ("x", "x_dot", "theta", "theta_dot")
HORIZONS = (1, 5, 15, 50, 100)
X_LIMIT = 2.4  # CartPole-v1 terminates when |x| > 2.4 (and when |theta| > 12 degrees)


@dataclass
class PixelPPOConfig:
    """SB3 PPO settings for the pixel demo (what trained best in the time; see README)."""

    num_envs: int = 16
    n_steps: int = 256
    batch_size: int = 1024
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    ent_coef: float = 0.0
    continue_threshold: Optional[float] = None  # None: terminated drawn from the continue head
    # imagine with the prior's mean, not samples: the real check acts on the posterior's mean
    sample: bool = False


DEMO_NUM_ENVS = PixelPPOConfig.num_envs


def real_episode_ends(report) -> dict[str, int]:
    """How the real episodes ended: ``"x"`` (the cart left the track), ``"theta"`` (the pole
    fell) or ``"time"`` (not terminated: the time limit or the check's horizon)."""
    ends = {"x": 0, "theta": 0, "time": 0}
    for terminated, state in zip(report.real_terminated, report.real_final_states):
        ends["x" if terminated and abs(state[0]) > X_LIMIT else "theta" if terminated else "time"] += 1
    return ends


def policy_network(ppo) -> torch.nn.Sequential:
    """SB3 ``MlpPolicy``'s actor as a plain ``Linear-Tanh-Linear-Tanh-Linear`` (observation ->
    logits), the layout :func:`torchwm_rl.app.demo.load_policy` rebuilds; its argmax is
    ``ppo.predict(obs, deterministic=True)``."""
    import copy

    pi = ppo.policy.mlp_extractor.policy_net
    layers = [copy.deepcopy(m) for m in pi] + [copy.deepcopy(ppo.policy.action_net)]
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


def _curve_callback(num_envs: int, on_rollout: Callable[[dict], None]):
    """An SB3 callback recording, per rollout, the mean return of the imagined training episodes
    that ended in it and the mean return so far of those still running (the other demos'
    ``history`` records), and calling ``on_rollout`` with each record. Its ``history`` is the list."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.running = np.zeros(num_envs)
            self.ended: list[float] = []
            self.history: list[dict] = []
            self.t0 = time.perf_counter()

        def _on_step(self) -> bool:
            self.running += self.locals["rewards"]
            for i in np.flatnonzero(self.locals["dones"]):
                self.ended.append(float(self.running[i]))
                self.running[i] = 0.0
            return True

        def _on_rollout_end(self) -> None:
            rec = {"frames": int(self.num_timesteps),
                   "imagined_return": float(np.mean(self.ended)) if self.ended else math.nan,
                   "running_return": float(np.mean(self.running)),
                   "seconds": time.perf_counter() - self.t0}
            self.ended = []
            self.history.append(rec)
            on_rollout(rec)

    return Curve()


def _require_sb3():
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:
        raise ImportError("torchwm-rl demo cartpole-pixels trains SB3 PPO: pip install 'torchwm-rl[sb3]'") from exc


def run(cfg: DemoConfig, log: Callable[[str], None], t_start: float) -> dict[str, Any]:
    """The pixel CartPole demo with ``cfg`` resolved (see :func:`torchwm_rl.app.demo.run_demo`);
    returns the result record."""
    import gymnasium as gym

    from .. import zoo
    from ..pixel_reality import pixel_reality_check
    from ..serialization import save_weights
    from ..zoo.cartpole_pixels import render_frames_headless
    from .progress import Progress, describe_returns

    _require_sb3()
    from stable_baselines3 import PPO

    model = zoo.load("cartpole-pixels")
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    num_envs = cfg.num_envs if cfg.num_envs != DemoConfig.num_envs else DEMO_NUM_ENVS
    ppo_cfg = PixelPPOConfig(num_envs=num_envs)
    options = {"sample": ppo_cfg.sample}
    if ppo_cfg.continue_threshold is not None:
        options["continue_threshold"] = ppo_cfg.continue_threshold
    vec = zoo.make_env("cartpole-pixels", model=model, batch_size=num_envs, seed=cfg.seed, **options).to_sb3()
    n_steps = max(1, min(ppo_cfg.n_steps, cfg.frames // num_envs))  # a tiny budget still makes whole rollouts
    budget = max(1, math.ceil(cfg.frames / (n_steps * num_envs))) * n_steps * num_envs
    log(f"[torchwm-rl] cartpole-pixels: training SB3 PPO on the latent features of the bundled pixel world model "
        f"only ({num_envs} imagined envs, {budget:,} frames, seed {cfg.seed})")
    progress = Progress(budget, log, enabled=cfg.progress)
    curve = _curve_callback(num_envs, lambda rec: progress.update(rec["frames"], describe_returns(
        rec["imagined_return"], rec["running_return"], "in the last rollout")))
    ppo = PPO("MlpPolicy", vec, n_steps=n_steps, batch_size=min(ppo_cfg.batch_size, n_steps * num_envs),
              n_epochs=ppo_cfg.n_epochs, gamma=ppo_cfg.gamma, gae_lambda=ppo_cfg.gae_lambda,
              learning_rate=ppo_cfg.learning_rate, ent_coef=ppo_cfg.ent_coef, seed=cfg.seed, verbose=0, device="cpu")
    t_train = time.perf_counter()
    ppo.learn(budget, callback=curve)
    history = curve.history
    if history:
        progress.finish(history[-1]["frames"], describe_returns(history[-1]["imagined_return"],
                                                                history[-1]["running_return"], "in the last rollout"))
    train_seconds = time.perf_counter() - t_train

    log(f"[torchwm-rl] reality check from pixels: {cfg.episodes} episodes on the real CartPole-v1 "
        "(render -> posterior latent -> policy, each step)")
    render_frames_headless()
    real_env = gym.make("CartPole-v1", render_mode="rgb_array")
    check_env = zoo.make_env("cartpole-pixels", model=model, batch_size=min(cfg.episodes, 64), seed=cfg.seed + 20_000,
                             **options)
    report = pixel_reality_check(ppo, check_env, real_env, episodes=cfg.episodes, seed=cfg.seed, horizons=HORIZONS,
                                 state_names=STATE_NAMES)
    real_env.close()
    ends = real_episode_ends(report)
    log(report.summary())
    log(f"[torchwm-rl] real episodes ended: pole fell {ends['theta']}, cart left the track {ends['x']}, "
        f"time limit {ends['time']}")

    net = policy_network(ppo)
    save_weights(net, out / "policy.safetensors",
                 {"task": cfg.task, "kind": "torchwm_rl.demo.ppo_policy/1", "hidden": net[0].out_features,
                  "obs_dim": net[0].in_features, "n_actions": net[-1].out_features,
                  "architecture": "Linear-Tanh-Linear-Tanh-Linear (latent features -> logits; SB3 MlpPolicy's "
                                  "actor); the features are the posterior latent's cat(deter, stoch)"})
    plot_msg = _plot(out / "results.png", history, report) if cfg.save_plot else "plot disabled"
    if plot_msg:
        log(f"[torchwm-rl] {plot_msg}")
    return finish_run(
        out, cfg, report, history, train_seconds, t_start, plot_msg, log,
        real_env_id="CartPole-v1 from pixels", imagined_label="greedy, model",
        extra_result={"task": "cartpole-pixels", "algorithm": "SB3 PPO (MlpPolicy) on the latent features",
                      "pixel_error_by_horizon": {str(h): report.pixel_error_at(h) for h in HORIZONS},
                      "probe_r2": dict(zip(report.probe_names, report.probe_r2)),
                      "probe_rmse": dict(zip(report.probe_names, report.probe_rmse)),
                      "real_ends": ends},
        extra_json={"ppo": asdict(ppo_cfg) | {"n_steps": n_steps}},
    )


def _frame_strip(frames: np.ndarray, picks: list[int]) -> np.ndarray:
    """Frames ``[T, 1, H, W]`` uint8 at ``picks`` side by side (a 3-pixel blank gap), ``[H, n * (W + 3)]``."""
    tiles = [np.pad(frames[i, 0], ((0, 0), (0, 3))) for i in picks]
    return np.concatenate(tiles, 1)


def _plot(path: Path, history: list, report) -> Optional[str]:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig = plt.figure(figsize=(17, 9))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.25])
    ax = fig.add_subplot(grid[0, :])
    real, imagined = report.example_real_frames, report.example_open_loop_frames
    picks = sorted(set(np.linspace(0, len(real) - 1, min(8, len(real))).round().astype(int).tolist()))
    gap = np.zeros((4, len(picks) * (real.shape[-1] + 3)), np.uint8)
    ax.imshow(np.concatenate([_frame_strip(real, picks), gap, _frame_strip(imagined, picks)]), cmap="gray_r",
              aspect="auto")
    ax.set_yticks([real.shape[-2] / 2, 1.5 * real.shape[-2] + 4], ["real frame\n(preprocessed)",
                                                                  "model, open loop\n(decoded)"])
    ax.set_xticks([(j + 0.5) * (real.shape[-1] + 3) for j in range(len(picks))], [f"step {t}" for t in picks])
    ax.set_title(f"Real episode 1 (return {report.real_returns[0]:.0f}) beside the model's decoded frames, imagined "
                 "open loop from the first frame's posterior on the real actions")

    ax = fig.add_subplot(grid[1, 0])
    frames = [h["frames"] for h in history]
    ax.plot(frames, [h["imagined_return"] for h in history], ".", color="C0", ms=4,
            label="imagined training episodes that ended in the rollout (mean return)")
    ax.plot(frames, [h["running_return"] for h in history], "1", color="C2", ms=5, alpha=0.5,
            label="still running at rollout end (return so far)")
    ax.errorbar([frames[-1] if frames else 0], [report.real_mean_return], yerr=[report.real_std_return], fmt="*",
                ms=14, color="k", capsize=4, label=f"real CartPole-v1 from pixels, after training ({report.episodes} "
                                                   f"episodes, {report.real_mean_return:.0f})")
    ax.axhline(report.horizon, color="0.6", ls=":", lw=1, label=f"time limit ({report.horizon})")
    ax.set_xlabel("imagined frames (training)")
    ax.set_ylabel("episode return")
    ax.set_ylim(bottom=0, top=report.horizon * 1.08)
    ax.set_title("Learning curve (trained only in the model)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)

    ax = fig.add_subplot(grid[1, 1])
    steps = range(1, len(report.pixel_error) + 1)
    ax.semilogy(steps, report.pixel_error, color="C0", label="model (prior on the real actions)")
    ax.semilogy(steps, report.copy_error, color="0.5", ls="--", label="copy the last real frame")
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel("per-pixel MSE vs the real frame (0..1 scale)")
    ax.set_title("Open-loop pixel error by horizon (real episodes)")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 2])
    r2 = [0.0 if math.isnan(v) else v for v in report.probe_r2]
    bars = ax.bar(report.probe_names, r2, color="C1")
    for bar, rmse in zip(bars, report.probe_rmse):
        ax.text(bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 0) + 0.02, f"RMSE {rmse:.3g}",
                ha="center", fontsize=8)
    ax.set_ylim(min(0.0, min(r2)), 1.1)
    ax.set_ylabel("R^2 on held-out real episodes")
    ax.set_title("Linear probe: real state from the posterior latent")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
