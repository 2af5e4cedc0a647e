"""Does uncertainty handling close the imagination gap? An offline Pendulum benchmark.

Setting (offline model-based RL, data from one region of the state space):

* **Data.** 2,000 real ``Pendulum-v1`` transitions from 40 episodes of 50 steps of a weak policy
  (uniformly random torques), each started hanging down (``th = pi + U(-0.3, 0.3)``,
  ``th_dot ~ U(-1, 1)``). The pendulum never gets more than 0.8 rad (46 deg) from the bottom and
  never faster than 3.2 rad/s: the upright region, where all the reward is, is never seen.
* **Model.** The bundled architecture (:mod:`torchwm_rl.zoo.pendulum`, 5 members, each on its own
  bootstrap), 20 epochs on that data. Reward is Pendulum's known cost, so every error the policy
  can exploit is a dynamics error.
* **Policy.** The same SAC (:mod:`torchwm_rl.app.sac`, 12,000 imagined frames, 32 envs) trained only in
  the model, from the task's own start distribution (Pendulum's reset: any angle), three ways:

  - ``plain``: random propagation (TS1), no uncertainty handling;
  - ``penalty``: MOPO, ``uncertainty_penalty=5`` (reward - 5 * max pairwise L2 distance);
  - ``halting``: MOReL, ``uncertainty_threshold`` = the LARGEST uncertainty on the dataset's own
    transitions (a per-step quantile such as the 99th would falsely halt most 200-step in-data
    episodes: 1 - 0.99**200 = 87%), ``halt_reward`` = the worst per-step reward / (1 - gamma)
    (an absorbing state at the worst reward: in a task whose rewards are all negative, ending an
    episode must never be a way out).

* **Score.** :func:`torchwm_rl.reality_check`: 20 episodes from the same start states in the real
  env and in the model. "imagined" is the return in the plain model (random propagation, no
  penalty, no halting): the question is whether the policy found returns the model promises and
  reality does not give. The return of the objective each policy was trained on (with its
  penalty or halts) is printed too ("as trained").

Found by a small search (see tutorials/uncertainty.md): with data that covers the start states
(random-torque episodes from Pendulum's reset) the plain policy exploited the model on some
seeds only; with this data it did on seeds 0-2. λ = 5 was the better of 5, 10 and 20 on seeds
0-2, so the default seeds are 3-7, which it was not picked on (measured results:
benchmarks/RESULTS.md). Deterministic given the seed on one machine (one torch thread). Run:
``PYTHONPATH=. python benchmarks/uncertainty.py [--seeds 3 4 5 6 7]`` (about 20 minutes for the
five default seeds on 2 shared CPU cores; prints its wall time). Downloads nothing.
"""

from __future__ import annotations

import argparse
import math
import time

import gymnasium as gym
import numpy as np
import torch

from torchwm_rl.ensemble import max_pairwise_distance
from torchwm_rl.reality import reality_check
from torchwm_rl.app.sac import SACConfig, train_sac
from torchwm_rl.zoo import pendulum

#: seeds the settings (λ = 5) were picked on; the default seeds are the next five
TUNING_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (3, 4, 5, 6, 7)

WORST_STEP_REWARD = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # -16.27


def collect(n: int, seed: int, start: str, width: float, torque: float, length: int):
    """Real Pendulum-v1 transitions ``(S, A, S2)`` (states ``(th, th_dot)``) of the data policy:
    uniformly random torques in ``[-torque, torque]``, episodes of ``length`` steps started
    ``start="bottom"``: at ``th ~ pi + U(-width, width)``, ``th_dot ~ U(-1, 1)``, or
    ``start="reset"``: Pendulum's own reset."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    rng = np.random.default_rng(seed)
    env = PendulumEnv()
    env.reset(seed=seed)
    S, A, S2 = [], [], []
    while len(S) < n:
        env.reset(seed=int(rng.integers(2**31)))
        if start == "bottom":
            env.state = np.array([math.pi + rng.uniform(-width, width), rng.uniform(-1, 1)])
        for _ in range(length):
            s = np.array(env.state, dtype=np.float64)
            a = rng.uniform(-torque, torque)
            env.step(np.array([a], dtype=np.float32))
            S.append(s)
            A.append(a)
            S2.append(np.array(env.state, dtype=np.float64))
            if len(S) >= n:
                break
    env.close()
    return np.array(S), np.array(A)[:, None], np.array(S2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_SEEDS),
                   help=f"seeds (default: {list(HELD_OUT_SEEDS)}, held out: lambda was picked on {list(TUNING_SEEDS)})")
    p.add_argument("--variants", nargs="+", default=["plain", "penalty", "halting"],
                   choices=["plain", "penalty", "halting"])
    p.add_argument("--frames", type=int, default=12_000, help="imagined frames of SAC")
    p.add_argument("--transitions", type=int, default=2_000, help="real transitions in the dataset")
    p.add_argument("--start", choices=["bottom", "reset"], default="bottom",
                   help="where the data episodes start: hanging down, or Pendulum's reset")
    p.add_argument("--width", type=float, default=0.3, help="'bottom' starts: th = pi + U(-width, width)")
    p.add_argument("--torque", type=float, default=2.0, help="data policy: torques U(-torque, torque)")
    p.add_argument("--length", type=int, default=50, help="steps per data episode")
    p.add_argument("--epochs", type=int, default=20, help="model epochs")
    p.add_argument("--episodes", type=int, default=20, help="reality_check episodes per policy")
    p.add_argument("--penalty", type=float, default=5.0, help="MOPO's lambda")
    p.add_argument("--tau-quantile", type=float, default=1.0,
                   help="MOReL's tau: this quantile of the uncertainty on the dataset (1.0: its maximum)")
    args = p.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    rows = []
    for seed in args.seeds:
        S, A, S2 = collect(args.transitions, seed, args.start, args.width, args.torque, args.length)
        model, _ = pendulum.fit(S, A, S2, seed=seed, epochs=args.epochs, verbose=False)
        with torch.no_grad():
            obs = torch.tensor(pendulum.observation(S), dtype=torch.float32)
            u_data = max_pairwise_distance(model(obs, torch.tensor(A, dtype=torch.float32)), 1)
        tau = float(torch.quantile(u_data, args.tau_quantile))
        variants = {
            "plain": {},
            "penalty": {"uncertainty_penalty": args.penalty},
            "halting": {"uncertainty_threshold": tau, "halt_reward": WORST_STEP_REWARD / (1 - SACConfig.gamma)},
        }
        for name in args.variants:
            kwargs = variants[name]
            t0 = time.perf_counter()
            cfg = SACConfig(seed=seed, frames=args.frames)
            env = pendulum.make_env(model, batch_size=cfg.num_envs, seed=seed, **kwargs)
            actor, _, _ = train_sac(env, cfg)
            real = gym.make("Pendulum-v1")
            checks = {}
            for label, kw in (("plain model", {}), ("as trained", kwargs)):
                check = pendulum.make_env(model, batch_size=args.episodes, seed=seed + 20_000, **kw)
                checks[label] = reality_check(actor, check, real, episodes=args.episodes, seed=seed,
                                              set_real_state=pendulum.set_real_state)
            real.close()
            r, own = checks["plain model"], checks["as trained"]
            rows.append((name, seed, r.real_mean_return, r.imagined_mean_return, r.return_gap,
                         own.imagined_mean_return))
            print(f"seed {seed} {name:8s} real {r.real_mean_return:8.1f}  imagined {r.imagined_mean_return:8.1f}  "
                  f"gap {r.return_gap:+7.1f}  as trained {own.imagined_mean_return:8.1f}  "
                  f"({time.perf_counter() - t0:.0f}s; data uncertainty median {float(u_data.median()):.3g}, "
                  f"tau {tau:.3g})", flush=True)

    print(f"\n{args.transitions} real random-torque steps from '{args.start}' starts ({args.length}-step episodes); "
          f"SAC {args.frames} imagined frames; {args.episodes} real episodes per policy; lambda {args.penalty}; "
          f"tau = {args.tau_quantile} quantile of the dataset's uncertainty")
    print("| seed | variant | real return | imagined return | gap (imagined - real) | as trained |")
    print("|---|---|---:|---:|---:|---:|")
    for name, seed, real, imag, gap, own in rows:
        print(f"| {seed} | {name} | {real:.1f} | {imag:.1f} | {gap:+.1f} | {own:.1f} |")
    print("\n| variant | mean real return | mean imagined return | mean gap | mean abs(gap) |")
    print("|---|---:|---:|---:|---:|")
    for name in args.variants:
        mine = [r for r in rows if r[0] == name]
        real, imag, gap = (np.mean([r[i] for r in mine]) for i in (2, 3, 4))
        print(f"| {name} | {real:.1f} | {imag:.1f} | {gap:+.1f} | {np.mean([abs(r[4]) for r in mine]):.1f} |")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
