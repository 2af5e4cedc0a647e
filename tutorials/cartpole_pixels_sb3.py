"""Stable-Baselines3 PPO inside the cartpole-pixels world model, then the real CartPole from pixels.

Two ways, both through the SB3 export (``zoo.make_env("cartpole-pixels", ...).to_sb3()``), both
trained in imagination only (starts: the model's bank of posterior latents of real reset frames):

* ``--mode latent``: ``MlpPolicy`` on the latent features ``cat(deter, stoch)`` (144 floats, the
  env's default observation);
* ``--mode pixels``: ``CnnPolicy`` on the decoded frames (``observation="pixels"``: uint8
  ``1 x 32 x 120``, channel-first as SB3 expects). SB3's default ``NatureCNN`` does not fit a
  32-row image (its 8x8/4, 4x4/2, 3x3/1 convs leave 7 -> 2 -> 0 rows: a shape error), so the
  policy gets :class:`SmallCNN` through ``policy_kwargs``. One frame shows where the pole is,
  not where it is going, so the policy sees the last ``STACK`` frames (SB3's ``VecFrameStack``;
  the reality check stacks with SB3's own ``StackedObservations``, the same way).

The reality check (20 real episodes): each real step renders the frame, preprocesses it and
updates the posterior latent (``model.observe``, the encoder's filter). The latent policy acts on
its features; the pixel policy acts on the decoded frame of that posterior latent
(``--eval-frame decoded``, the default: the images it was trained on are decoder outputs, and the
encoder stays the one way reality reaches the policy) or on the preprocessed real frame itself
(``--eval-frame real``: no model at all between the camera and the policy).

    python tutorials/cartpole_pixels_sb3.py --mode latent         # MlpPolicy (minutes on 1 CPU core)
    python tutorials/cartpole_pixels_sb3.py --mode pixels         # CnnPolicy (longer: a CNN per step)
    python tutorials/cartpole_pixels_sb3.py --budget tiny --mode latent pixels   # smoke run (the tests)
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor
from stable_baselines3.common.vec_env.stacked_observations import StackedObservations
from torch import nn

from torchwm_rl import zoo

# the reality check from pixels (tutorials/cartpole_pixels_common.py)
from cartpole_pixels_common import real_returns

STACK = 4  # frames the pixel policy sees (channel-first: 4 x 32 x 120)

BUDGETS = {  # name -> mode -> PPO sizes
    "tiny": {mode: dict(envs=4, n_steps=32, batch_size=64, epochs=1, steps=128, eval_episodes=1)
             for mode in ("latent", "pixels")},
    "full": {"latent": dict(envs=16, n_steps=256, batch_size=1024, epochs=10, steps=150_000, eval_episodes=20),
             "pixels": dict(envs=16, n_steps=128, batch_size=512, epochs=4, steps=100_000, eval_episodes=20)},
}


class SmallCNN(BaseFeaturesExtractor):
    """Features for ``1 x 32 x 120`` frames: three 4x4 stride-2 convs (32 x 120 -> 4 x 15) and a
    linear layer. SB3 scales uint8 images to [0, 1] before this (``normalize_images=True``)."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 256):
        super().__init__(observation_space, features_dim)
        c, h, w = observation_space.shape
        self.cnn = nn.Sequential(
            nn.Conv2d(c, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(32 * (h // 8) * (w // 8), features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


def train(mode: str, budget: str, seed: int, eval_frame: str = "decoded", steps: int | None = None) -> dict:
    b = dict(BUDGETS[budget][mode], **({} if steps is None else {"steps": steps}))
    t0 = time.perf_counter()
    model = zoo.load("cartpole-pixels")
    observation = {"latent": "latent", "pixels": "pixels"}[mode]
    vec = VecMonitor(zoo.make_env("cartpole-pixels", model=model, batch_size=b["envs"], seed=seed,
                                  observation=observation).to_sb3())
    if mode == "pixels":
        vec = VecFrameStack(vec, STACK, channels_order="first")
    common = dict(n_steps=b["n_steps"], batch_size=b["batch_size"], n_epochs=b["epochs"], gamma=0.99, gae_lambda=0.95,
                  learning_rate=3e-4, seed=seed, verbose=0, device="cpu")
    if mode == "latent":
        ppo = PPO("MlpPolicy", vec, ent_coef=0.0, **common)
    else:
        ppo = PPO("CnnPolicy", vec, ent_coef=0.01, clip_range=0.2,
                  policy_kwargs=dict(features_extractor_class=SmallCNN, net_arch=[128]), **common)
    ppo.learn(b["steps"], progress_bar=False)
    imagined = [ep["r"] for ep in ppo.ep_info_buffer]
    train_seconds = time.perf_counter() - t0
    print(f"  {mode}: {b['steps']} imagined steps in {train_seconds:.0f} s, imagined ep_rew_mean "
          f"{np.mean(imagined) if imagined else float('nan'):.1f}", flush=True)

    # the pixel policy's frame stack in the real env: SB3's own, as VecFrameStack keeps it
    stack = StackedObservations(1, STACK, gym.spaces.Box(0, 255, model.image_shape, np.uint8), "first")
    fresh = [True]  # the next frame starts an episode: the stack restarts (zeros, then the frame)

    def new_episode():
        fresh[0] = True

    def act(latent, frame):
        if mode == "latent":
            return int(ppo.predict(model.features(latent)[0].numpy(), deterministic=True)[0])
        # the decoded frame of the posterior latent, or the real frame itself
        image = (model.decode(latent) if eval_frame == "decoded" else frame).numpy()
        if fresh[0]:
            obs, fresh[0] = stack.reset(image), False
        else:
            obs, _ = stack.update(image, np.zeros(1, dtype=bool), [{}])
        return int(ppo.predict(obs[0], deterministic=True)[0])

    real, ends = real_returns(model, act, b["eval_episodes"], seed=seed + 20_000, new_episode=new_episode)
    return {"tutorial": "cartpole_pixels_sb3", "mode": mode, "eval_frame": eval_frame if mode == "pixels" else None,
            "budget": budget, "seed": seed, "steps": b["steps"], "train_seconds": round(train_seconds, 1),
            "imagined_mean_return": float(np.mean(imagined)) if imagined else None,
            "real_mean_return": float(np.mean(real)), "real_returns": real, "real_ends": ends,
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--mode", nargs="+", choices=["latent", "pixels"], default=["latent"])
    parser.add_argument("--eval-frame", choices=["decoded", "real"], default="decoded",
                        help="what the pixel policy sees in the real env (see the module docs)")
    parser.add_argument("--steps", type=int, default=None, help="imagined PPO steps (default: the budget's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for mode in args.mode:
        result = train(mode, args.budget, args.seed, args.eval_frame, args.steps)
        print(f"{mode}: real return from pixels over {len(result['real_returns'])} episodes "
              f"{result['real_mean_return']:.1f}")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
