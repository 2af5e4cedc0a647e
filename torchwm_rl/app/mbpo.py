"""MBPO online (``torchwm-rl mbpo TASK``): a model refit while SAC learns inside it.

The loop (Janner et al., 2019, in mbrl-lib's shape), one real step at a time:

1. act in the real env with the current policy (random for the first ``warmup_steps``) and put
   the transition in the real ``ReplayBuffer``;
2. at the warm-up's end, every ``early_refit_every`` (50) real steps up to ``early_refit_until``
   (1,000), then every ``refit_every`` (200), refit the ensemble
   (:class:`~torchwm_rl.fitting.EnsembleTrainer`) on everything real so far. The model is refit IN PLACE: the imagined env built once at the
   start steps the new weights at its next step;
3. branch ``rollouts_per_step`` short imagined rollouts from real states: the imagined env's
   ``start_states`` is the real replay buffer itself (:mod:`torchwm_rl.starts`), so every
   rollout's reset draws fresh starts from what is real so far. The horizon follows MBPO's
   schedule (:func:`~torchwm_rl.fitting.rollout_length`); the imagined frames go into the
   model ``ReplayBuffer`` (it keeps the most recent ``model_buffer_steps`` real steps' worth);
4. ``updates_per_step`` SAC updates (TorchRL ``SACLoss``) on batches that are ``real_ratio``
   real and the rest imagined.

From the end of the warm-up, every ``eval_every`` real steps the deterministic policy plays
``eval_episodes`` (20) real episodes (not counted as real steps: they train nothing);
``steps_to_target`` is the first of these evaluations at or above the target, so its resolution
is ``eval_every``. Once the target is reached, the curve goes on every ``curve_every`` steps (the
same 20 episodes). ``--model-free`` runs the same SAC, networks, updates per step and
evaluations on the real buffer alone: the baseline.

Uncertainty (:mod:`torchwm_rl.ensemble`) switches on with ``penalty`` (MOPO), ``threshold``
(MOReL) and ``propagation``. Deterministic given the seed on a given machine and ``threads``
(torch threads, 1 by default).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .runs import default_out_dir, json_safe, pyplot

TASKS = ("Pendulum-v1", "InvertedPendulum-v5")


@dataclass
class MBPOConfig:
    task: str = "Pendulum-v1"
    seed: int = 0
    real_steps: int = 3000
    warmup_steps: int = 200
    refit_every: int = 200
    # a shorter refit cadence up to early_refit_until real steps (None: none): 50 from 2026-12-07 with 100 rollouts
    # per step, it reached -200 in a median of 600 real steps over seeds 0-4 (800 without; RESULTS.md)
    early_refit_every: Optional[int] = 50
    early_refit_until: int = 1000
    eval_every: int = 50  # evaluation cadence until the target is reached: steps_to_target's resolution
    curve_every: int = 200  # evaluation cadence after it
    eval_episodes: int = 20  # the 20-episode evaluation (5 before 2026-12-07)
    final_eval_episodes: int = 20
    target: Optional[float] = None  # the return steps_to_target is about (task default)
    rollouts_per_step: int = 100  # 400 before 2026-12-07 (see early_refit_every)
    horizon: tuple = (200, 1000, 1, 10)  # rollout_length's (start, end, min, max), start and end in real steps
    model_buffer_steps: int = 250  # real steps' worth of imagined frames the model buffer keeps
    members: int = 7
    elites: int = 5
    model_hidden: int = 200
    model_layers: int = 3
    max_fit_epochs: int = 50
    updates_per_step: int = 10
    real_ratio: float = 0.5  # 0.05 before 2026-12-07: 0.5 reached -200 sooner on 4 of 5 seeds (RESULTS.md)
    batch_size: int = 256
    hidden: int = 128
    lr: float = 3e-3  # the Pendulum demo's SAC settings (app/sac.py); 3e-4/0.99/0.005 learned nothing by 1,200 steps
    gamma: float = 0.98
    tau: float = 0.01
    model_free: bool = False
    propagation: str = "random"
    penalty: float = 0.0
    threshold: Optional[float] = None
    # the reward of a halted imagined step (with threshold); None: the task's worst step reward / (1 - gamma), MOReL's
    # absorbing HALT state. 0 (the env's default) would be Pendulum's BEST reward: SAC would seek uncertain states
    halt_reward: Optional[float] = None
    progress: bool = True
    # torch threads for the run (restored after it); results are deterministic for a given seed and thread count
    threads: int = 1
    extra: dict = field(default_factory=dict)

    def target_return(self) -> float:
        return self.target if self.target is not None else {"Pendulum-v1": -200.0, "InvertedPendulum-v5": 900.0}.get(
            self.task, 0.0)

    def halt_reward_value(self) -> float:
        """The reward of a halted imagined step: ``halt_reward``, or by default MOReL's absorbing
        HALT state on this task, its worst per-step reward for ever after (``worst / (1 - gamma)``,
        as ``benchmarks/uncertainty.py`` does offline): no lower than anything a real episode
        can earn from there, so halting is never something the policy seeks."""
        if self.halt_reward is not None:
            return float(self.halt_reward)
        return WORST_STEP_REWARD[self.task] / (1 - self.gamma)


#: each task's lowest per-step reward: Pendulum's cost at angle pi, speed 8, torque 2; InvertedPendulum-v5's
#: reward is 1 while alive and 0 on the terminating step
WORST_STEP_REWARD = {"Pendulum-v1": -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2), "InvertedPendulum-v5": 0.0}


def _float32_box(space):
    """``space`` as a float32 Box (the same bounds): the imagined env's observation space. The
    real buffer, the ensemble and the SAC networks are float32; InvertedPendulum-v5's space is
    float64, and an imagined env built on it would hand the float32 actor float64 observations."""
    import gymnasium as gym

    return gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)


def _terminal_fn(task: str) -> Optional[Callable]:
    """The known termination of the task's real env, as a hook of the next observation."""
    if task == "InvertedPendulum-v5":  # gymnasium: terminated when |angle| > 0.2 or not finite
        return lambda model, next_state: (next_state[..., 1].abs() > 0.2) | ~torch.isfinite(next_state).all(-1)
    return None


class _SAC:
    """TorchRL's SAC pieces for one run: actor, twin Q, learned temperature, soft targets."""

    def __init__(self, obs_dim: int, action_spec, cfg: MBPOConfig):
        from .sac import build_sac_actor, build_sac_loss

        act_dim = action_spec.shape[-1]
        self.actor, self.net = build_sac_actor(obs_dim, act_dim, action_spec, cfg.hidden)
        self.loss, self.target = build_sac_loss(self.actor, obs_dim, act_dim, action_spec, cfg.hidden, cfg.gamma,
                                                cfg.tau)
        # foreach: one fused Adam over all parameters (the same numbers as the per-tensor loop)
        self.optim = torch.optim.Adam(self.loss.parameters(), lr=cfg.lr, foreach=True)
        self._soft_pairs = _soft_update_pairs(self.loss)

    def update(self, batch) -> None:
        losses = self.loss(batch)
        loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.soft_update()

    def soft_update(self) -> None:
        """``self.target.step()`` (TorchRL's ``SoftUpdate``), fused: SoftUpdate.step walks its
        TensorDicts and lerps one parameter at a time (a large share of an update at these network
        sizes); one foreach lerp over the same (target, source) pairs with SoftUpdate's own weight
        gives the same numbers."""
        targets, sources = self._soft_pairs
        torch._foreach_lerp_(targets, sources, 1 - self.target.eps)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        from tensordict import TensorDict
        from torchrl.envs.utils import ExplorationType, set_exploration_type

        td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [])
        mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        with set_exploration_type(mode):
            return self.actor(td)["action"].numpy()


def _soft_update_pairs(loss) -> tuple[list, list]:
    """``(targets, sources)``: the data tensors of ``SACLoss``'s target Q parameters and of the Q
    parameters they track, in matching order (what ``SoftUpdate(loss)`` updates: the actor has
    no target network in this SAC)."""
    sources, targets = loss.qvalue_network_params, loss.target_qvalue_network_params
    keys = list(sources.keys(True, True))
    if sorted(map(str, keys)) != sorted(map(str, targets.keys(True, True))):
        raise RuntimeError("SACLoss: the target Q parameters do not match the Q parameters key for key")
    return [targets.get(k).data for k in keys], [sources.get(k).data for k in keys]


def evaluate(sac: _SAC, task: str, episodes: int, seed: int) -> float:
    """Mean real return of the deterministic policy over ``episodes`` episodes, episode ``i``
    from ``reset(seed=seed + i)``. The episodes run side by side in one Gymnasium vector env
    (one policy call per step for all of them); an episode's return stops counting when it
    ends (the vector env's autoreset step after it is not counted)."""
    import gymnasium as gym

    envs = gym.make_vec(task, num_envs=episodes, vectorization_mode="sync")
    obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
    totals = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        obs, reward, terminated, truncated, _ = envs.step(sac.act(obs, deterministic=True))
        totals += np.where(running, reward, 0.0)
        running &= ~(terminated | truncated)
    envs.close()
    return float(np.mean(totals))


def _transition(obs, action, reward, next_obs, terminated):
    from tensordict import TensorDict

    f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    term = torch.tensor([bool(terminated)])
    return TensorDict({"observation": f(obs), "action": f(action),
                       "next": {"observation": f(next_obs), "reward": f([reward]), "terminated": term, "done": term}}, [])


SAC_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
            ("next", "done"))


class _PhaseClock:
    """CPU seconds (``time.process_time``) spent in each phase of the loop: ``start(name)`` ends
    the phase running and starts ``name``; ``totals()`` rounds them to 0.1 s."""

    def __init__(self):
        self.seconds: dict = {}
        self.phase, self.since = "other", time.process_time()

    def start(self, name: str) -> None:
        now = time.process_time()
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.since
        self.phase, self.since = name, now

    def totals(self) -> dict:
        return {k: round(v, 1) for k, v in sorted(self.seconds.items())}


def _refit_due(step: int, cfg: MBPOConfig) -> bool:
    """Whether the model is refit after real step ``step`` (from the warm-up's end on): at the end
    of the warm-up, every ``refit_every`` steps, and every ``early_refit_every`` steps up to
    ``early_refit_until``."""
    early = cfg.early_refit_every is not None and step <= cfg.early_refit_until and step % cfg.early_refit_every == 0
    return step == cfg.warmup_steps or step % cfg.refit_every == 0 or early


def _update_batches(real, imagined, updates: int) -> list:
    """One real step's ``updates`` SAC batches: each buffer sampled once (its ``batch_size`` is
    ``updates`` batches' rows), row block ``k`` of each (real rows first) is batch ``k``."""
    rows = real.sample().reshape(updates, -1)
    if imagined is not None:
        rows = torch.cat([rows, imagined.sample().reshape(updates, -1)], 1)
    return rows.unbind(0)


def run(cfg: MBPOConfig, log: Callable[[str], None] = print) -> dict:
    """One MBPO (or ``model_free``) run with ``cfg.threads`` torch threads (the caller's count is
    restored afterwards, also when the run raises); returns the result dict (also the JSON line)."""
    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, numbers.Integral) or cfg.threads < 1:
        raise ValueError(f"threads: expected an int of at least 1, got {cfg.threads!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: MBPOConfig, log: Callable[[str], None]) -> dict:
    import gymnasium as gym
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers.samplers import RandomSampler

    from .. import WorldModelEnv
    from ..fitting import EnsembleDynamics, EnsembleTrainer, rollout_length
    from ..spaces import space_to_spec

    if cfg.task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {cfg.task!r}")
    t0, c0 = time.perf_counter(), time.process_time()
    clock = _PhaseClock()
    torch.manual_seed(cfg.seed)
    real_env = gym.make(cfg.task)
    obs_space, act_space = real_env.observation_space, real_env.action_space
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    sac = _SAC(obs_dim, space_to_spec(act_space, ()), cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    n_real = cfg.batch_size if cfg.model_free else max(1, round(cfg.batch_size * cfg.real_ratio))
    n_model = cfg.batch_size - n_real
    # each buffer draws the rows of all of a real step's updates at once (one sample call, not one
    # per update: the buffer's per-call overhead is ~0.15 ms); update k takes rows k*n:(k+1)*n
    updates = cfg.updates_per_step
    real = ReplayBuffer(storage=LazyTensorStorage(cfg.real_steps), sampler=RandomSampler(),
                        batch_size=n_real * updates, generator=g)
    model_buffer = model_env = trainer = None
    if not cfg.model_free:
        model = EnsembleDynamics(obs_dim, act_dim, members=cfg.members, elites=cfg.elites, hidden=cfg.model_hidden,
                                 layers=cfg.model_layers)
        trainer = EnsembleTrainer(model, max_epochs=cfg.max_fit_epochs, seed=cfg.seed)
        model_buffer = ReplayBuffer(
            storage=LazyTensorStorage(cfg.rollouts_per_step * cfg.horizon[3] * cfg.model_buffer_steps),
            sampler=RandomSampler(), batch_size=n_model * updates, generator=g)
    rng = np.random.default_rng(cfg.seed)
    act_space.seed(cfg.seed)
    obs, _ = real_env.reset(seed=cfg.seed)
    curve, steps_to_target, fits, horizon = [], None, [], None
    halts = [0, 0]  # halted imagined steps, imagined steps (with threshold)
    target = cfg.target_return()
    for step in range(1, cfg.real_steps + 1):
        # 1. one real step
        action = act_space.sample() if step <= cfg.warmup_steps else sac.act(obs, deterministic=False)
        next_obs, reward, terminated, truncated, _ = real_env.step(action)
        real.add(_transition(obs, action, reward, next_obs, terminated))
        obs = real_env.reset(seed=int(rng.integers(2**31)))[0] if terminated or truncated else next_obs
        if step >= cfg.warmup_steps:
            if not cfg.model_free:
                # 2. refit in place; the imagined env is built once, on the first refit
                if _refit_due(step, cfg):
                    clock.start("fit")
                    data = real[: len(real)]
                    report = trainer.fit(data["observation"], data["action"], data["next", "observation"],
                                         data["next", "reward"].squeeze(-1))
                    fits.append({"step": step, "epochs": report.epochs,
                                 "elite_holdout_mse": float(np.mean([report.holdout_mse[i] for i in report.elites]))})
                    if model_env is None:
                        model_env = WorldModelEnv(
                            model, _float32_box(obs_space), act_space, start_states=real, batch_size=(cfg.rollouts_per_step,),
                            terminal_fn=_terminal_fn(cfg.task), seed=cfg.seed, propagation=cfg.propagation,
                            uncertainty_penalty=cfg.penalty, uncertainty_threshold=cfg.threshold,
                            halt_reward=cfg.halt_reward_value(), **model.env_kwargs())
                # 3. branched rollouts from real starts, horizon on MBPO's schedule
                horizon = rollout_length(step, *cfg.horizon)
                clock.start("rollout")
                with torch.no_grad():
                    imagined = model_env.rollout(horizon, sac.actor, break_when_any_done=False)
                model_buffer.extend(imagined.reshape(-1).select(*SAC_KEYS))
                if cfg.threshold is not None:  # how often MOReL's halting fired (one host read per real step)
                    halts[0] += int(imagined["next", "halted"].sum())
                    halts[1] += imagined.numel()
            # 4. SAC updates on real (and imagined) data
            clock.start("sac")
            for batch in _update_batches(real, None if cfg.model_free else model_buffer, updates):
                sac.update(batch)
            clock.start("other")
        if step >= cfg.warmup_steps and step % (cfg.eval_every if steps_to_target is None else cfg.curve_every) == 0:
            clock.start("eval")
            value = evaluate(sac, cfg.task, cfg.eval_episodes, seed=10_000 + cfg.seed * 100)
            clock.start("other")
            curve.append({"real_steps": step, "real_return": value, "episodes": cfg.eval_episodes,
                          "horizon": horizon, "seconds": time.perf_counter() - t0})
            if steps_to_target is None and value >= target:
                steps_to_target = step
            if cfg.progress:
                log(f"  {'SAC' if cfg.model_free else 'MBPO'} {step:>6,} real steps  {time.perf_counter() - t0:6.1f}s  "
                    f"real return {value:8.1f} ({cfg.eval_episodes} episodes)")
    clock.start("eval")
    final = evaluate(sac, cfg.task, cfg.final_eval_episodes, seed=20_000 + cfg.seed * 100)
    clock.start("other")
    real_env.close()
    return {
        "task": cfg.task, "seed": cfg.seed, "algorithm": "SAC" if cfg.model_free else "MBPO",
        "real_mean_return": final, "real_steps": cfg.real_steps, "target": target,
        "steps_to_target": steps_to_target, "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1), "cpu_seconds_by_phase": clock.totals(),
        "halted_fraction": halts[0] / halts[1] if halts[1] else None,
        "curve": curve, "fits": fits, "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
    }


def write_results(result: dict, out: Path) -> None:
    """``results.json`` (strict JSON: NaN/inf as null) and, with matplotlib, ``results.png``
    (real return against real steps; a ``baseline`` entry is drawn too)."""
    out.mkdir(parents=True, exist_ok=True)
    # strict JSON: a NaN/inf (a diverged run, a --target of inf) is written as null, not as bare NaN
    (out / "results.json").write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for run_result in [result, result.get("baseline")]:
        if run_result:
            curve = run_result["curve"]
            ax.plot([c["real_steps"] for c in curve], [c["real_return"] for c in curve], marker="o",
                    label=run_result["algorithm"])
    if math.isfinite(result["target"]):
        ax.axhline(result["target"], color="grey", linestyle="--", label=f"target {result['target']:g}")
    ax.set_xlabel("real steps")
    ax.set_ylabel("real return (deterministic policy)")
    ax.set_title(f"{result['task']}, seed {result['seed']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
    plt.close(fig)


def command(args, started: float) -> int:
    """``torchwm-rl mbpo`` with the parsed ``args``: one run (and the model-free baseline with
    ``--with-baseline``), ``results.json`` / ``results.png`` in the run folder, then a summary
    line, or one JSON line with ``--json``. Exit code 2 for a refused setting (its message on
    stderr). ``started`` (the command's start) is not used: ``wall_seconds`` is the run's own."""
    import dataclasses
    import sys

    cfg = MBPOConfig(task=args.task, seed=args.seed, target=args.target, model_free=args.model_free,
                     propagation=args.propagation, penalty=args.penalty, threshold=args.threshold,
                     progress=not args.json, threads=args.threads)
    if args.real_steps is not None:
        cfg.real_steps = args.real_steps
    out = Path(args.out) if args.out else default_out_dir("mbpo-")
    log = (lambda msg: None) if args.json else print
    try:
        result = run(cfg, log=log)
        if args.with_baseline and not args.model_free:
            result["baseline"] = run(dataclasses.replace(cfg, model_free=True), log=log)
    except ValueError as exc:
        print(f"torchwm-rl mbpo: {exc}", file=sys.stderr)
        return 2
    write_results(result, out)
    if args.json:
        keys = ("task", "seed", "algorithm", "real_mean_return", "real_steps", "target", "steps_to_target",
                "wall_seconds")
        line = {k: result[k] for k in keys}
        if "baseline" in result:
            line["baseline"] = {k: result["baseline"][k] for k in keys}
        print(json.dumps(json_safe(line), allow_nan=False))
    else:
        print(f"[torchwm-rl] {result['algorithm']}: real return {result['real_mean_return']:.1f} "
              f"({cfg.final_eval_episodes} episodes) after {result['real_steps']:,} real steps; target "
              f"{result['target']:g} first reached at {result['steps_to_target']} real steps; wrote {out.resolve()}")
    return 0
