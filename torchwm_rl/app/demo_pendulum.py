"""The Pendulum demo (``torchwm-rl demo pendulum``): SAC only in the bundled ensemble
world model, then :func:`torchwm_rl.reality_check` on the real ``Pendulum-v1``.

Same outputs as the CartPole demo (:mod:`torchwm_rl.app.demo_cartpole`): ``policy.safetensors``,
``results.json`` (``real_mean_return``, ``imagined_mean_return``, ``wall_seconds``, ...) and
``results.png``, whose middle panel shows the imagined and real trajectories from the same start
state with the ensemble's uncertainty (max pairwise L2 distance of the members' predictions)
along each. Deterministic given the seed (one torch thread; a frame budget, never a time budget).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..reality import plot_prediction_error
from .runs import DemoConfig, NO_MATPLOTLIB, default_out_dir, finish_run, pyplot, whole_batches

DEMO_NUM_ENVS = 32  # imagined envs for SAC when the CLI does not say (--num-envs)


@torch.no_grad()
def trajectory_uncertainty(model, net, observations: list) -> list:
    """The ensemble's uncertainty at each step of a trajectory driven by the deterministic SAC
    policy: the max pairwise L2 distance of the members' predicted next observations."""
    from ..ensemble import max_pairwise_distance

    if len(observations) < 2:
        return []
    obs = torch.tensor(observations[:-1], dtype=torch.float32)
    action = _greedy(net, obs)
    return max_pairwise_distance(model(obs, action), 1).tolist()


def _greedy(net, obs: torch.Tensor) -> torch.Tensor:
    """The policy's mean action (the TanhNormal's location squashed into [-2, 2])."""
    loc = net(obs)[..., : net[-1].out_features // 2]
    return torch.tanh(loc) * 2.0


class SACGreedyPolicy(nn.Module):
    """The deterministic action of a saved SAC policy (``torchwm-rl demo pendulum``):
    ``low + (high - low) * (tanh(loc) + 1) / 2``, where ``loc`` is the first half of ``net``'s
    outputs: what TorchRL's ``TanhNormal`` actor gives under ``ExplorationType.DETERMINISTIC``."""

    def __init__(self, net: nn.Sequential, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        loc = self.net(observation)[..., : self.low.shape[-1]]
        return self.low + (self.high - self.low) * (torch.tanh(loc) + 1) / 2


def run(cfg: DemoConfig, log: Callable[[str], None], t_start: float) -> dict[str, Any]:
    """The Pendulum demo (SAC) with ``cfg`` resolved (see :func:`torchwm_rl.app.demo.run_demo`);
    returns the result record."""
    import gymnasium as gym

    from .. import zoo
    from ..reality import reality_check
    from ..serialization import save_weights
    from ..zoo import pendulum
    from .progress import Progress, describe_returns
    from .sac import SACConfig, train_sac

    model = zoo.load("pendulum")
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    num_envs = cfg.num_envs if cfg.num_envs != DemoConfig.num_envs else DEMO_NUM_ENVS
    per_batch = SACConfig(num_envs=num_envs).frames_per_batch
    # whole batches (TorchRL's collector rounds up, and warns, otherwise): the same frames as before
    sac = SACConfig(seed=cfg.seed, frames=cfg.frames, num_envs=num_envs,
                    init_random_frames=whole_batches(min(2_000, max(cfg.frames // 4, num_envs)), per_batch))
    env = pendulum.make_env(model, batch_size=num_envs, seed=cfg.seed)
    log(f"[torchwm-rl] pendulum: training SAC in the bundled {model.members}-member ensemble only "
        f"({num_envs} imagined envs, {cfg.frames:,} frames, seed {cfg.seed})")
    progress = Progress(whole_batches(cfg.frames, sac.frames_per_batch), log, enabled=cfg.progress)

    def status(rec: dict) -> str:
        return describe_returns(rec["imagined_return"], rec["running_return"], "since the last line")

    t_train = time.perf_counter()
    actor, net, history = train_sac(env, sac, on_batch=lambda rec: progress.update(rec["frames"], status(rec)))
    if history:
        progress.finish(history[-1]["frames"], status(history[-1]))
    train_seconds = time.perf_counter() - t_train

    real_id = zoo.real_env_id("pendulum")
    log(f"[torchwm-rl] reality check: {cfg.episodes} episodes on the real {real_id}")
    real_env = gym.make(real_id)
    check_env = pendulum.make_env(model, batch_size=min(cfg.episodes, 64), seed=cfg.seed + 20_000)
    report = reality_check(actor, check_env, real_env, episodes=cfg.episodes, seed=cfg.seed,
                           set_real_state=pendulum.set_real_state)
    real_env.close()
    u_imagined = trajectory_uncertainty(model, net, report.imagined_trajectory)
    u_real = trajectory_uncertainty(model, net, report.real_trajectory)

    bounds = env.action_spec_unbatched.space
    save_weights(net, out / "policy.safetensors",
                 {"task": "pendulum", "kind": "torchwm_rl.demo.sac_policy/1", "hidden": sac.hidden,
                  "obs_dim": net[0].in_features, "n_actions": net[-1].out_features // 2,
                  "action_low": json.dumps(bounds.low.reshape(-1).tolist()),
                  "action_high": json.dumps(bounds.high.reshape(-1).tolist()),
                  "architecture": "Linear-ReLU-Linear-ReLU-Linear (observation -> TanhNormal loc, scale "
                                  "parameter); greedy action = low + (high - low) * (tanh(loc) + 1) / 2; "
                                  "torchwm_rl.app.demo.load_policy rebuilds it"})
    plot_msg = _plot(out / "results.png", history, report, u_imagined, u_real) if cfg.save_plot else "plot disabled"
    if plot_msg:
        log(f"[torchwm-rl] {plot_msg}")
    mean = lambda values: float(sum(values) / len(values)) if values else math.nan  # noqa: E731
    return finish_run(
        out, cfg, report, history, train_seconds, t_start, plot_msg, log,
        real_env_id=real_id, imagined_label="deterministic policy, model",
        extra_result={"task": "pendulum", "algorithm": "SAC", "uncertainty_imagined_mean": mean(u_imagined),
                      "uncertainty_real_mean": mean(u_real)},
        extra_json={"sac": asdict(sac), "uncertainty": {"imagined": u_imagined, "real": u_real}},
    )


def _plot(path: Path, history: list, report, u_imagined: list, u_real: list) -> Optional[str]:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8))
    ax = axes[0]
    ax.plot([h["frames"] for h in history], [h["imagined_return"] for h in history], ".", color="C0",
            label="training episodes that ended (mean return, in the model)")
    ax.errorbar([history[-1]["frames"] if history else 0], [report.real_mean_return],
                yerr=[report.real_std_return], fmt="*", ms=14, color="k", capsize=4,
                label=f"real Pendulum-v1, after training ({report.episodes} episodes)")
    ax.set_xlabel("imagined frames (training)")
    ax.set_ylabel("episode return")
    ax.set_title("SAC trained only in the ensemble model")
    ax.legend(fontsize=8)

    ax = axes[1]
    imag = torch.tensor(report.imagined_trajectory)
    real = torch.tensor(report.real_trajectory)
    for traj, style, name in ((real, "-", "real"), (imag, "--", "imagined")):
        if len(traj):
            ax.plot(torch.atan2(traj[:, 1], traj[:, 0]).tolist(), style, color="C0", label=f"angle (rad), {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("angle (rad)")
    twin = ax.twinx()
    twin.plot(range(1, len(u_real) + 1), u_real, "-", color="C3", lw=0.9, label="uncertainty along the real one")
    twin.plot(range(1, len(u_imagined) + 1), u_imagined, "--", color="C3", lw=0.9,
              label="uncertainty along the imagined one")
    twin.set_ylabel("ensemble uncertainty (max pairwise L2)", color="C3")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    ax.set_title("Same start, same policy: imagined vs real, with uncertainty")

    plot_prediction_error(axes[2], report, dict(fontsize=8))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
