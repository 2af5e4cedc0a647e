"""Steps per second: one batched world-model env vs the same envs spread over worker processes.

    python benchmarks/multiprocess.py [--envs 64] [--steps 200] [--hidden 16 1024]

For each model size (``--hidden``: width of a 3-layer MLP dynamics model), prints env steps per
second (one env step = one imagined transition of one env) for

* TorchRL: one batched ``WorldModelEnv`` (N envs, torch with 1 and with 2 threads) vs
  ``ParallelEnv`` of 2 workers x N/2 batched envs; ``Collector`` vs ``MultiSyncCollector``;
* Gymnasium: the batched vector export (N envs) vs ``AsyncVectorEnv`` / ``SyncVectorEnv`` of 2
  unbatched envs (the one-env-per-worker pattern of CleanRL's ``make_env`` thunks).

Process start-up is excluded (measured after a warm-up); each figure is the best of
``--repeats`` runs. Workers use 1 torch thread each.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # benchmarks/common.py, also when loaded by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ACT_DIM, OBS_DIM, ResidualMLPWorldModel  # noqa: E402

MLPWorldModel = ResidualMLPWorldModel  # residual MLP dynamics; ``hidden`` sets the cost of one model call


SPACES = (
    gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32),
    gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32),
)


def make_env(hidden: int, num_envs: int) -> WorldModelEnv:
    torch.set_num_threads(1)
    model = MLPWorldModel(hidden).requires_grad_(False)
    return WorldModelEnv(model, *SPACES, max_episode_steps=100, batch_size=(num_envs,))


def make_gym_env(hidden: int, seed: int) -> GymWorldModelEnv:
    torch.set_num_threads(1)
    model = MLPWorldModel(hidden).requires_grad_(False)
    return GymWorldModelEnv(model, *SPACES, max_episode_steps=100, seed=seed)


def best_rate(fn, frames: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return frames / best


def torchrl_rows(hidden, n, steps, repeats):
    from torchrl.collectors import Collector, MultiSyncCollector
    from torchrl.envs import ParallelEnv

    rows = []
    env = make_env(hidden, n)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            rate = best_rate(lambda: env.rollout(steps, break_when_any_done=False), n * steps, repeats)
        rows.append((f"TorchRL batched env N={n}, {threads} thread(s)", rate))
    torch.set_num_threads(1)
    penv = ParallelEnv(2, functools.partial(make_env, hidden, n // 2))
    rows.append((f"TorchRL ParallelEnv 2 workers x {n // 2}",
                 best_rate(lambda: penv.rollout(steps, break_when_any_done=False), n * steps, repeats)))
    penv.close()

    def collect(collector_fn):
        collector = collector_fn()
        it = iter(collector)
        next(it)  # warm-up batch
        start = time.perf_counter()
        for _ in range(repeats):
            next(it)
        rate = repeats * n * steps / (time.perf_counter() - start)
        collector.shutdown()
        return rate

    rows.append((f"TorchRL Collector, batched env N={n}",
                 collect(lambda: Collector(make_env(hidden, n), None, frames_per_batch=n * steps, total_frames=-1))))
    fn = functools.partial(make_env, hidden, n // 2)
    rows.append((f"TorchRL MultiSyncCollector 2 workers x {n // 2}",
                 collect(lambda: MultiSyncCollector([fn, fn], None, frames_per_batch=n * steps, total_frames=-1))))
    return rows


def gym_rows(hidden, n, steps, repeats):
    rows = []
    venv = make_env(hidden, n).to_gymnasium()
    venv.reset(seed=0)
    actions = np.zeros((n, ACT_DIM), np.float32)
    rows.append((f"Gymnasium batched vector export N={n}",
                 best_rate(lambda: [venv.step(actions) for _ in range(steps)], n * steps, repeats)))
    thunks = [functools.partial(make_gym_env, hidden, seed) for seed in range(2)]
    for cls in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv):
        envs = cls(thunks)
        envs.reset(seed=0)
        two = np.zeros((2, ACT_DIM), np.float32)
        rows.append((f"Gymnasium {cls.__name__} of 2 unbatched envs",
                     best_rate(lambda: [envs.step(two) for _ in range(steps)], 2 * steps, repeats)))
        envs.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per process unless noted")
    for hidden in args.hidden:
        print(f"\nMLP world model, hidden={hidden}: env steps/s (higher is better)")
        for label, rate in torchrl_rows(hidden, args.envs, args.steps, args.repeats) + gym_rows(
            hidden, args.envs, args.steps, args.repeats
        ):
            print(f"  {label:48s} {rate:12,.0f}")


if __name__ == "__main__":
    main()
