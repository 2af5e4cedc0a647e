"""Planning instead of a trained policy: CEM model-predictive control inside the bundled
``cartpole-pixels`` world model, acting in the real ``CartPole-v1`` from pixels (issue 22).

Each real step, for each of ``--episodes`` real episodes run side by side:

1. the real frame is rendered, preprocessed and filtered into the posterior latent (the real
   check's filter: ``observe(z, a, preprocess(render()))``);
2. ``--candidates`` action sequences of ``--horizon`` steps are drawn per episode (each step
   Bernoulli with a per-step probability, 0.5 at first) and imagined in ONE batched
   ``env.rollout`` of the library's env over the model (``zoo.make_env("cartpole-pixels",
   sample=False)``: the prior's mean, the demo's imagination), started from that latent with
   ``auto_reset=False``;
3. a sequence's score is its expected number of imagined steps alive, the sum over its steps of
   the product of ``continue_prob`` so far (the env's step output; terminations are not drawn:
   ``continue_threshold`` is tiny, and steps after an imagined end count 0);
4. the per-step probabilities become the mean of the best ``1/--elite`` sequences, and steps 2-3
   are repeated (``--iters`` in all); the first action of the best sequence is played (steps 2-4
   are the library's :class:`torchwm_rl.planning.DiscreteCEMPlanner`, built by the pixel demo's
   ``make_planner``);
5. ``--warm``: the next real step starts from those probabilities shifted by one step.

No real transition is used anywhere but the filter (the model is the bundled one, fit offline;
nothing is trained here). The real resets are ``seed + 20000 + i`` as in
``cartpole_pixels_ppo.py``. One JSON line per run, also appended to ``--out``.

    python benchmarks/cartpole_pixels_mpc.py --horizon 40 --candidates 64 --iters 2 --warm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from torchwm_rl.app.demo_cartpole_pixels import make_planner
from torchwm_rl.planning import DiscreteCEMPlanner


@torch.no_grad()
def real_run(model, planner: DiscreteCEMPlanner, episodes: int, seed: int, log=print) -> dict:
    """``episodes`` real CartPole-v1 episodes from pixels side by side, each step planned."""
    import gymnasium as gym

    from torchwm_rl.pixel_reality import _frame  # the real check's render -> preprocess, with its checks
    from torchwm_rl.zoo.cartpole_pixels import render_frames_headless

    render_frames_headless()
    envs = [gym.make("CartPole-v1", render_mode="rgb_array") for _ in range(episodes)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + 20_000 + i)

    def frame(env):
        return _frame(model, env)[0]

    latent = model.observe(model.initial_latent(episodes), None, torch.stack([frame(e) for e in envs]))
    running = np.ones(episodes, bool)
    returns, final_states = np.zeros(episodes), [None] * episodes
    t0, steps = time.process_time(), 0
    while running.any():
        rows = torch.as_tensor(np.flatnonzero(running))
        action = planner(latent[rows], rows if planner.probs is not None else None)
        frames = []
        for j, i in enumerate(rows.tolist()):
            _, reward, terminated, truncated, _ = envs[i].step(int(action[j]))
            returns[i] += reward
            if terminated or truncated:
                running[i] = False
                final_states[i] = np.round(np.asarray(envs[i].unwrapped.state, dtype=float), 3).tolist()
            frames.append(frame(envs[i]))
        latent[rows] = model.observe(latent[rows], action, torch.stack(frames))
        steps += 1
        if steps % 100 == 0:
            log(f"  real step {steps}: {int(running.sum())} of {episodes} episodes running, "
                f"{time.process_time() - t0:.0f} CPU s")
    return {"real_mean_return": float(returns.mean()), "real_returns": returns.tolist(),
            "at_500": int((returns >= 500).sum()), "final_states": final_states,
            "cpu_seconds": round(time.process_time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--horizon", type=int, default=40)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--elite", type=int, default=8, help="the best 1/ELITE of the candidates refit the probabilities")
    p.add_argument("--warm", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cartpole_pixels_mpc.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from torchwm_rl import zoo

    model = zoo.load("cartpole-pixels")
    planner = make_planner(model, args.candidates, args.horizon, args.iters, args.elite, args.seed,
                           warm_rows=args.episodes if args.warm else 0)
    t0 = time.time()
    result = {k: v for k, v in vars(args).items() if k != "out"} | real_run(model, planner, args.episodes, args.seed)
    result["wall_seconds"] = round(time.time() - t0, 1)
    line = json.dumps(result)
    print(line)
    with open(args.out, "a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
