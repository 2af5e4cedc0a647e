"""Soak test: a million batched imagined steps with resets; RSS and throughput must stay flat.

    python benchmarks/soak.py                       # 1e6 batched steps of 1024 envs (~1e9 env-steps), TorchRL path
    python benchmarks/soak.py --path vector         # the Gymnasium vector export
    python benchmarks/soak.py --path sb3            # the Stable-Baselines3 VecEnv export
    python benchmarks/soak.py --steps 10000         # a quick run (1e4 batched steps)
    python benchmarks/soak.py --steps 10000 --grad  # grad on: shows the check catching growth

Every env has its own time limit (drawn from [--min-len, --max-len]) and the model also
terminates episodes, so partial resets happen on most steps. The script runs on ONE thread,
under ``torch.no_grad()`` (as collectors and the Gymnasium/SB3 exports do: with grad enabled the
TorchRL path deliberately keeps the autograd graph through the state, which grows by design).

It prints a table at ``--report`` evenly spaced points: env-steps so far, resets so far, the
window's env-steps/s, the resident set size (RSS, from /proc) and the number of live Python
objects after a collection. The verdict compares RSS after warm-up (the first report) with the
end; growth under ``--tolerance-mb`` passes. Not a test: it prints numbers for the closing note.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from torchwm_rl import WorldModelEnv

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # benchmarks/common.py, also when loaded by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SoakModel, rss_mb  # noqa: E402


def build(path: str, n: int, min_len: int, max_len: int, seed: int):
    model = SoakModel()
    obs_space = gym.spaces.Box(-1.0, 1.0, shape=(model.obs_dim,), dtype=np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=torch.Generator().manual_seed(seed))
    env = WorldModelEnv(model, obs_space, act_space, batch_size=(n,), max_episode_steps=lengths, seed=seed)
    if path == "torchrl":
        return env
    if path == "vector":
        return env.to_gymnasium()
    return env.to_sb3()


def make_stepper(path: str, env, n: int, seed: int):
    """A function taking one batched step with a random action; returns the number of envs
    that ended (and so are reset) in that step."""
    g = torch.Generator().manual_seed(seed)
    if path == "torchrl":
        state = {"td": env.reset()}

        def step() -> int:
            td = state["td"].set("action", torch.rand(n, 4, generator=g) * 2 - 1)
            out, state["td"] = env.step_and_maybe_reset(td)
            return int(out["next", "done"].sum())

        return step
    if path == "vector":
        env.reset(seed=seed)

        def step() -> int:
            _, _, terminated, truncated, _ = env.step((torch.rand(n, 4, generator=g) * 2 - 1).numpy())
            return int((terminated | truncated).sum())

        return step
    env.seed(seed)
    env.reset()

    def step() -> int:
        env.step_async((torch.rand(n, 4, generator=g) * 2 - 1).numpy())
        return int(env.step_wait()[2].sum())

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=["torchrl", "vector", "sb3"], default="torchrl")
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1_000_000, help="batched steps (each steps all --num-envs envs)")
    parser.add_argument("--min-len", type=int, default=20, help="shortest per-env time limit")
    parser.add_argument("--max-len", type=int, default=200, help="longest per-env time limit")
    parser.add_argument("--report", type=int, default=10, help="number of report rows")
    parser.add_argument("--tolerance-mb", type=float, default=20.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad", action="store_true",
                        help="step with grad enabled (TorchRL path: the graph through the state grows)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    n = args.num_envs
    iterations = max(1, args.steps)
    every = max(1, iterations // args.report)
    print(f"soak: path={args.path} num_envs={n} batched_steps={iterations} env_steps={iterations * n} "
          f"episode_len=[{args.min_len},{args.max_len}] threads={torch.get_num_threads()} grad={args.grad}")
    gc.collect()
    start_rss = rss_mb()
    print(f"RSS at start (before building the env): {start_rss:.1f} MiB")
    with contextlib.nullcontext() if args.grad else torch.no_grad():
        env = build(args.path, n, args.min_len, args.max_len, args.seed)
        step = make_stepper(args.path, env, n, args.seed)
        header = f"{'env-steps':>12} {'resets':>10} {'env-steps/s':>12} {'RSS MiB':>9} {'py objects':>11}"
        print(header)
        print("-" * len(header))
        resets, rows, stepping = 0, [], 0.0  # stepping: seconds spent stepping (reports excluded)
        window_start = time.perf_counter()
        for i in range(1, iterations + 1):
            resets += step()
            if i % every == 0 or i == iterations:
                now = time.perf_counter()
                stepping += now - window_start
                rate = (i - (rows[-1][0] // n if rows else 0)) * n / (now - window_start)
                gc.collect()
                row = (i * n, resets, rate, rss_mb(), len(gc.get_objects()))
                rows.append(row)
                print(f"{row[0]:>12,} {row[1]:>10,} {row[2]:>12,.0f} {row[3]:>9.1f} {row[4]:>11,}", flush=True)
                window_start = time.perf_counter()
    env.close()
    end_rss = rss_mb()
    warm_rss, warm_objects = rows[0][3], rows[0][4]
    growth = rows[-1][3] - warm_rss
    print(f"RSS at end: {end_rss:.1f} MiB (start {start_rss:.1f}, after warm-up {warm_rss:.1f}, "
          f"growth after warm-up {growth:+.1f} MiB; live Python objects {warm_objects:,} -> {rows[-1][4]:,})")
    print(f"total: {iterations * n:,} env-steps, {resets:,} episode ends, {stepping:.1f} s stepping, "
          f"{iterations * n / stepping:,.0f} env-steps/s overall")
    ok = growth <= args.tolerance_mb
    print(f"verdict: {'no growth' if ok else 'RSS GREW'} (tolerance {args.tolerance_mb} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
