"""The pixel CartPole demo (``torchwm-rl demo cartpole-pixels``): a policy trained only in the
bundled latent world model learned from CartPole-v1's rendered frames, by distilling a planner
that imagines in it, then the reality check from pixels.

:func:`run` (called by :func:`torchwm_rl.app.demo.run_demo`):

1. loads the bundled ``cartpole-pixels`` RSSM; plays :attr:`PixelDistilConfig.bank_episodes`
   random-action real episodes (reset seeds ``bank_seed + i``) and keeps the posterior latents of
   their rendered frames (the real check's filter) as the bank of start states: the only real
   data the training sees (``real_frames_for_training`` in the record);
2. trains the policy by :func:`torchwm_rl.distillation.distil`: the teacher is the library's
   :class:`torchwm_rl.planning.DiscreteCEMPlanner` (:func:`make_planner`: ``candidates`` x
   ``horizon``-step action sequences, ``iters`` CEM iterations, each scored by its expected
   imagined steps alive under the continue head), which labels latents with its action; the
   student (an MLP on the latent features) is fit on the labels, then acts greedily inside the
   imagined env from bank starts, and the latents it visits are labelled next (DAgger with
   imagined states). The budget (``--frames``) is the number of labelled latents, split over
   :attr:`PixelDistilConfig.rounds` rounds (:func:`labels_per_round`); ``imagined_frames``
   counts every imagined step (the planner's and the student's rollouts');
3. runs :func:`torchwm_rl.pixel_reality.pixel_reality_check` on the real ``CartPole-v1`` (20
   episodes by default): each real step renders the frame, which goes through the model's
   posterior filter, and the student acts on the resulting latent;
4. writes ``policy.safetensors`` (the student as ``features -> logits``;
   :func:`torchwm_rl.app.demo.load_policy` reads it), ``results.json`` and ``results.png`` (real
   frames beside the model's decoded open-loop frames over one real episode, the learning curve,
   the open-loop pixel error by horizon and the probe's R^2).

The result record has the other demos' keys (``real_mean_return``, ``imagined_mean_return``,
``wall_seconds``, ...) plus the pixel error by horizon, the probe and how the real episodes
ended. Deterministic given the seed and the thread count (seeded torch, numpy, planner and real
resets).
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

__all__ = ["PixelDistilConfig", "run", "real_episode_ends", "make_planner", "make_rollout_env",
           "labels_per_round"]

STATE_NAMES = ("x", "x_dot", "theta", "theta_dot")
HORIZONS = (1, 5, 15, 50, 100)
X_LIMIT = 2.4  # CartPole-v1 terminates when |x| > 2.4 (and when |theta| > 12 degrees)


@dataclass
class PixelDistilConfig:
    """The pixel demo's own settings (what reached the README's returns in the time budget)."""

    bank_episodes: int = 20  # random-action real episodes: their posterior latents are the start bank
    bank_seed: int = 50_000  # their real reset seeds: bank_seed + i
    rounds: int = 10  # round 0 (bank states) + 9 DAgger rounds (the student's imagined states)
    candidates: int = 128  # the planner: action sequences per latent and CEM iteration...
    horizon: int = 40  # ...of this many imagined steps...
    iters: int = 2  # ...CEM iterations...
    elite: int = 8  # ...the best 1/elite refit the action probabilities
    chunk: int = 64  # latents per planning call (chunk * candidates imagined rows)
    length: int = 200  # the student's imagined rollouts: at most this many steps...
    rollout_threshold: float = 0.5  # ...each row ending at its first continue_prob below this
    fit_steps: int = 1500  # the student's minibatches (256) per fit...
    fit_noise: float = 0.3  # ...each with this std of noise on its standardised features
    final_members: int = 5  # the policy: the mean logits of this many fits on the last round's labels
    # the reality check's imagined episodes: the prior's mean, terminated drawn from the continue head
    sample: bool = False
    continue_threshold: Optional[float] = None


def labels_per_round(total: int, rounds: int) -> list[int]:
    """``total`` labels split as evenly as whole numbers allow over ``rounds`` rounds (fewer when
    ``total`` is small: round 0 gets at least 2, the student's first fit needs them), the larger
    shares first: ``labels_per_round(2560, 10)`` is ten 256s, ``labels_per_round(4, 10)`` is
    ``[2, 1, 1]``."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 2:
        raise ValueError(f"torchwm-rl demo cartpole-pixels: --frames is the number of planner-labelled latents "
                         f"and must be an int >= 2, got {total!r}")
    k = min(rounds, total - 1)
    base, extra = divmod(total, k)
    return [base + (i < extra) for i in range(k)]


def make_planner(model, candidates: int = 128, horizon: int = 40, iters: int = 2, elite: int = 8, seed: int = 0,
                 warm_rows: int = 0):
    """The :class:`torchwm_rl.planning.DiscreteCEMPlanner` over ``cartpole-pixels`` imagination:
    the prior's mean (``sample=False``) and no drawn ends (``NO_DRAWN_ENDS``: the score weighs
    each step by ``continue_prob``)."""
    from .. import zoo
    from ..planning import NO_DRAWN_ENDS, DiscreteCEMPlanner

    def make_env(rows: int):
        return zoo.make_env("cartpole-pixels", model=model, batch_size=rows, seed=seed, sample=False,
                            continue_threshold=NO_DRAWN_ENDS)

    return DiscreteCEMPlanner(make_env, candidates, horizon, iters, elite, seed, warm_rows)


def make_rollout_env(model, starts: int = 64, seed: int = 0, continue_threshold: float = 0.5):
    """The imagined env the student plays in for new states (``distil``'s ``env``): batch
    ``[starts]``, the prior's mean (``sample=False``, as the planner imagines) and an end at the
    first ``continue_prob`` below ``continue_threshold`` (a clear call, not a draw)."""
    from .. import zoo

    return zoo.make_env("cartpole-pixels", model=model, batch_size=starts, seed=seed, sample=False,
                        continue_threshold=continue_threshold)


def real_episode_ends(report) -> dict[str, int]:
    """How the real episodes ended: ``"x"`` (the cart left the track), ``"theta"`` (the pole
    fell) or ``"time"`` (not terminated: the time limit or the check's horizon)."""
    ends = {"x": 0, "theta": 0, "time": 0}
    for terminated, state in zip(report.real_terminated, report.real_final_states):
        ends["x" if terminated and abs(state[0]) > X_LIMIT else "theta" if terminated else "time"] += 1
    return ends


def run(cfg: DemoConfig, log: Callable[[str], None], t_start: float) -> dict[str, Any]:
    """The pixel CartPole demo with ``cfg`` resolved (see :func:`torchwm_rl.app.demo.run_demo`);
    returns the result record."""
    import gymnasium as gym

    from .. import zoo
    from ..distillation import distil
    from ..pixel_reality import filter_episode, pixel_reality_check
    from ..serialization import save_weights
    from ..zoo.cartpole_pixels import render_frames_headless

    pcfg = PixelDistilConfig()
    labels = labels_per_round(cfg.frames, pcfg.rounds)
    model = zoo.load("cartpole-pixels")
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    starts = cfg.num_envs
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    render_frames_headless()
    real_env = gym.make("CartPole-v1", render_mode="rgb_array")

    t_train = time.perf_counter()
    log(f"[torchwm-rl] cartpole-pixels: {pcfg.bank_episodes} random-action real episodes from pixels -> the bank of "
        "posterior latents (start states)")
    with torch.no_grad():
        bank_eps = [filter_episode(model, lambda f: int(rng.integers(2)), real_env, seed=pcfg.bank_seed + i)
                    for i in range(pcfg.bank_episodes)]
    bank = torch.cat([e.latents for e in bank_eps])
    real_frames = int(bank.batch_size[0])
    log(f"[torchwm-rl] training only in the model: the student imitates a CEM planner that imagines "
        f"{pcfg.candidates} x {pcfg.horizon}-step futures per latent ({sum(labels):,} labels in {len(labels)} "
        f"rounds; new latents from the student's own imagined rollouts, {starts} per round; seed {cfg.seed})")
    planner = make_planner(model, pcfg.candidates, pcfg.horizon, pcfg.iters, pcfg.elite, cfg.seed)
    imagination = make_rollout_env(model, starts, cfg.seed, pcfg.rollout_threshold)
    per_label = pcfg.candidates * pcfg.horizon * pcfg.iters  # imagined steps the planner takes per label
    history: list[dict] = []

    def on_round(rec: dict, student) -> None:
        done = history[-1]["frames"] if history else labels[0] * per_label  # round 0's labels
        history.append(rec | {"frames": done + rec["new_labels"] * per_label + rec.get("imagined_steps", 0)})
        alive = (f"; greedy in imagination: {rec['imagined_steps_alive']:.1f} of {pcfg.length} steps alive"
                 if "imagined_steps_alive" in rec else "")
        if cfg.progress:
            log(f"  round {rec['round']}: {rec['labels']:,} labels, student agrees with the planner on "
                f"{100 * rec['train_accuracy']:.1f}% of them{alive}  ({rec['seconds']:.0f} s)")

    student, _ = distil(planner, model.features, bank, labels, rng, env=imagination, starts=starts,
                        length=pcfg.length, fit_steps=pcfg.fit_steps, fit_noise=pcfg.fit_noise,
                        final_members=pcfg.final_members, chunk=pcfg.chunk, on_round=on_round)
    train_seconds = time.perf_counter() - t_train

    log(f"[torchwm-rl] reality check from pixels: {cfg.episodes} episodes on the real CartPole-v1 "
        "(render -> posterior latent -> policy, each step)")
    options = {"sample": pcfg.sample}
    if pcfg.continue_threshold is not None:
        options["continue_threshold"] = pcfg.continue_threshold
    check_env = zoo.make_env("cartpole-pixels", model=model, batch_size=min(cfg.episodes, 64), seed=cfg.seed + 20_000,
                             **options)
    report = pixel_reality_check(student.actions, check_env, real_env, episodes=cfg.episodes, seed=cfg.seed,
                                 horizons=HORIZONS, state_names=STATE_NAMES)
    real_env.close()
    ends = real_episode_ends(report)
    log(report.summary())
    log(f"[torchwm-rl] real episodes ended: pole fell {ends['theta']}, cart left the track {ends['x']}, "
        f"time limit {ends['time']}")

    net = student.net
    save_weights(net, out / "policy.safetensors",
                 {"task": cfg.task, "kind": "torchwm_rl.demo.mlp_policy/1", "hidden": net[0].out_features,
                  "obs_dim": net[0].in_features, "n_actions": net[-1].out_features, "activation": "ELU",
                  "architecture": "Linear-ELU-Linear-ELU-Linear (latent features -> logits; the student distilled "
                                  "from the planner: the mean logits of final_members fits, merged with a "
                                  "block-diagonal middle layer); the features are the posterior latent's "
                                  "cat(deter, stoch)", "final_members": pcfg.final_members})
    plot_msg = _plot(out / "results.png", history, report, pcfg.length) if cfg.save_plot else "plot disabled"
    if plot_msg:
        log(f"[torchwm-rl] {plot_msg}")
    return finish_run(
        out, cfg, report, history, train_seconds, t_start, plot_msg, log,
        real_env_id="CartPole-v1 from pixels", imagined_label="greedy, model",
        extra_result={"task": "cartpole-pixels",
                      "algorithm": "a CEM planner in imagination distilled into an MLP on the latent features "
                                   "(DAgger with imagined states)",
                      "labels": history[-1]["labels"], "real_frames_for_training": real_frames,
                      "pixel_error_by_horizon": {str(h): report.pixel_error_at(h) for h in HORIZONS},
                      "probe_r2": dict(zip(report.probe_names, report.probe_r2)),
                      "probe_rmse": dict(zip(report.probe_names, report.probe_rmse)),
                      "real_ends": ends},
        extra_json={"distil": asdict(pcfg) | {"labels_per_round": labels, "starts": starts}},
    )


def _frame_strip(frames: np.ndarray, picks: list[int]) -> np.ndarray:
    """Frames ``[T, 1, H, W]`` uint8 at ``picks`` side by side (a 3-pixel blank gap), ``[H, n * (W + 3)]``."""
    tiles = [np.pad(frames[i, 0], ((0, 0), (0, 3))) for i in picks]
    return np.concatenate(tiles, 1)


def _plot(path: Path, history: list, report, length: int) -> Optional[str]:
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
    rounds = [h for h in history if "imagined_steps_alive" in h]
    ax.plot([h["labels"] for h in rounds], [h["imagined_steps_alive"] for h in rounds], "o-", color="C0", ms=4,
            label=f"student, greedy in imagination from bank starts (mean steps alive, at most {length})")
    last = history[-1]["labels"] if history else 0
    ax.errorbar([last], [report.real_mean_return], yerr=[report.real_std_return], fmt="*", ms=14, color="k",
                capsize=4, label=f"real CartPole-v1 from pixels, after training ({report.episodes} episodes, "
                                 f"{report.real_mean_return:.0f})")
    ax.axhline(report.horizon, color="0.6", ls=":", lw=1, label=f"time limit ({report.horizon})")
    ax.set_xlabel("planner-labelled latents (training)")
    ax.set_ylabel("steps alive / episode return")
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
