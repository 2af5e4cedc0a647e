"""Stable-Baselines3 PPO on imagined rollouts, through ``WorldModelEnv.to_sb3()``.

One batched ``WorldModelEnv`` (N imagined envs, ONE model call per step) is exported as an SB3
``VecEnv`` and trained with PPO four times: vector observations (``MlpPolicy``), Dict
observations (``MultiInputPolicy``), channel-first uint8 images (``CnnPolicy``) and, through
``action_transform_fn``, a ``Discrete`` action space over a model that takes 2-D pushes.

    python tutorials/sb3_ppo.py                  # vector, dict, discrete (timings: tutorials/README.md)
    python tutorials/sb3_ppo.py --kinds image    # CnnPolicy on uint8 images (2 to 3 min on 2 CPU cores)
    python tutorials/sb3_ppo.py --budget tiny    # all four, smoke run (seconds; used by the tests)

Each run prints a progress line about every 10% of its steps, with SB3's ``ep_rew_mean``
(episode returns collected by ``VecMonitor``).

The world model and its adapter functions come from ``point_mass.py`` next to this script: a
small ``torch.nn.Module`` standing in for your trained one. Replace ``PointMassWorldModel``
with your checkpoint and keep the adapter functions.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from torchwm_rl import WorldModelEnv

# the stand-in for your trained world model, its adapters and spaces (tutorials/point_mass.py)
from point_mass import (
    ACTION_SPACE, DICT_SPACE, IMAGE_SPACE, VECTOR_SPACE, PointMassWorldModel,
    reset_dict, reset_image, reset_vector, transition_dict, transition_image, transition_vector,
)


# ---------------------------------------------------------------------------- action format
DIRECTIONS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def discrete_to_push(model, action):
    """Library action (an index in Discrete(5), batched) -> the model's action (a 2-D push).
    The transform gets the action as the library gives it (here SB3's numpy array)."""
    return DIRECTIONS[torch.as_tensor(action).long()]


SETUPS = {  # kind -> SB3 policy and the env's keyword arguments
    "vector": ("MlpPolicy", dict(observation_space=VECTOR_SPACE, action_space=ACTION_SPACE,
                                 reset_fn=reset_vector, transition_fn=transition_vector)),
    "dict": ("MultiInputPolicy", dict(observation_space=DICT_SPACE, action_space=ACTION_SPACE,
                                      reset_fn=reset_dict, transition_fn=transition_dict)),
    "image": ("CnnPolicy", dict(observation_space=IMAGE_SPACE, action_space=ACTION_SPACE,
                                reset_fn=reset_image, transition_fn=transition_image)),
    "discrete": ("MlpPolicy", dict(observation_space=VECTOR_SPACE, action_space=gym.spaces.Discrete(5),
                                   reset_fn=reset_vector, transition_fn=transition_vector,
                                   action_transform_fn=discrete_to_push)),
}

BUDGETS = {  # name -> (num_envs, PPO n_steps, total_timesteps, evaluation episodes)
    "tiny": (8, 16, 256, 4),
    "full": (32, 64, 100_000, 32),
}


def make_env(kind: str, num_envs: int, seed: int) -> WorldModelEnv:
    _, env_kwargs = SETUPS[kind]
    return WorldModelEnv(
        PointMassWorldModel(seed=0),
        **env_kwargs,
        max_episode_steps=50,
        batch_size=(num_envs,),
        seed=seed,
    )


def check(kind: str) -> None:
    """SB3's own checker, on the unbatched Gymnasium export of the same model and adapters."""
    from stable_baselines3.common.env_checker import check_env

    _, env_kwargs = SETUPS[kind]
    env = WorldModelEnv(PointMassWorldModel(seed=0), **env_kwargs, max_episode_steps=50)
    check_env(env.to_gymnasium(), warn=True)


def mean_return(model, venv, episodes: int) -> float:
    """Mean return of ``episodes`` finished imagined episodes under the deterministic policy."""
    returns, running = [], np.zeros(venv.num_envs)
    obs = venv.reset()
    while len(returns) < episodes:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, done, _ = venv.step(action)
        running += reward
        for i in np.flatnonzero(done):
            returns.append(running[i])
            running[i] = 0.0
    return float(np.mean(returns[:episodes]))


def progress_callback(label: str, total_timesteps: int):
    """An SB3 callback printing one line about every 10% of the run: steps so far, SB3's
    ``ep_rew_mean`` (the last 100 episodes VecMonitor reported) and the seconds since the start."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0, self.next = time.perf_counter(), total_timesteps / 10

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            steps = self.model.num_timesteps
            if steps < self.next and steps < total_timesteps:
                return
            self.next += total_timesteps / 10
            episodes = self.model.ep_info_buffer
            mean = f"{np.mean([e['r'] for e in episodes]):7.2f}" if episodes else "    n/a"
            print(f"  {label}: {steps:7,d}/{total_timesteps:,} steps  ep_rew_mean {mean}  "
                  f"{time.perf_counter() - self.t0:5.0f} s", flush=True)

    return Progress()


def train(kind: str, budget: str, seed: int = 0) -> tuple[float, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    policy, _ = SETUPS[kind]
    num_envs, n_steps, total_timesteps, episodes = BUDGETS[budget]
    env = make_env(kind, num_envs, seed)
    venv = VecMonitor(env.to_sb3())  # VecMonitor: episode returns in the logs, as Monitor does
    model = PPO(policy, venv, n_steps=n_steps, batch_size=n_steps * num_envs // 4, seed=seed, verbose=0)
    before = mean_return(model, venv, episodes)
    model.learn(total_timesteps=total_timesteps, callback=progress_callback(kind, total_timesteps))
    after = mean_return(model, venv, episodes)
    return before, after


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--kinds", nargs="+", choices=sorted(SETUPS), default=["vector", "dict", "discrete"],
                        help="which setups to train (default: vector dict discrete; image takes 2 to 3 min on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for kind in args.kinds:
        check(kind)
        before, after = train(kind, args.budget, args.seed)
        print(f"{kind:8s} {SETUPS[kind][0]:16s} mean return before {before:8.2f} after {after:8.2f}")


if __name__ == "__main__":
    main()
