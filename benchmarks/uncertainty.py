"""Does uncertainty handling close the imagination gap? An offline Pendulum benchmark.

The model is fit on a NARROW dataset: real ``Pendulum-v1`` episodes driven by random torques from
the real reset (the pendulum never swings up, so the upright region is never seen). The same SAC
(:mod:`torchwm_rl.sac`) is then trained only in imagination three ways:

* ``plain``: the ensemble with random propagation, no uncertainty handling;
* ``penalty``: MOPO, ``uncertainty_penalty=LAMBDA``;
* ``halting``: MOReL, ``uncertainty_threshold=TAU`` (a high quantile of the uncertainty on the
  dataset itself, times a margin) with ``halt_reward`` = the worst per-step reward over
  ``1 - gamma`` (an absorbing state at the worst reward: in a task whose rewards are all
  negative, ending an episode must not be a way out).

Each policy is scored by :func:`torchwm_rl.reality_check` (same start states, real env and
model). Prints real return, imagined return and the imagined-minus-real gap per variant and seed,
and their means. Run: ``PYTHONPATH=. python benchmarks/uncertainty.py [--seeds 0 1 2]``.
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
from torchwm_rl.sac import SACConfig, train_sac
from torchwm_rl.zoo import pendulum

WORST_STEP_REWARD = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # -16.27


def narrow_model(seed: int, n: int, epochs: int):
    S, A, S2 = pendulum.collect_transitions(n, seed=seed, scatter=0.0)
    model, _ = pendulum.fit(S, A, S2, seed=seed, epochs=epochs, verbose=False)
    with torch.no_grad():
        obs = torch.tensor(pendulum.observation(S), dtype=torch.float32)
        u = max_pairwise_distance(model(obs, torch.tensor(A, dtype=torch.float32)), 1)
    return model, u


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--frames", type=int, default=12_000)
    p.add_argument("--transitions", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--penalty", type=float, default=5.0)
    p.add_argument("--tau-quantile", type=float, default=0.99)
    p.add_argument("--tau-margin", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(1)

    rows = []
    for seed in args.seeds:
        model, u_data = narrow_model(seed, args.transitions, args.epochs)
        tau = float(torch.quantile(u_data, args.tau_quantile)) * args.tau_margin
        gamma = SACConfig.gamma
        variants = {
            "plain": {},
            "penalty": {"uncertainty_penalty": args.penalty},
            "halting": {"uncertainty_threshold": tau, "halt_reward": WORST_STEP_REWARD / (1 - gamma)},
        }
        for name, kwargs in variants.items():
            t0 = time.perf_counter()
            cfg = SACConfig(seed=seed, frames=args.frames)
            env = pendulum.make_env(model, batch_size=cfg.num_envs, seed=seed, **kwargs)
            actor, _, _ = train_sac(env, cfg)
            # imagined return: the model as the policy saw it (with its penalty / halting)
            check = pendulum.make_env(model, batch_size=args.episodes, seed=seed + 20_000, **kwargs)
            real = gym.make("Pendulum-v1")
            report = reality_check(actor, check, real, episodes=args.episodes, seed=seed,
                                   set_real_state=pendulum.set_real_state)
            rows.append((name, seed, report.real_mean_return, report.imagined_mean_return, report.return_gap))
            print(f"seed {seed} {name:8s} real {report.real_mean_return:8.1f}  imagined "
                  f"{report.imagined_mean_return:8.1f}  gap {report.return_gap:+8.1f}  "
                  f"({time.perf_counter() - t0:.0f}s; tau={tau:.3g})", flush=True)

    print(f"\nnarrow data: {args.transitions} random-torque real steps from the real reset; "
          f"SAC {args.frames} imagined frames; {args.episodes} real episodes per policy; seeds {args.seeds}")
    print(f"| variant | real return | imagined return | gap (imagined - real) | |gap| |")
    print("|---|---:|---:|---:|---:|")
    for name in ("plain", "penalty", "halting"):
        mine = [r for r in rows if r[0] == name]
        real, imag, gap = (np.mean([r[i] for r in mine]) for i in (2, 3, 4))
        absgap = np.mean([abs(r[4]) for r in mine])
        print(f"| {name} | {real:.1f} | {imag:.1f} | {gap:+.1f} | {absgap:.1f} |")


if __name__ == "__main__":
    main()
