"""Stable-Baselines3 PPO on imagined rollouts, through ``WorldModelEnv.to_sb3()``.

One batched ``WorldModelEnv`` (N imagined envs, ONE model call per step) is exported as an SB3
``VecEnv`` and trained with PPO four times: vector observations (``MlpPolicy``), Dict
observations (``MultiInputPolicy``), channel-first uint8 images (``CnnPolicy``) and, through
``action_transform_fn``, a ``Discrete`` action space over a model that takes 2-D pushes.

    python tutorials/sb3_ppo.py                 # full budget (a few minutes on a laptop CPU)
    python tutorials/sb3_ppo.py --budget tiny   # smoke run (seconds; used by the test suite)

The world model below is a small ``torch.nn.Module`` standing in for your trained one: replace
``PointMassWorldModel`` with your checkpoint and keep the adapter functions.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from torchwm_rl import WorldModelEnv


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


def reset_dict(model, seed=None, options=None):
    state = model.sample_initial_state(seed, batch_of(options))
    return {"state": state, "observation": model.decode_dict(state)}


def transition_dict(model, state, action):
    out = transition_vector(model, state, action)
    out["observation"] = model.decode_dict(out["state"])
    return out


def reset_image(model, seed=None, options=None):
    state = model.sample_initial_state(seed, batch_of(options))
    return {"state": state, "observation": model.decode_image(state)}


def transition_image(model, state, action):
    out = transition_vector(model, state, action)
    out["observation"] = model.decode_image(out["state"])
    return out


DIRECTIONS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def discrete_to_push(model, action):
    """Library action (an index in Discrete(5), batched) -> the model's action (a 2-D push)."""
    return DIRECTIONS[action.long()]


ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
VECTOR_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
DICT_SPACE = gym.spaces.Dict(
    {
        "position": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        "velocity": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
    }
)
IMAGE_SPACE = gym.spaces.Box(0, 255, shape=(3, 36, 36), dtype=np.uint8)

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


def train(kind: str, budget: str, seed: int = 0) -> tuple[float, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    policy, _ = SETUPS[kind]
    num_envs, n_steps, total_timesteps, episodes = BUDGETS[budget]
    env = make_env(kind, num_envs, seed)
    venv = VecMonitor(env.to_sb3())  # VecMonitor: episode returns in the logs, as Monitor does
    model = PPO(policy, venv, n_steps=n_steps, batch_size=n_steps * num_envs // 4, seed=seed, verbose=0)
    before = mean_return(model, venv, episodes)
    model.learn(total_timesteps=total_timesteps)
    after = mean_return(model, venv, episodes)
    return before, after


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--kinds", nargs="+", choices=sorted(SETUPS), default=list(SETUPS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for kind in args.kinds:
        check(kind)
        before, after = train(kind, args.budget, args.seed)
        print(f"{kind:8s} {SETUPS[kind][0]:16s} mean return before {before:8.2f} after {after:8.2f}")


if __name__ == "__main__":
    main()
