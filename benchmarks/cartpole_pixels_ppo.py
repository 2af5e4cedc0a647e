"""SB3 PPO on the latent features of the cartpole-pixels world model, then a reality check from pixels.

The policy trains only in imagination (``zoo.make_env("cartpole-pixels").to_sb3()``). The reality
check runs it in the real ``CartPole-v1``: each real step renders the frame, preprocesses it,
updates the posterior latent (``model.observe``) and acts greedily on the latent's features.

    python benchmarks/cartpole_pixels_ppo.py --steps 200000 --envs 16 --seed 0 --episodes 20
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def real_returns(model, policy, episodes: int, seed: int) -> tuple[list[float], list[str]]:
    """Greedy real returns of ``policy`` (obs features -> action) acting on posterior latents, and
    how each episode ended (``"x"``: the cart left the track, ``"theta"``: the pole fell, ``"time"``)."""
    from torchwm_rl.zoo.cartpole_pixels import preprocess, render_frames_headless

    render_frames_headless()
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    out, ends = [], []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        with torch.no_grad():
            latent = model.observe(model.initial_latent(1), None, preprocess(torch.from_numpy(env.render()))[None])
        total, done = 0.0, False
        while not done:
            action = policy(model.features(latent)[0].numpy())
            _, r, term, trunc, _ = env.step(action)
            total += r
            done = term or trunc
            if done:
                x, _, theta, _ = env.unwrapped.state
                ends.append("x" if term and abs(x) > 2.4 else "theta" if term else "time")
            with torch.no_grad():
                frame = preprocess(torch.from_numpy(env.render()))[None]
                latent = model.observe(latent, torch.tensor([action]), frame)
        out.append(total)
    env.close()
    return out, ends


def imagined_returns(env, policy, episodes: int) -> list[float]:
    """Greedy returns in the imagined (TorchRL) env, ``episodes`` rows at once."""
    out = []
    td = env.reset()
    total = torch.zeros(episodes)
    alive = torch.ones(episodes, dtype=torch.bool)
    for _ in range(env.logic.max_steps.max().item() if env.logic.max_steps is not None else 500):
        td["action"] = torch.as_tensor(np.stack([policy(o) for o in td["observation"].numpy()]))
        nxt = env.step(td)["next"]
        total += nxt["reward"][:, 0] * alive
        alive &= ~nxt["done"][:, 0]
        td = nxt
        if not alive.any():
            break
    out = total.tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=None, help="write the PPO policy here (SB3 zip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from stable_baselines3 import PPO

    from torchwm_rl import zoo

    t0 = time.perf_counter()
    model = zoo.load("cartpole-pixels")
    vec = zoo.make_env("cartpole-pixels", model=model, batch_size=args.envs, seed=args.seed).to_sb3()
    ppo = PPO("MlpPolicy", vec, n_steps=256, batch_size=1024, n_epochs=10, gamma=0.99, gae_lambda=0.95,
              learning_rate=3e-4, ent_coef=0.0, seed=args.seed, verbose=0, device="cpu")
    ppo.learn(args.steps)
    t_train = time.perf_counter() - t0
    if args.save:
        ppo.save(args.save)

    def policy(obs):
        return int(ppo.predict(obs, deterministic=True)[0])

    imagined = imagined_returns(zoo.make_env("cartpole-pixels", model=model, batch_size=args.episodes,
                                             seed=args.seed + 10_000), policy, args.episodes)
    real, ends = real_returns(model, policy, args.episodes, seed=args.seed + 20_000)
    result = {"steps": args.steps, "seed": args.seed, "train_seconds": round(t_train, 1),
              "imagined_mean_return": float(np.mean(imagined)), "real_mean_return": float(np.mean(real)),
              "real_returns": real, "real_ends": ends, "wall_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
