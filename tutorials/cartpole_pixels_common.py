"""Real CartPole frames for the cartpole-pixels tutorials (a module they import, not a script).

Two things every pixel tutorial needs from the real ``CartPole-v1``, both from its ``rgb_array``
render only (never from its state):

* :func:`real_start_latents`: real episodes -> posterior latents of their frames, through
  :func:`torchwm_rl.latent.encode_frames` (K frames of burn-in before each start). These are
  the imagined episodes' start states (``start_latents=`` of ``zoo.make_env``).
* :func:`real_returns`: the reality check from pixels. Each real step renders the frame,
  preprocesses it and updates the posterior latent (``model.observe``, the encoder's filter);
  the policy acts on that latent (and may look at the frame).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from tensordict import TensorDict

from torchwm_rl.latent import encode_frames
from torchwm_rl.zoo.cartpole_pixels import preprocess, render_frames_headless


def real_env():
    """``CartPole-v1`` rendering ``rgb_array`` frames, headless."""
    render_frames_headless()
    import gymnasium as gym

    return gym.make("CartPole-v1", render_mode="rgb_array")


def real_episodes(episodes: int, seed: int, max_steps: int = 500, model=None,
                  act: Optional[Callable[[TensorDict, torch.Tensor], int]] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``episodes`` real episodes: ``(frames uint8 [T, 400, 600, 3], actions int64 [T - 1])`` each.

    Actions are uniform random (``np.random.default_rng(seed)``), or ``act(latent, frame)`` on the
    posterior latent of ``model`` (as in :func:`real_returns`)."""
    env, rng, out = real_env(), np.random.default_rng(seed), []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        frames, actions, done = [env.render()], [], False
        frame = None if act is None else _frame(frames[-1])
        latent = None if act is None else _filter(model, None, None, frame)
        while not done and len(actions) < max_steps:
            action = int(rng.integers(2)) if act is None else int(act(latent, frame))
            _, _, term, trunc, _ = env.step(action)
            done = term or trunc
            actions.append(action)
            frames.append(env.render())
            if act is not None:
                frame = _frame(frames[-1])
                latent = _filter(model, latent, action, frame)
        out.append((np.stack(frames), np.asarray(actions, dtype=np.int64)))
    env.close()
    return out


def _frame(render: np.ndarray) -> torch.Tensor:
    return preprocess(torch.from_numpy(render))[None]


def _filter(model, latent, action, frame):
    """One posterior step on a preprocessed real frame (``latent=None``: an episode's first frame)."""
    with torch.no_grad():
        if latent is None:
            return model.observe(model.initial_latent(1), None, frame)
        return model.observe(latent, torch.tensor([action]), frame)


def real_start_latents(model, episodes: list, burn_in: int = 4) -> TensorDict:
    """The posterior latent at every frame of every episode (after ``burn_in`` frames), batch ``[M]``.

    The start at frame ``t`` is ``encode_frames`` of the window ``frames[t - burn_in + 1 .. t]``
    and the actions between them (the window starts the filter afresh, as at an episode start;
    the first frames of an episode have shorter windows)."""
    starts = []
    for frames, actions in episodes:
        for k in range(1, burn_in):  # the episode's first frames: windows from frame 0
            if k <= len(frames):
                starts.append(encode_frames(model, frames[None, :k], actions[None, :k - 1]))
        if len(frames) >= burn_in:
            # every full window at once: [W, burn_in, 400, 600, 3] (a view of the frames, copied in chunks)
            for lo in range(0, len(frames) - burn_in + 1, 16):
                idx = np.arange(lo, min(lo + 16, len(frames) - burn_in + 1))
                win = frames[idx[:, None] + np.arange(burn_in)]
                act = actions[idx[:, None] + np.arange(burn_in - 1)]
                starts.append(encode_frames(model, win, act))
    return torch.cat(starts)


def real_returns(model, act: Callable[[TensorDict, torch.Tensor], int], episodes: int, seed: int,
                 new_episode: Optional[Callable[[], None]] = None) -> tuple[list[float], list[str]]:
    """Returns of ``act(latent [1], frame uint8 [1, 1, 32, 120]) -> 0 | 1`` in the real env, from pixels.

    Each step: render -> :func:`preprocess` -> ``model.observe`` (the posterior mean: a
    deterministic filter) -> ``act``. Also says how each episode ended: ``"theta"`` (the pole
    fell), ``"x"`` (the cart left the track) or ``"time"`` (500 steps). ``new_episode()`` is
    called before each episode (a policy with memory, e.g. a frame stack, restarts there)."""
    env, out, ends = real_env(), [], []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        if new_episode is not None:
            new_episode()
        frame = _frame(env.render())
        latent = _filter(model, None, None, frame)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = int(act(latent, frame))
            _, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            done = term or trunc
            if done:
                x = env.unwrapped.state[0]
                ends.append("x" if term and abs(x) > 2.4 else "theta" if term else "time")
            frame = _frame(env.render())
            latent = _filter(model, latent, action, frame)
        out.append(total)
    env.close()
    return out, ends
