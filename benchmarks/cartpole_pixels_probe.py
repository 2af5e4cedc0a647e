"""Does the cartpole-pixels posterior latent carry enough of the state to balance? A diagnostic.

Fits a least-squares linear probe (posterior features -> real state) on real episodes, then runs
a fixed linear balancing controller on the PROBE's state estimate in the real ``CartPole-v1``,
each step from the rendered frame (render -> preprocess -> posterior update -> probe ->
controller). The same controller on the true state scores 500; what it scores on the estimate
says how much the filter loses, apart from the model's imagined dynamics.

    python benchmarks/cartpole_pixels_probe.py --episodes 20
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

GAINS = np.array([0.5, 1.0, 15.0, 2.5])  # a balancing linear controller: push right when gains @ state > 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--probe-frames", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    import gymnasium as gym

    from torchwm_rl import zoo
    from torchwm_rl.zoo import cartpole_pixels_train as T
    from torchwm_rl.zoo.cartpole_pixels import preprocess, render_frames_headless

    model = zoo.load("cartpole-pixels")
    feats, states = [], []
    with torch.no_grad():
        for ep in T.collect_episodes(args.probe_frames, args.seed + 555):
            z = model.observe(model.initial_latent(1), None, ep["frames"][None, 0])
            feats.append(model.features(z))
            for t in range(1, len(ep["frames"])):
                z = model.observe(z, ep["actions"][None, t - 1], ep["frames"][None, t])
                feats.append(model.features(z))
            states.append(ep["states"])
    design = torch.cat([torch.cat(feats), torch.ones(len(torch.cat(feats)), 1)], 1).double()
    coef = torch.linalg.lstsq(design, torch.cat(states).double()).solution

    render_frames_headless()
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    returns, ends, errors = [], [], []
    for ep in range(args.episodes):
        env.reset(seed=args.seed + 30_000 + ep)
        with torch.no_grad():
            z = model.observe(model.initial_latent(1), None, preprocess(torch.from_numpy(env.render()))[None])
        total, done = 0.0, False
        while not done:
            est = (torch.cat([model.features(z), torch.ones(1, 1)], 1).double() @ coef)[0].numpy()
            errors.append(est - np.asarray(env.unwrapped.state))
            action = int(GAINS @ est > 0)
            _, r, term, trunc, _ = env.step(action)
            total += r
            done = term or trunc
            if done:
                x = env.unwrapped.state[0]
                ends.append("x" if term and abs(x) > 2.4 else "theta" if term else "time")
            with torch.no_grad():
                z = model.observe(z, torch.tensor([action]), preprocess(torch.from_numpy(env.render()))[None])
        returns.append(total)
    rmse = np.sqrt(np.mean(np.square(errors), 0))
    print(json.dumps({"mean_return": float(np.mean(returns)), "returns": returns, "ends": ends,
                      "probe_rmse_in_closed_loop": dict(zip(("x", "x_dot", "theta", "theta_dot"), rmse.tolist()))}))


if __name__ == "__main__":
    main()
