"""Can the cartpole-pixels imagination rank policies by their real return? A diagnostic, not a test.

Per seed: SB3 PPO trained as the demo trains it (16 envs, the prior's mean, terminations drawn
from the continue head, 150k imagined steps; ``--gamma``), then the greedy policy scored in four
imaginations (64 envs, at most 500 steps, env seed 123: the prior's mean or samples, terminations
drawn or thresholded at 0.5) and in the real ``CartPole-v1`` from pixels (20 episodes, as
``cartpole_pixels_ppo.py`` scores it). One JSON line per seed; ``--table FILE...`` prints each
imagination's Spearman rank correlation with the real return over all the lines given.

    python benchmarks/cartpole_pixels_selection.py --gamma 0.99 --seeds 0 1 2 3 4 5 >> runs.jsonl
    python benchmarks/cartpole_pixels_selection.py --table runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

IMAGINATIONS = {"mean_drawn": {"sample": False}, "sample_drawn": {"sample": True},
                "mean_thr": {"sample": False, "continue_threshold": 0.5},
                "sample_thr": {"sample": True, "continue_threshold": 0.5}}


def imagined_return(model, ppo, envs: int = 64, **options) -> float:
    """The greedy policy's mean return over ``envs`` imagined episodes of at most 500 steps."""
    from cartpole_pixels_probe import imagined_episodes

    def act(obs):
        return torch.as_tensor(ppo.predict(obs.numpy(), deterministic=True)[0]).long()

    return imagined_episodes(model, act, envs, 123, **options)[0]


def spearman(a, b) -> float:
    rank = lambda v: np.argsort(np.argsort(np.asarray(v)))  # noqa: E731 (no ties in these scores)
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def table(paths: list) -> None:
    rows = [json.loads(line) for path in paths for line in open(path) if line.strip()]
    real = [r["real"] for r in rows]
    for key in IMAGINATIONS:
        scores = [r[key] for r in rows]
        print(f"{key}: Spearman {spearman(scores, real):+.2f} over {len(rows)} policies; the best by it scores "
              f"{real[int(np.argmax(scores))]:.1f} real (the best of all: {max(real):.1f})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--table", nargs="+", default=None, metavar="JSONL")
    a = p.parse_args()
    if a.table:
        table(a.table)
        return
    torch.set_num_threads(1)
    from cartpole_pixels_ppo import real_returns
    from stable_baselines3 import PPO

    from torchwm_rl import zoo

    model = zoo.load("cartpole-pixels")
    for seed in a.seeds:
        vec = zoo.make_env("cartpole-pixels", model=model, batch_size=16, seed=seed, sample=False).to_sb3()
        ppo = PPO("MlpPolicy", vec, n_steps=256, batch_size=1024, n_epochs=10, gamma=a.gamma, gae_lambda=0.95,
                  learning_rate=3e-4, ent_coef=0.0, seed=seed, verbose=0, device="cpu")
        ppo.learn(150_000)
        rec = {"seed": seed, "gamma": a.gamma}
        rec.update({key: imagined_return(model, ppo, **options) for key, options in IMAGINATIONS.items()})
        real, _ = real_returns(model, lambda o: int(ppo.predict(o, deterministic=True)[0]), 20, seed=seed + 20_000)
        rec["real"] = float(np.mean(real))
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
