"""Does the cartpole-pixels posterior latent carry enough of the state to balance, and does the
imagination agree? A diagnostic, not a test.

1. Fits a probe (posterior features -> real state) on real episodes: ``--probe linear``
   (least squares) or ``--probe mlp`` (two hidden layers of 256, ELU, fit with Adam on the
   standardised state).
2. **Real:** runs a fixed linear balancing controller on the PROBE's state estimate in the real
   ``CartPole-v1``, each step from the rendered frame (render -> preprocess -> posterior update ->
   probe -> controller). The same controller on the true state scores 500; what it scores on the
   estimate says how much the filter loses, apart from the model's imagined dynamics.
3. **Imagined** (``--imagined``): the same controller on the same probe, inside
   ``zoo.make_env("cartpole-pixels", sample=False)`` (the demo's imagination: prior mean), 64
   envs, once with ``terminated`` drawn from the continue head (the env's default) and once
   thresholded (``continue_threshold=0.5``). A policy that balances in reality but not in
   imagination says the imagination, not the latent, is what a policy trained there learns.

    python benchmarks/cartpole_pixels_probe.py --probe mlp --imagined --episodes 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

GAINS = np.array([0.5, 1.0, 15.0, 2.5])  # a balancing linear controller: push right when gains @ state > 0
STATE_NAMES = ("x", "x_dot", "theta", "theta_dot")


def probe_data(model, frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior features and real states along the training collector's episodes (seed ``seed + 555``)."""
    from torchwm_rl.zoo import cartpole_pixels_train as T

    feats, states = [], []
    with torch.no_grad():
        for ep in T.collect_episodes(frames, seed + 555):
            z = model.observe(model.initial_latent(1), None, ep["frames"][None, 0])
            feats.append(model.features(z))
            for t in range(1, len(ep["frames"])):
                z = model.observe(z, ep["actions"][None, t - 1], ep["frames"][None, t])
                feats.append(model.features(z))
            states.append(ep["states"])
    return torch.cat(feats), torch.cat(states)


def fit_probe(kind: str, feats: torch.Tensor, states: torch.Tensor, seed: int, steps: int = 6000):
    """``features [B, F] -> state estimate [B, 4]`` (float32 tensors)."""
    if kind == "linear":
        design = torch.cat([feats, torch.ones(len(feats), 1)], 1).double()
        coef = torch.linalg.lstsq(design, states.double()).solution
        return lambda f: (torch.cat([f, torch.ones(len(f), 1)], 1).double() @ coef).float()
    torch.manual_seed(seed)
    mu, sd = states.mean(0), states.std(0)
    net = torch.nn.Sequential(torch.nn.Linear(feats.shape[1], 256), torch.nn.ELU(), torch.nn.Linear(256, 256),
                              torch.nn.ELU(), torch.nn.Linear(256, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(feats), (256,), generator=g)
        loss = ((net(feats[idx]) - (states[idx] - mu) / sd) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.requires_grad_(False)
    return lambda f: net(f) * sd + mu


def real_run(model, estimate, episodes: int, seed: int) -> dict:
    """The controller on the probe's estimate in the real env, each step from the rendered frame
    (:func:`torchwm_rl.pixel_reality.filter_episode`, the real check's own filter loop)."""
    import gymnasium as gym

    from torchwm_rl.pixel_reality import filter_episode
    from torchwm_rl.zoo.cartpole_pixels import render_frames_headless

    render_frames_headless()
    env = gym.make("CartPole-v1", render_mode="rgb_array")

    def controller(features):
        return int(GAINS @ estimate(features)[0].double().numpy() > 0)

    returns, ends, errors = [], [], []
    for ep in range(episodes):
        run = filter_episode(model, controller, env, seed=seed + 30_000 + ep)
        with torch.no_grad():  # the estimate the controller acted on at each step, against the true state
            errors.append(estimate(model.features(run.latents[:-1])).double().numpy() - run.states[:-1])
        returns.append(run.ret)
        x = run.states[-1][0]
        ends.append("x" if run.terminated and abs(x) > 2.4 else "theta" if run.terminated else "time")
    env.close()
    rmse = np.sqrt(np.mean(np.square(np.concatenate(errors)), 0))
    return {"mean_return": float(np.mean(returns)), "returns": returns, "ends": ends,
            "probe_rmse_in_closed_loop": dict(zip(STATE_NAMES, rmse.round(4).tolist()))}


def imagined_episodes(model, act, envs: int, seed: int, **options) -> tuple[float, list]:
    """``act`` (observations ``[envs, F]`` -> actions ``[envs]``) in ``envs`` imagined episodes
    of at most 500 steps (``zoo.make_env("cartpole-pixels", **options)``): the mean return and,
    per ended episode, ``(step, index, next observation, continue_prob)``."""
    from torchwm_rl import zoo

    env = zoo.make_env("cartpole-pixels", model=model, batch_size=envs, seed=seed, **options)
    ret = torch.zeros(envs)
    alive = torch.ones(envs, dtype=torch.bool)
    ended = []
    with torch.no_grad():
        td = env.reset()
        for t in range(500):
            td["action"] = act(td["observation"])
            td = env.step(td)
            ret += td["next", "reward"].squeeze(-1) * alive
            stop = td["next", "done"].squeeze(-1) & alive
            ended += [(t + 1, i, td["next", "observation"][i], float(td["next", "continue_prob"][i]))
                      for i in stop.nonzero().flatten().tolist()]
            alive &= ~stop
            if not alive.any():
                break
            td = td["next"].exclude("reward", "done", "terminated", "truncated")
    return float(ret.mean()), ended


def imagined_run(model, estimate, envs: int, seed: int, threshold) -> dict:
    """The controller on the probe's estimate of the imagined latent, ``envs`` imagined episodes
    (the prior's mean); where each ended (step, the probe's x and theta, P(continue) there)."""
    options = {"sample": False} if threshold is None else {"sample": False, "continue_threshold": threshold}
    gains = torch.tensor(GAINS, dtype=torch.float32)
    mean, ended = imagined_episodes(model, lambda obs: (estimate(obs) @ gains > 0).long(), envs, seed, **options)
    with torch.no_grad():
        ended = [(t, round(float(e[0]), 2), round(float(e[2]), 3), round(p, 4))
                 for t, _, obs, p in ended for e in estimate(obs[None])]
    safe = [e for e in ended if e[0] < 500 and abs(e[1]) < 2.0 and abs(e[2]) < 0.15]
    return {"terminations": "drawn" if threshold is None else f"continue_prob < {threshold}",
            "mean_return": mean, "ended_before_500": sum(e[0] < 500 for e in ended),
            "ended_far_from_the_limits": len(safe), "first_ends": ended[:8]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--probe-frames", type=int, default=8000)
    p.add_argument("--probe", choices=["linear", "mlp"], default="linear")
    p.add_argument("--imagined", action="store_true", help="also run the controller in imagination (64 envs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    from torchwm_rl import zoo

    model = zoo.load("cartpole-pixels")
    feats, states = probe_data(model, args.probe_frames, args.seed)
    estimate = fit_probe(args.probe, feats, states, args.seed)
    out = {"probe": args.probe, "probe_frames": len(feats), "real": real_run(model, estimate, args.episodes, args.seed)}
    if args.imagined:
        out["imagined"] = [imagined_run(model, estimate, 64, args.seed, threshold) for threshold in (None, 0.5)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
