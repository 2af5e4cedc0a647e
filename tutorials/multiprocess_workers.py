"""Multi-process world-model envs: every worker builds its own env and loads its own model copy.

One batched ``WorldModelEnv`` is usually the fastest way to imagine many envs (see the numbers
in tutorials/README.md). Use worker processes when one model call per step no longer fills the
machine, or when the training library insists on one env per process. This script shows each
path with the same env factory pattern:

1. TorchRL ``ParallelEnv`` of batched worker envs;
2. TorchRL ``MultiSyncCollector`` / ``MultiAsyncCollector`` with env-creating functions;
3. Gymnasium ``AsyncVectorEnv`` of per-worker envs (CleanRL's ``make_env`` thunks);
4. Stable-Baselines3 ``SubprocVecEnv`` of per-worker envs, trained with PPO;
5. with ``--ray``: TorchRL ``Collector(..., backend="ray")`` on a Ray cluster, the weights
   shipped through Ray's object store.

    python tutorials/multiprocess_workers.py [--ray] [--budget tiny] [--paths parallel-env ...]

Factories are module-level functions bound with ``functools.partial``: they pickle under the
``spawn`` start method, and they build the model INSIDE the worker, so no model object and no
mutable model state is shared between processes.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv


# --------------------------------------------------------------------------- the world model
class PointMassWorldModel(nn.Module):
    """A point pushed around the square [-1, 1]^2; the goal is the centre.

    Latent state ``(x, y, vx, vy)``. ``residual`` is a small MLP playing the part of learned
    dynamics error; the decoders turn the latent into the three observation kinds.
    """

    IMAGE_SIZE = 36  # SB3's NatureCNN needs at least 36 x 36

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.residual = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        grid = torch.linspace(-1.0, 1.0, self.IMAGE_SIZE)
        self.register_buffer("grid_y", grid.view(-1, 1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.register_buffer("grid_x", grid.view(1, -1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.generator = torch.Generator().manual_seed(seed)

    def sample_initial_state(self, seed=None, n=None):
        if seed is not None:
            self.generator.manual_seed(int(seed))
        shape = (4,) if n is None else (n, 4)
        position = torch.rand(shape[:-1] + (2,), generator=self.generator) * 1.6 - 0.8
        return torch.cat([position, torch.zeros_like(position)], -1)

    def predict_next_state(self, state, action):
        position, velocity = state[..., :2], state[..., 2:]
        action = action.to(state.dtype).clamp(-1.0, 1.0)
        velocity = 0.8 * velocity + 0.2 * action
        drift = 0.02 * self.residual(torch.cat([state, action], -1))
        position = (position + 0.1 * velocity + drift).clamp(-1.0, 1.0)
        return torch.cat([position, velocity], -1)

    def predict_reward(self, state):
        return -state[..., :2].norm(dim=-1)

    def predict_terminal(self, state):
        return state[..., :2].norm(dim=-1) < 0.1

    def decode_dict(self, state):
        return {"position": state[..., :2], "velocity": state[..., 2:]}

    def decode_image(self, state):
        """Channel-first uint8 image: the point as a blob in channel 0, the goal in channel 1."""
        x, y = state[..., 0, None, None], state[..., 1, None, None]
        blob = torch.exp(-((self.grid_x - x) ** 2 + (self.grid_y - y) ** 2) / 0.02)
        goal = torch.exp(-(self.grid_x**2 + self.grid_y**2) / 0.01).expand_as(blob)
        image = torch.stack([blob, goal, torch.zeros_like(blob)], -3)
        return (image * 255).to(torch.uint8)


# ------------------------------------------------------------------------------ the adapters
def batch_of(options):
    """N for a batched env (the reset mask has one row per env), None for an unbatched one."""
    mask = (options or {}).get("reset_mask")
    return None if mask is None else mask.shape[0]


def reset_vector(model, seed=None, options=None):
    state = model.sample_initial_state(seed, batch_of(options))
    return {"state": state, "observation": state}


def transition_vector(model, state, action):
    next_state = model.predict_next_state(state, action)
    return {
        "state": next_state,
        "observation": next_state,
        "reward": model.predict_reward(next_state),
        "terminated": model.predict_terminal(next_state),
    }


OBSERVATION_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

BUDGETS = {"tiny": (4, 32), "full": (32, 4096)}  # envs per worker, frames per path
PATHS = ["parallel-env", "collectors", "async-vector-env", "subproc-vec-env", "ray"]


# ---------------------------------------------------------------------------- the factories
def load_world_model(weights_path: str) -> PointMassWorldModel:
    """Runs in the worker: build the architecture, load the trained weights, freeze them."""
    model = PointMassWorldModel()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return model.eval().requires_grad_(False)


def make_torchrl_env(weights_path: str, num_envs: int) -> WorldModelEnv:
    """A batched TorchRL env: one worker imagines ``num_envs`` envs with one model call."""
    return WorldModelEnv(
        load_world_model(weights_path),
        observation_space=OBSERVATION_SPACE,
        action_space=ACTION_SPACE,
        reset_fn=reset_vector,
        transition_fn=transition_vector,
        max_episode_steps=50,
        batch_size=(num_envs,),
    )


def make_gym_env(weights_path: str, seed: int) -> GymWorldModelEnv:
    """One unbatched Gymnasium env per worker (what AsyncVectorEnv / SubprocVecEnv expect)."""
    torch.set_num_threads(1)
    return GymWorldModelEnv(
        load_world_model(weights_path),
        observation_space=OBSERVATION_SPACE,
        action_space=ACTION_SPACE,
        reset_fn=reset_vector,
        transition_fn=transition_vector,
        max_episode_steps=50,
        seed=seed,
    )


def make_env_from_object_store(weights_ref, num_envs: int) -> WorldModelEnv:
    """Runs on a Ray worker, possibly on another machine: the weights come from the object store."""
    import ray

    model = PointMassWorldModel()
    model.load_state_dict(ray.get(weights_ref))
    model.eval().requires_grad_(False)
    return WorldModelEnv(
        model,
        observation_space=OBSERVATION_SPACE,
        action_space=ACTION_SPACE,
        reset_fn=reset_vector,
        transition_fn=transition_vector,
        max_episode_steps=50,
        batch_size=(num_envs,),
    )


def make_policy():
    """A small TorchRL policy (untrained; the point here is moving data, not learning)."""
    from tensordict.nn import TensorDictModule

    net = nn.Sequential(nn.Linear(4, 2), nn.Tanh())
    return TensorDictModule(net, in_keys=["observation"], out_keys=["action"])


# -------------------------------------------------------------------------------- the paths
def torchrl_parallel_env(weights_path: str, num_envs: int, frames: int) -> None:
    from torchrl.envs import ParallelEnv

    env = ParallelEnv(2, functools.partial(make_torchrl_env, weights_path, num_envs))
    env.set_seed(0)  # each worker gets its own seed
    rollout = env.rollout(frames // (2 * num_envs), break_when_any_done=False)
    env.close()
    print(f"ParallelEnv           batch {tuple(rollout.batch_size)}  (workers, envs, steps)")


def torchrl_multi_collectors(weights_path: str, num_envs: int, frames: int) -> None:
    from torchrl.collectors import MultiAsyncCollector, MultiSyncCollector

    make_env = functools.partial(make_torchrl_env, weights_path, num_envs)
    for collector_class in (MultiSyncCollector, MultiAsyncCollector):
        collector = collector_class(
            [make_env, make_env],  # one env-creating function per worker process
            make_policy(),
            frames_per_batch=frames // 2,
            total_frames=frames,
        )
        for batch in collector:
            pass  # train on `batch` here; then collector.update_policy_weights_()
        collector.shutdown()
        print(f"{collector_class.__name__:20s}  last batch {tuple(batch.batch_size)}")


def gymnasium_async_vector_env(weights_path: str, frames: int) -> None:
    envs = gym.vector.AsyncVectorEnv(
        [functools.partial(make_gym_env, weights_path, seed) for seed in range(2)]
    )
    obs, infos = envs.reset(seed=0)
    for _ in range(frames // 2):
        obs, reward, terminated, truncated, infos = envs.step(envs.action_space.sample())
    envs.close()
    print(f"AsyncVectorEnv        obs {obs.shape} {obs.dtype}")


def sb3_subproc_vec_env(weights_path: str, frames: int) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = SubprocVecEnv([functools.partial(make_gym_env, weights_path, seed) for seed in range(2)])
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, seed=0)
    model.learn(total_timesteps=frames)
    venv.close()
    print(f"SubprocVecEnv + PPO   {model.num_timesteps} timesteps")


def ray_collector(weights_path: str, num_envs: int, frames: int, address) -> None:
    import ray
    from torchrl.collectors import Collector

    ray.init(address=address, num_cpus=None if address else 2, include_dashboard=False)
    weights_ref = ray.put(torch.load(weights_path, weights_only=True))  # once, for all workers
    policy = make_policy()
    collector = Collector(
        functools.partial(make_env_from_object_store, weights_ref, num_envs),
        policy,
        backend="ray",
        num_collectors=2,
        frames_per_batch=frames // 2,
        total_frames=frames,
        backend_options={"remote_configs": {"num_cpus": 1, "memory": 1024**3}},
    )
    collector.update_policy_weights_(policy)  # send the current policy to every worker
    for batch in collector:
        pass  # train on `batch`; then collector.update_policy_weights_(policy)
    collector.shutdown()
    ray.shutdown()
    print(f"Ray Collector         last batch {tuple(batch.batch_size)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS[:-1])
    parser.add_argument("--ray", action="store_true", help="also collect through a Ray cluster")
    parser.add_argument("--ray-address", default=None, help="an existing cluster; default: start a local one")
    args = parser.parse_args(argv)
    paths = set(args.paths) | ({"ray"} if args.ray else set())
    torch.set_num_threads(1)
    num_envs, frames = BUDGETS[args.budget]
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "world_model.pt")
        torch.save(PointMassWorldModel(seed=0).state_dict(), weights_path)  # your trained checkpoint
        if "parallel-env" in paths:
            torchrl_parallel_env(weights_path, num_envs, frames)
        if "collectors" in paths:
            torchrl_multi_collectors(weights_path, num_envs, frames)
        if "async-vector-env" in paths:
            gymnasium_async_vector_env(weights_path, frames)
        if "subproc-vec-env" in paths:
            sb3_subproc_vec_env(weights_path, frames)
        if "ray" in paths:
            ray_collector(weights_path, num_envs, frames, args.ray_address)


if __name__ == "__main__":
    main()
