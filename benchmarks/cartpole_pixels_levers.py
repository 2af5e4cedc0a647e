"""Policy-side levers for the cartpole-pixels demo: SB3 PPO on the latent features of the bundled
pixel world model (imagination only), then the greedy policy in the real ``CartPole-v1`` from
pixels (render -> preprocess -> posterior update -> policy, each step; 20 episodes, seeds
``seed + 20000 + i``, as ``cartpole_pixels_ppo.py`` scores it). One JSON line per run, also
appended to ``--out``. The bundled weights are never changed.

Levers: ``--envs``/``--n-steps``/``--steps`` (batch and budget), ``--threshold`` (thresholded
instead of drawn terminations), ``--reward continue`` (reward = P(continue)) or
``head_x_continue``, ``--deter-only`` (the policy sees the GRU state only), ``--noise`` (Gaussian
noise on the policy's features in training), ``--no-sample`` (prior mean instead of samples),
``--reencode`` (each imagined step decodes the prior's frame and takes its posterior, so the
imagined latents are posteriors, as in the real check), ``--real-starts N`` (the imagined starts
are the posterior latents at every step of N real episodes, rendered and filtered, instead of
the bundled bank of reset frames; the episodes' actions are random with probability
``--real-starts-eps``, else a PD controller on the true state), ``--ent``, ``--gamma``, ``--lr``.

    python benchmarks/cartpole_pixels_levers.py --envs 64 --n-steps 64 --steps 400000 --tag big
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def shaped(venv, reward: str, obs_slice, noise: float, seed: int):
    """``venv`` with the reward replaced (``"continue"``: P(continue); ``"head_x_continue"``: the
    reward head times it), the observation cut to its first ``obs_slice`` entries and Gaussian
    ``noise`` added to it (training only)."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import VecEnvWrapper

    rng = np.random.default_rng(seed)

    class Shape(VecEnvWrapper):
        def __init__(self):
            space = venv.observation_space
            if obs_slice is not None:
                space = gym.spaces.Box(-np.inf, np.inf, (obs_slice,), np.float32)
            super().__init__(venv, observation_space=space)

        def _o(self, o):
            o = o if obs_slice is None else o[..., :obs_slice]
            return o + noise * rng.standard_normal(o.shape).astype(np.float32) if noise else o

        def reset(self):
            return self._o(self.venv.reset())

        def step_wait(self):
            o, r, d, infos = self.venv.step_wait()
            if reward != "head":
                p = np.array([i["continue_prob"] for i in infos], dtype=np.float32)
                r = p if reward == "continue" else r * p
            if obs_slice is not None:
                for i in infos:
                    if "terminal_observation" in i:
                        i["terminal_observation"] = i["terminal_observation"][:obs_slice]
            return self._o(o), r, d, infos

    return Shape()


def reencoding(model):
    """``model`` whose ``imagine`` decodes the prior's frame and returns the posterior of it."""
    from torchwm_rl.zoo.cartpole_pixels import PixelRSSM

    class Reencode(PixelRSSM):
        def imagine(self, latent, action, generator=None):
            prior = PixelRSSM.imagine(self, latent, action, generator)
            return self.observe(latent, action, self.decode(prior))

    model.__class__ = Reencode
    return model


def real_start_latents(model, episodes: int, eps: float, seed: int):
    """The posterior latents at every step of ``episodes`` real ``CartPole-v1`` episodes (resets
    ``50_000 + i``), filtered by :func:`torchwm_rl.pixel_reality.filter_episode` as in the real
    check; the latent of each episode's last frame (the pole down, or the time limit) is left out.
    Actions: random with probability ``eps`` (a generator seeded from ``seed``), else a PD
    controller on the true state."""
    from torchwm_rl.pixel_reality import filter_episode
    from torchwm_rl.zoo.cartpole_pixels import render_frames_headless

    render_frames_headless()
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    rng = np.random.default_rng(seed + 777)

    def behaviour(features):
        _, x_dot, theta, theta_dot = env.unwrapped.state
        return int(rng.integers(2)) if rng.random() < eps else int(theta + 0.5 * theta_dot + 0.05 * x_dot > 0)

    latents = [filter_episode(model, behaviour, env, seed=50_000 + ep).latents[:-1] for ep in range(episodes)]
    env.close()
    return torch.cat(latents)


def main() -> None:
    from cartpole_pixels_ppo import real_returns
    from stable_baselines3 import PPO

    from torchwm_rl import zoo

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150_000)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--reward", default="head", choices=["head", "continue", "head_x_continue"])
    p.add_argument("--deter-only", action="store_true")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument("--n-steps", type=int, default=256)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ent", type=float, default=0.0)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--reencode", action="store_true")
    p.add_argument("--real-starts", type=int, default=0, metavar="N",
                   help="imagined starts from the posterior latents along N real episodes (0: the bundled bank)")
    p.add_argument("--real-starts-eps", type=float, default=1.0)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default="cartpole_pixels_levers.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = zoo.load("cartpole-pixels")
    if a.reencode:
        model = reencoding(model)
    opts = {} if a.threshold is None else {"continue_threshold": a.threshold}
    if a.real_starts:
        opts["start_latents"] = real_start_latents(model, a.real_starts, a.real_starts_eps, a.seed)
    vec = zoo.make_env("cartpole-pixels", model=model, batch_size=a.envs, seed=a.seed, sample=not a.no_sample,
                       **opts).to_sb3()
    sl = model.deter_size if a.deter_only else None
    vec = shaped(vec, a.reward, sl, a.noise, a.seed)
    ppo = PPO("MlpPolicy", vec, n_steps=a.n_steps, batch_size=a.batch, n_epochs=a.epochs, gamma=a.gamma,
              gae_lambda=0.95, learning_rate=a.lr, ent_coef=a.ent, seed=a.seed, verbose=0, device="cpu")
    ppo.learn(a.steps)
    t_train = time.perf_counter() - t0

    def policy(obs):
        return int(ppo.predict(obs if sl is None else obs[:sl], deterministic=True)[0])

    model = zoo.load("cartpole-pixels")  # the real check filters with the bundled model as it is
    real, ends = real_returns(model, policy, a.episodes, seed=a.seed + 20_000)
    res = dict(vars(a), train_seconds=round(t_train, 1), real_mean_return=float(np.mean(real)),
               real_median=float(np.median(real)), real_returns=real, ends={k: ends.count(k) for k in set(ends)},
               wall=round(time.perf_counter() - t0, 1))
    print(json.dumps(res), flush=True)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
