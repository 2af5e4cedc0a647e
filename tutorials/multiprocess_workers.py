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
mutable model state is shared between processes. The model and adapters they use come from
``point_mass.py``, which every worker imports: local worker processes inherit this script's
``sys.path`` (its folder included), and Ray workers get the file shipped with the job.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile

import gymnasium as gym
import torch
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

# the stand-in for your trained world model, its adapters and spaces (tutorials/point_mass.py)
from point_mass import ACTION_SPACE, VECTOR_SPACE, PointMassWorldModel, reset_vector, transition_vector

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
        observation_space=VECTOR_SPACE,
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
        observation_space=VECTOR_SPACE,
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
        observation_space=VECTOR_SPACE,
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


def ray_worker_collector_class():
    """The collector class each Ray actor runs: TorchRL's ``Collector`` with a one-line repr.
    Ray labels an actor's log lines with the actor's repr, and ``Collector``'s spans a dozen
    lines (env, policy, output), which Ray would print in full for every actor."""
    from torchrl.collectors import Collector

    class RayWorkerCollector(Collector):
        def __repr__(self) -> str:
            return "RayWorkerCollector()"

    return RayWorkerCollector


def ray_collector(weights_path: str, num_envs: int, frames: int, address) -> None:
    import ray
    from torchrl.collectors import Collector

    import point_mass

    # The factory below is pickled by value (it lives in this script), but what it takes from
    # point_mass is pickled by reference: ship point_mass.py with the job, so every node has it.
    ray.init(
        address=address, num_cpus=None if address else 2, include_dashboard=False,
        runtime_env={"py_modules": [point_mass]},
    )
    weights_ref = ray.put(torch.load(weights_path, weights_only=True))  # once, for all workers
    policy = make_policy()
    collector = Collector(
        functools.partial(make_env_from_object_store, weights_ref, num_envs),
        policy,
        backend="ray",
        num_collectors=2,
        frames_per_batch=frames // 2,
        total_frames=frames,
        backend_options={
            "remote_configs": {"num_cpus": 1, "memory": 1024**3},
            "collector_class": ray_worker_collector_class(),  # one-line actor names in Ray's logs
            # a feed-forward policy needs no InitTracker: say so, and the workers do not warn
            "collector_kwargs": {"auto_register_policy_transforms": False},
        },
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
