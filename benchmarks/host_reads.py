"""Host reads of tensor values per imagined step, counted (not timed).

    python benchmarks/host_reads.py            # N=64, 200 steps, episode ends every ~20 steps
    python benchmarks/host_reads.py --n 8 --steps 100

On CUDA every read of a tensor's value on the host (``item``, ``bool``, ``tolist``, ``nonzero``,
a boolean-mask index, ...) is a device sync: the rollout cannot run ahead of the GPU and CUDA
graphs cannot apply. This script counts such calls on the CPU with a ``TorchFunctionMode``, so
the count is the same whatever the device. Rows:

  rollout    ``env.rollout(T, policy, break_when_any_done=False)`` (the fast path)
  envbase    ``EnvBase.rollout`` over the same env (TorchRL's general path)
  collector  a TorchRL ``Collector`` over the same env (frames_per_batch = N x T)
  ... masked       the same with ``reset_schedule="every_step"`` (and the collector with
                   ``track_traj_ids=False``); "+ignore": and ``nan_policy="ignore"``
  hand loop  ``a = policy(s); s = model(s, a)`` with a masked reset, for reference

Each row prints reads per step, and which calls they are. Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from tensordict.nn import TensorDictModule

from torchwm_rl import WorldModelEnv
from torchwm_rl.host_reads import HostReadCounter

DIM = 8


class LinearModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(DIM + 1, DIM)

    def forward(self, state, action):
        return torch.tanh(self.net(torch.cat([state, action], -1))) * 1.05


def make_env(n: int, **options) -> WorldModelEnv:
    torch.manual_seed(0)
    return WorldModelEnv(
        LinearModel(),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
        reset_fn=lambda model, seed=None, options=None, batch_size=(): 0.1 * torch.ones(*batch_size, DIM),
        reward_fn=lambda model, next_state: -next_state.pow(2).sum(-1),
        terminal_fn=lambda model, next_state: next_state[..., 0] > 0.99,
        max_episode_steps=20,
        batch_size=(n,),
        **options,
    )


def count(run, steps: int) -> tuple:
    with HostReadCounter() as counter:
        run()
    total = sum(counter.counts.values())
    return total / steps, dict(counter.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    n, steps = args.n, args.steps
    policy = TensorDictModule(torch.nn.Linear(DIM, 1), in_keys=["observation"], out_keys=["action"])
    from torchrl.collectors import Collector
    from torchrl.envs import EnvBase

    rows = []
    configs = [("", {}, True), (" masked", {"reset_schedule": "every_step"}, False),
               (" masked+ignore", {"reset_schedule": "every_step", "nan_policy": "ignore"}, False)]
    with torch.no_grad():
        for tag, options, traj_ids in configs:
            env = make_env(n, **options)
            env.rollout(5, policy, break_when_any_done=False)  # warm-up, outside the count
            rows.append(("rollout" + tag, *count(lambda: env.rollout(steps, policy, break_when_any_done=False),
                                                 steps)))
            rows.append(("envbase" + tag, *count(
                lambda: EnvBase.rollout(env, steps, policy, break_when_any_done=False), steps)))
            collector = Collector(env, policy, frames_per_batch=n * steps, total_frames=-1,
                                  auto_register_policy_transforms=False, track_traj_ids=traj_ids)
            batches = iter(collector)
            next(batches)  # the first batch includes the collector's own set-up
            rows.append(("collector" + tag + ("" if traj_ids else " (no traj ids)"), *count(lambda: next(batches),
                                                                                           steps)))
            collector.shutdown()
        model, lin = env.model, policy.module

        def hand_loop():
            state = 0.1 * torch.ones(n, DIM)
            elapsed = torch.zeros(n, dtype=torch.int64)
            for _ in range(steps):
                state = model(state, lin(state))
                elapsed += 1
                done = (state[..., 0] > 0.99) | (elapsed >= 20)
                state = torch.where(done.unsqueeze(-1), 0.1 * torch.ones_like(state), state)
                elapsed = torch.where(done, torch.zeros_like(elapsed), elapsed)

        rows.append(("hand loop", *count(hand_loop, steps)))
    print(f"host reads per step, N={n}, {steps} steps, time limit 20 (episode ends every 20 steps or sooner)")
    print(f"{'row':<40} {'reads/step':>10}  calls")
    for name, per_step, calls in rows:
        detail = ", ".join(f"{k} {v / steps:.2f}" for k, v in sorted(calls.items())) or "-"
        print(f"{name:<40} {per_step:>10.2f}  {detail}")


if __name__ == "__main__":
    main()
