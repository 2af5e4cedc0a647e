"""The CartPole demo (``torchwm-rl demo`` / ``demo cartpole``): PPO only in the bundled world
model, then a reality check.

:func:`run` (called by :func:`torchwm_rl.app.demo.run_demo`):

1. loads the bundled world model (``torchwm_rl.zoo``) and builds a batched ``WorldModelEnv``;
2. trains a PPO agent with the stock TorchRL stack (``Collector`` + ``GAE`` + ``ClipPPOLoss``) in
   imagination only; every few batches (once training episodes get long) the greedy policy is
   scored on a separate imagined batch,
   the best-scoring weights are kept, and training stops early once every greedy imagined
   evaluation episode survives to the time limit twice in a row (model-only model selection: the real env is
   never consulted during training);
3. runs :func:`torchwm_rl.reality_check` against the real Gymnasium env (20 episodes by default);
4. writes ``policy.safetensors``, ``results.json`` and ``results.png`` (learning curve; imagined vs
   real trajectory from the same start state; open-loop model error) into the output folder.

The result dict has at least ``real_mean_return``, ``imagined_mean_return`` and ``wall_seconds``.
Everything is deterministic given ``seed`` (one torch thread; seeded env, collector and PPO).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..reality import plot_prediction_error  # the panel lives in the library
from .runs import DemoConfig, NO_MATPLOTLIB, default_out_dir, finish_run, pyplot, resolved, whole_batches

__all__ = ["run", "train_in_imagination", "build_actor_critic", "stop_reason", "SOLVED_STREAK"]


#: training stops early after this many greedy imagined evaluations in a row in which every
#: episode survived to the time limit
SOLVED_STREAK = 2


def _mlp(n_in: int, n_out: int, hidden: int, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), activation(), nn.Linear(hidden, hidden), activation(), nn.Linear(hidden, n_out)
    )


def build_actor_critic(obs_dim: int, n_actions: int, action_spec, hidden: int = 64):
    """A categorical PPO actor (``observation -> logits -> action``) and a value network.

    Returns ``(actor, critic, policy_net)``; ``policy_net`` is the bare ``nn.Sequential`` mapping
    observations to logits (what gets saved).
    """
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ProbabilisticActor, ValueOperator

    policy_net = _mlp(obs_dim, n_actions, hidden)
    with torch.no_grad():  # near-uniform initial policy
        policy_net[-1].weight.mul_(0.01)
        policy_net[-1].bias.zero_()
    actor = ProbabilisticActor(
        TensorDictModule(policy_net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        spec=action_spec,
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = ValueOperator(_mlp(obs_dim, 1, hidden), in_keys=["observation"])
    return actor, critic, policy_net


@torch.no_grad()
def imagined_eval(env, actor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy policy, one episode per env of ``env`` (batched), at most ``steps`` long.
    Returns ``(returns, lengths)`` of each env's first episode."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from ..reality import returns_until_done

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        roll = env.rollout(steps, actor, break_when_any_done=False)
    n = env.batch_size[0]
    done = roll["next", "done"].reshape(n, -1)
    return returns_until_done(roll["next", "reward"].reshape(n, -1).float(), done)


def train_in_imagination(
    env,
    eval_env,
    cfg: DemoConfig,
    on_batch: Optional[Callable[[dict], None]] = None,
):
    """PPO in ``env`` (a batched TorchRL env, e.g. ``WorldModelEnv``); model selection on
    ``eval_env``. Returns ``(actor, policy_net, history)`` with the best weights loaded.

    ``history`` is a list of dicts ``{"frames", "imagined_return", "running_return",
    "eval_return", "seconds"}``, one per batch; ``imagined_return`` is the mean return of imagined
    training episodes that ended in the batch (``nan`` if none did; short episodes end more
    often, so it under-states a good policy); ``running_return`` the mean return so far of the
    training episodes still running at the batch's end (a lower bound of their return);
    ``eval_return`` the greedy imagined evaluation (``nan`` when none ran after this batch);
    ``solved_streak`` how many evaluations in a row so far had every episode survive to the
    time limit (training stops early at :data:`SOLVED_STREAK`).
    """
    from torchrl.collectors import Collector
    from torchrl.envs import RewardSum, TransformedEnv
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    from ..reality import env_time_limit

    cfg = resolved(cfg)
    torch.manual_seed(cfg.seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    n_actions = env.action_spec.space.n
    actor, critic, policy_net = build_actor_critic(obs_dim, n_actions, env.action_spec, cfg.hidden)
    train_env = TransformedEnv(env, RewardSum())
    collector = Collector(
        train_env,
        actor,
        frames_per_batch=cfg.frames_per_batch,
        # a whole number of batches: TorchRL warns (and collects extra frames) otherwise
        total_frames=max(1, math.ceil(cfg.frames / cfg.frames_per_batch)) * cfg.frames_per_batch,
        auto_register_policy_transforms=False,
    )
    advantage = GAE(gamma=cfg.gamma, lmbda=cfg.lmbda, value_network=critic, average_gae=True)
    loss_fn = ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=cfg.clip_epsilon,
        entropy_coeff=cfg.entropy_coeff,
        critic_coeff=0.5,
        loss_critic_type="l2",
    )
    optim = torch.optim.Adam(loss_fn.parameters(), lr=cfg.lr)
    n_batches = max(1, math.ceil(cfg.frames / cfg.frames_per_batch))
    max_steps = env_time_limit(eval_env) or 500
    history: list[dict] = []
    best = (-math.inf, None)
    solved_streak = 0
    t0 = time.perf_counter()
    frames = 0
    g = torch.Generator().manual_seed(cfg.seed)
    try:
        for i, batch in enumerate(collector):
            frames += batch.numel()
            for group in optim.param_groups:  # linear learning-rate decay
                group["lr"] = cfg.lr * max(0.0, 1.0 - i / n_batches)
            imagined, running_return = _batch_returns(batch)
            _ppo_update(batch, advantage, loss_fn, optim, cfg, g)
            eval_return = math.nan
            # greedy evaluation only once training episodes look promising (long, or none ended)
            promising = math.isnan(imagined) or imagined >= cfg.eval_threshold * max_steps
            if ((i + 1) % cfg.eval_every == 0 and promising) or i + 1 == n_batches:
                scores, lengths = imagined_eval(eval_env, actor, max_steps)
                eval_return = float(scores.mean())
                if eval_return >= best[0]:
                    best = (eval_return, {k: v.clone() for k, v in policy_net.state_dict().items()})
                # "solved": every greedy imagined episode survives to the time limit
                solved_streak = solved_streak + 1 if int(lengths.min()) >= max_steps else 0
            record = {
                "frames": frames,
                "imagined_return": imagined,
                "running_return": running_return,
                "eval_return": eval_return,
                "solved_streak": solved_streak,
                "seconds": time.perf_counter() - t0,
            }
            history.append(record)
            if on_batch is not None:
                on_batch(record)
            if solved_streak >= SOLVED_STREAK:
                break
    finally:
        collector.shutdown()
    if best[1] is not None:
        policy_net.load_state_dict(best[1])
    return actor, policy_net, history


def stop_reason(history: list[dict], budget: int, eval_envs: int, time_limit: Optional[int]) -> Optional[str]:
    """Why :func:`train_in_imagination` stopped before its frame ``budget``, or None if it did not."""
    if not history or history[-1].get("solved_streak", 0) < SOLVED_STREAK:
        return None
    return (f"stopped early at {history[-1]['frames']:,} of up to {budget:,} frames: in {SOLVED_STREAK} greedy "
            f"evaluations in a row, every one of the {eval_envs} imagined episodes survived to the time limit "
            f"({time_limit} steps)")


def _batch_returns(batch) -> tuple[float, float]:
    """A collected batch's mean return of the training episodes that ended in it and mean
    return so far of those still running at its end (a lower bound); ``nan`` where none."""
    done = batch["next", "done"].squeeze(-1)
    episode_reward = batch["next", "episode_reward"].squeeze(-1)
    ended = episode_reward[done]
    imagined = float(ended.mean()) if ended.numel() else math.nan
    running = episode_reward[..., -1][~done[..., -1]]
    return imagined, float(running.mean()) if running.numel() else math.nan


def _ppo_update(batch, advantage, loss_fn, optim, cfg: DemoConfig, generator: torch.Generator) -> None:
    """``cfg.epochs`` epochs of PPO on one batch: GAE, then shuffled minibatches (clipped grads)."""
    for _ in range(cfg.epochs):
        with torch.no_grad():
            advantage(batch)
        flat = batch.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=generator)
        for start in range(0, flat.numel(), cfg.minibatch):
            losses = loss_fn(flat[perm[start:start + cfg.minibatch]])
            loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(loss_fn.parameters(), 0.5)
            optim.step()


def _plot(path: Path, history: list[dict], report, task: str, eval_envs: int = 0,
          real_id: str = "") -> Optional[str]:
    """Write the results PNG; returns a message instead when matplotlib is missing.

    Only what was measured is drawn, where it was measured: one marker per batch for training
    episodes, one per greedy evaluation (not joined: nothing was measured in between), the
    real-env result once, at the frame count where it was measured, and the open-loop error
    only over the steps where episodes still contributed, with the count shown and the cut
    labelled."""
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.2))
    below = dict(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax = axes[0]
    fr = [h["frames"] for h in history]
    ax.plot(fr, [h["imagined_return"] for h in history], ".", ms=4, alpha=0.6, color="C0",
            label="training episodes that ended in the batch (mean return)")
    if any("running_return" in h for h in history):
        ax.plot(fr, [h.get("running_return", math.nan) for h in history], "1", ms=5, alpha=0.5, color="C2",
                label="training episodes still running at batch end (return so far, a lower bound)")
    ev = [(h["frames"], h["eval_return"]) for h in history if not math.isnan(h["eval_return"])]
    if ev:
        what = f"{eval_envs} episodes" if eval_envs else "one batch"
        ax.plot(*zip(*ev), "o", color="C1", ms=6, label=f"greedy policy in the model ({what}; only at these points)")
    limit = report.horizon
    ax.axhline(limit, color="0.6", ls=":", lw=1, label=f"time limit ({limit} steps = max return)")
    final = fr[-1] if fr else 0
    ax.errorbar([final], [report.real_mean_return], yerr=[report.real_std_return], fmt="*", ms=14, color="k",
                capsize=4, label=f"real {real_id or task}: measured once, after training "
                                 f"({report.episodes} episodes, {report.real_mean_return:.0f})")
    ax.set_xlabel("imagined frames (training)")
    ax.set_ylabel("episode return")
    ax.set_ylim(bottom=0, top=limit * 1.08)
    ax.set_title("Learning curve (trained only in the model)")
    ax.legend(**below)
    ax = axes[1]
    imag, real = report.imagined_trajectory, report.real_trajectory
    names = ["x (m)", "x_dot", "theta (rad)", "theta_dot"] if task == "cartpole" else None
    dims = [0, 2] if task == "cartpole" else range(min(4, len(real[0]) if real else 0))
    for d in dims:
        label = names[d] if names else f"obs[{d}]"
        line, = ax.plot([s[d] for s in real], label=f"{label}, real")
        ax.plot([s[d] for s in imag], "--", color=line.get_color(), label=f"{label}, imagined")
    ax.set_xlabel("step")
    ax.set_title("Same start state, same policy: imagined vs real")
    ax.legend(ncols=2, **below)
    plot_prediction_error(axes[2], report, below)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def run(cfg: DemoConfig, log: Callable[[str], None], t_start: float) -> dict[str, Any]:
    """The CartPole demo (PPO; the demo for discrete-action tasks) with ``cfg`` resolved (see
    :func:`torchwm_rl.app.demo.run_demo`); returns the result record."""
    import gymnasium as gym

    from .. import zoo
    from ..reality import env_time_limit, reality_check
    from ..serialization import save_weights
    from .progress import Progress, describe_returns

    model = zoo.load(cfg.task)  # an unknown task fails here, before any folder is made
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)

    env = zoo.make_env(cfg.task, model=model, batch_size=cfg.num_envs, seed=cfg.seed)
    eval_env = zoo.make_env(cfg.task, model=model, batch_size=cfg.eval_envs, seed=cfg.seed + 10_000)
    budget = whole_batches(cfg.frames, cfg.frames_per_batch)  # what the collector collects at most
    log(f"[torchwm-rl] {cfg.task}: training PPO in the bundled world model only "
        f"({cfg.num_envs} imagined envs, up to {budget:,} frames, seed {cfg.seed})")

    progress = Progress(budget, log, enabled=cfg.progress)
    last_eval = math.nan

    def status(rec: dict) -> str:
        nonlocal last_eval
        if not math.isnan(rec["eval_return"]):
            last_eval = rec["eval_return"]
        greedy = (f"greedy policy in the model: {last_eval:.1f} ({cfg.eval_envs} episodes)" if not math.isnan(last_eval)
                  else "greedy policy: not evaluated yet")
        return f"{describe_returns(rec['imagined_return'], rec['running_return'])} | {greedy}"

    t_train = time.perf_counter()
    actor, policy_net, history = train_in_imagination(
        env, eval_env, cfg, lambda rec: progress.update(rec["frames"], status(rec)))
    if history:
        progress.finish(history[-1]["frames"], status(history[-1]))
        reason = stop_reason(history, budget, cfg.eval_envs, env_time_limit(eval_env))
        if reason:
            log(f"[torchwm-rl] {reason}")
    train_seconds = time.perf_counter() - t_train

    log(f"[torchwm-rl] reality check: {cfg.episodes} episodes on the real {zoo.real_env_id(cfg.task)}")
    real_env = gym.make(zoo.real_env_id(cfg.task))
    check_env = zoo.make_env(cfg.task, model=model, batch_size=min(cfg.episodes, 64), seed=cfg.seed + 20_000)
    report = reality_check(actor, check_env, real_env, episodes=cfg.episodes, seed=cfg.seed)
    real_env.close()

    save_weights(policy_net, out / "policy.safetensors",
                 {"task": cfg.task, "kind": "torchwm_rl.demo.ppo_policy/1", "hidden": cfg.hidden,
                  "obs_dim": policy_net[0].in_features, "n_actions": policy_net[-1].out_features,
                  "architecture": "Linear-Tanh-Linear-Tanh-Linear (observation -> logits)"})
    plot_msg = (_plot(out / "results.png", history, report, cfg.task, cfg.eval_envs, zoo.real_env_id(cfg.task))
                if cfg.save_plot else "plot disabled")
    if plot_msg:
        log(f"[torchwm-rl] {plot_msg}")
    return finish_run(out, cfg, report, history, train_seconds, t_start, plot_msg, log,
                      real_env_id=zoo.real_env_id(cfg.task), imagined_label="greedy, model")
