"""Data collection, fitting and evaluation of the ``cartpole-pixels`` RSSM (``train-model``).

Frames come only from Gymnasium ``CartPole-v1``'s ``rgb_array`` render (through
:func:`~torchwm_rl.zoo.cartpole_pixels.preprocess`). The real state is read for two things that
the model never sees: choosing the data-collection actions (a perturbed linear controller, so
long balanced trajectories and both termination modes are covered) and the evaluation probe.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .cartpole_pixels import DEFAULT_CONFIG, PixelRSSM, preprocess, render_frames_headless

# Episode mix of the collected data (fractions of the frame budget): random actions from the
# real reset (short falls), a perturbed controller from the real reset (long balanced runs that
# drift to the track edges), and controller/random episodes from scattered states (the edges).
_MIX = {"random": 0.25, "controller": 0.5, "scattered": 0.25}
_SCATTER_HIGH = np.array([2.0, 1.5, 0.15, 1.5])


def _real_env():
    render_frames_headless()
    import gymnasium as gym

    return gym.make("CartPole-v1", render_mode="rgb_array").unwrapped


def collect_episodes(n_frames: int, seed: int, max_steps: int = 500) -> list[dict]:
    """Real episodes: ``{"frames": uint8 [T+1, 1, 32, 120], "actions": [T], "states": [T+1, 4],
    "terminated": bool}`` (the last frame is a termination's when ``terminated``)."""
    rng = np.random.default_rng(seed)
    env = _real_env()
    env.reset(seed=seed)
    episodes, total = [], 0
    for kind, share in _MIX.items():
        budget = int(share * n_frames)
        used = 0
        while used < budget:
            env.reset(seed=int(rng.integers(2**31)))
            if kind == "scattered":
                env.state = rng.uniform(-_SCATTER_HIGH, _SCATTER_HIGH)
            controller = kind != "random" and (kind == "controller" or rng.random() < 0.5)
            gains = np.array([rng.uniform(-0.5, 1.0), rng.uniform(-0.5, 1.5), rng.uniform(5.0, 20.0),
                              rng.uniform(0.5, 4.0)])
            eps = rng.uniform(0.0, 0.4)
            states, frames, actions, terminated = [np.array(env.state)], [env.render()], [], False
            for _ in range(min(max_steps, budget - used)):
                state = np.asarray(env.state)
                a = int(gains @ state > 0) if controller and rng.random() > eps else int(rng.integers(2))
                _, _, terminated, _, _ = env.step(a)
                actions.append(a)
                states.append(np.array(env.state))
                frames.append(env.render())
                if terminated:
                    break
            used += len(frames)
            episodes.append({"frames": preprocess(torch.from_numpy(np.stack(frames))),
                             "actions": torch.tensor(actions, dtype=torch.long),
                             "states": torch.tensor(np.stack(states), dtype=torch.float32), "terminated": terminated})
        total += used
    env.close()
    return episodes


def _flatten(episodes: list[dict]) -> dict[str, torch.Tensor]:
    """One stream of frames with ``first`` flags, the previous action (-1 at a first frame) and
    the continue target (0 at a termination's frame)."""
    frames, prev, first, cont = [], [], [], []
    for ep in episodes:
        n = len(ep["frames"])
        frames.append(ep["frames"])
        prev.append(torch.cat([torch.tensor([-1]), ep["actions"]]))
        f = torch.zeros(n, dtype=torch.bool)
        f[0] = True
        first.append(f)
        c = torch.ones(n)
        if ep["terminated"]:
            c[-1] = 0.0
        cont.append(c)
    return {"frames": torch.cat(frames), "prev_action": torch.cat(prev), "first": torch.cat(first),
            "cont": torch.cat(cont)}


def _rollout_posterior(model: PixelRSSM, frames, prev_action, first, generator):
    """Posterior latents along ``[B, L]`` chunks (a first frame restarts from the initial latent);
    returns the stacked latents' features and the prior/posterior Gaussian stats."""
    batch, length = frames.shape[:2]
    embed = model.encode(frames)
    latent = model.initial_latent(batch)
    feats, priors, posts = [], [], []
    for t in range(length):
        reset = first[:, t, None] | (t == 0)
        latent = latent.apply(lambda v: torch.where(reset, torch.zeros_like(v), v))
        onehot = F.one_hot(prev_action[:, t].clamp(min=0), 2).float() * (~reset).float()
        deter = model.gru(model.img_in(torch.cat([latent["stoch"], onehot], -1)), latent["deter"])
        prior = model.prior_net(deter)
        post = model.post_net(torch.cat([deter, embed[:, t]], -1))
        mean, std = post.chunk(2, -1)
        std = F.softplus(std) + 0.1
        stoch = mean + std * torch.randn(mean.shape, generator=generator)
        latent = model._latent(deter, stoch)
        feats.append(torch.cat([deter, stoch], -1))
        priors.append(prior)
        posts.append(post)
    return torch.stack(feats, 1), torch.stack(priors, 1), torch.stack(posts, 1)


def _kl(post, prior) -> torch.Tensor:
    """KL(post || prior) of diagonal Gaussians given as raw stats ``[..., 2S]``; summed over S."""
    pm, ps = post.chunk(2, -1)
    qm, qs = prior.chunk(2, -1)
    ps, qs = F.softplus(ps) + 0.1, F.softplus(qs) + 0.1
    return (torch.log(qs / ps) + (ps**2 + (pm - qm) ** 2) / (2 * qs**2) - 0.5).sum(-1)


def fit(model: PixelRSSM, data: dict, steps: int, seed: int, batch: int = 16, length: int = 48, lr: float = 6e-4,
        free_nats: float = 1.0, kl_balance: float = 0.8, verbose: bool = False) -> list[float]:
    """Fit on random ``[batch, length]`` chunks of the stream: reconstruction (MSE, 0..1 scale,
    summed over pixels) + reward (MSE; 1 per step) + continue (BCE) + balanced KL with free nats."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-6)
    n = len(data["frames"])
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n - length, (batch, 1), generator=g) + torch.arange(length)
        frames, first = data["frames"][idx], data["first"][idx]
        feats, prior, post = _rollout_posterior(model, frames, data["prev_action"][idx], first, g)
        target = frames.float() / 255.0
        recon = ((model.decode_float(feats) - target) ** 2).sum((-3, -2, -1)).mean()
        not_first = (~first).float()
        reward = (((model.reward_head(feats)[..., 0] - 1.0) ** 2) * not_first).mean()
        cont = F.binary_cross_entropy_with_logits(model.continue_head(feats)[..., 0], data["cont"][idx])
        kl_post = _kl(post, prior.detach()).mean()
        kl_prior = _kl(post.detach(), prior).mean()
        kl = (1 - kl_balance) * kl_post.clamp(min=free_nats) + kl_balance * kl_prior.clamp(min=free_nats)
        loss = recon + reward + cont + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        losses.append(loss.item())
        if verbose and (step + 1) % 100 == 0:
            print(f"  step {step + 1:5d}/{steps}  loss {loss.item():8.2f}  recon {recon.item():7.2f}  "
                  f"kl {kl_prior.item():5.2f}  cont {cont.item():.4f}", flush=True)
    return losses


@torch.no_grad()
def evaluate(model: PixelRSSM, episodes: list[dict], horizons=(1, 5, 15, 50), context: int = 10) -> dict[str, Any]:
    """Held-out metrics: open-loop pixel MSE by horizon (0..1 scale, per pixel; posterior over
    ``context`` frames, then the prior on the real actions), a least-squares linear probe's R^2
    on the posterior features for each real state dim, and the continue head's accuracy on
    terminal and non-terminal frames."""
    feats, states, conts = [], [], []
    err = {h: [] for h in horizons}
    for ep in episodes:
        x, a = ep["frames"], ep["actions"]
        latent = model.observe(model.initial_latent(1), None, x[None, 0])
        seq = [latent]
        for t in range(1, len(x)):
            latent = model.observe(latent, a[None, t - 1], x[None, t])
            seq.append(latent)
        feats.append(torch.cat([model.features(z) for z in seq]))
        states.append(ep["states"])
        c = torch.ones(len(x))
        c[-1] = 0.0 if ep["terminated"] else 1.0
        conts.append(c)
        if len(x) > context + max(horizons):
            z = seq[context - 1]
            for k in range(1, max(horizons) + 1):
                z = model.imagine(z, a[None, context - 1 + k - 1])
                if k in err:
                    real = x[context - 1 + k].float() / 255.0
                    err[k].append(((model.decode_float(model.features(z))[0] - real) ** 2).mean().item())
    feats, states, conts = torch.cat(feats), torch.cat(states), torch.cat(conts)
    design = torch.cat([feats, torch.ones(len(feats), 1)], 1).double()
    coef = torch.linalg.lstsq(design, states.double()).solution
    resid = states.double() - design @ coef
    r2 = 1 - resid.pow(2).sum(0) / (states.double() - states.double().mean(0)).pow(2).sum(0)
    pred = model.continue_prob(model._latent(feats[:, :model.deter_size], feats[:, model.deter_size:])) >= 0.5
    truth = conts > 0.5
    return {
        "open_loop_mse": {h: (float(np.mean(v)) if v else float("nan")) for h, v in err.items()},
        "probe_r2": dict(zip(("x", "x_dot", "theta", "theta_dot"), map(float, r2))),
        "continue_accuracy": float((pred == truth).float().mean()),
        "terminal_recall": float(pred[~truth].logical_not().float().mean()) if (~truth).any() else float("nan"),
        "eval_frames": len(feats),
    }


def encode_reset_bank(model: PixelRSSM, n: int, seed: int) -> None:
    """Fill the model's start bank with posterior latents of ``n`` real reset frames."""
    from ..latent import encode_frames

    env = _real_env()
    frames = []
    for i in range(n):
        env.reset(seed=seed * 100_003 + i)
        frames.append(env.render())
    env.close()
    latent = encode_frames(model, torch.from_numpy(np.stack(frames))[:, None])
    model.start_deter = latent["deter"].clone()
    model.start_stoch = latent["stoch"].clone()


def train(seed: int = 0, verbose: bool = True, n_frames: int = 40_000, steps: int = 3000, batch: int = 16,
          length: int = 32, lr: float = 1e-3, n_starts: int = 256, eval_frames: int = 5000,
          **config: Any) -> tuple[PixelRSSM, dict[str, Any]]:
    """Collect real frames, fit a :class:`PixelRSSM` (``config``: ``deter``, ``stoch``, ``hidden``,
    ``depth``), fill its start bank and evaluate it on held-out episodes; ``(model, metadata)``.

    Deterministic for a seed on a given machine (seeded numpy/torch generators, one torch thread).
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise TypeError(f"cartpole-pixels train: unknown keyword(s) {sorted(unknown)}; model config keys are "
                        f"{sorted(DEFAULT_CONFIG)}")
    config = {**DEFAULT_CONFIG, **config}
    t0 = time.perf_counter()
    episodes = collect_episodes(n_frames, seed)
    held_out = collect_episodes(eval_frames, seed + 1_000_003) if eval_frames else []
    t_collect = time.perf_counter() - t0
    if verbose:
        print(f"  collected {sum(len(e['frames']) for e in episodes)} frames in {len(episodes)} real episodes "
              f"({t_collect:.0f}s)", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = PixelRSSM(**config)
        data = _flatten(episodes)
        losses = fit(model, data, steps, seed, batch=batch, length=length, lr=lr, verbose=verbose)
        model.eval().requires_grad_(False)
        encode_reset_bank(model, n_starts, seed)
        report = evaluate(model, held_out) if held_out else {}
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    meta = {"task": "CartPole-v1", "format": "torchwm_rl.zoo.cartpole_pixels/1", **config, "seed": seed,
            "n_frames": len(data["frames"]), "steps": steps, "final_loss": f"{np.mean(losses[-50:]):.3f}",
            "wall_seconds": f"{wall:.0f}"}
    for key, value in report.items():
        meta[key] = str(value)
    if verbose:
        print(f"  fitted in {wall - t_collect:.0f}s; held-out: {report}", flush=True)
    return model, meta


__all__ = ["collect_episodes", "evaluate", "fit", "train", "encode_reset_bank"]
