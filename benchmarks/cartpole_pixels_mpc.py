"""Planning instead of a trained policy: CEM model-predictive control inside the bundled
``cartpole-pixels`` world model, acting in the real ``CartPole-v1`` from pixels (issue 22).

Each real step, for each of ``--episodes`` real episodes run side by side:

1. the real frame is rendered, preprocessed and filtered into the posterior latent (the real
   check's filter: ``observe(z, a, preprocess(render()))``);
2. ``--candidates`` action sequences of ``--horizon`` steps are drawn per episode (each step
   Bernoulli with a per-step probability, 0.5 at first) and imagined in ONE batched
   ``env.rollout`` of the library's env over the model (``zoo.make_env("cartpole-pixels",
   sample=False)``: the prior's mean, the demo's imagination), started from that latent with
   ``auto_reset=False``;
3. a sequence's score is its expected number of imagined steps alive, the sum over its steps of
   the product of ``continue_prob`` so far (the env's step output; terminations are not drawn:
   ``continue_threshold`` is tiny, and steps after an imagined end count 0);
4. the per-step probabilities become the mean of the best ``1/--elite`` sequences, and steps 2-3
   are repeated (``--iters`` in all); the first action of the best sequence is played;
5. ``--warm``: the next real step starts from those probabilities shifted by one step.

No real transition is used anywhere but the filter (the model is the bundled one, fit offline;
nothing is trained here). The real resets are ``seed + 20000 + i`` as in
``cartpole_pixels_ppo.py``. One JSON line per run, also appended to ``--out``.

    python benchmarks/cartpole_pixels_mpc.py --horizon 40 --candidates 64 --iters 2 --warm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

#: ``continue_threshold`` of the planning env: terminations are not drawn, and no imagined step of
#: a candidate ends unless the head all but rules it out (the score uses ``continue_prob`` itself)
NO_DRAWN_ENDS = 1e-6


class PlayActions:
    """A policy that plays ``actions[:, t]`` at its ``t``-th call (one candidate sequence per row)."""

    def __init__(self, actions: torch.Tensor):
        self.actions, self.t = actions, 0

    def __call__(self, td):
        td.set("action", self.actions[:, self.t])
        self.t += 1
        return td


def expected_steps_alive(out) -> torch.Tensor:
    """Per row of a planning rollout ``[R, H]``: the sum over steps of the product of
    ``continue_prob`` up to that step, counting nothing from the first imagined end on (a row that
    ended was restarted by the env: what follows is another episode)."""
    prob = out.get(("next", "continue_prob"))[..., 0]
    done = out.get(("next", "done"))[..., 0]
    before_end = (done.long().cumsum(1) - done.long()) == 0  # the step itself may be the end
    return (prob.cumprod(1) * before_end).sum(1)


class CEMPlanner:
    """Discrete CEM over CartPole's two actions, through one batched imagined env of
    ``episodes * candidates`` rows."""

    def __init__(self, model, episodes: int, candidates: int, horizon: int, iters: int, elite: int, warm: bool,
                 seed: int):
        from torchwm_rl import zoo

        self.E, self.K, self.H, self.iters, self.warm = episodes, candidates, horizon, iters, warm
        self.top = max(candidates // elite, 1)
        self.env = zoo.make_env("cartpole-pixels", model=model, batch_size=episodes * candidates, seed=seed,
                                sample=False, continue_threshold=NO_DRAWN_ENDS)
        self.generator = torch.Generator().manual_seed(seed)
        self.probs = torch.full((episodes, horizon), 0.5)

    def __call__(self, latent, rows: torch.Tensor) -> torch.Tensor:
        """The first action of the best sequence for each episode in ``rows`` (latents ``[n]``)."""
        n, K, H = len(rows), self.K, self.H
        probs = self.probs[rows] if self.warm else torch.full((n, H), 0.5)
        starts = latent[:, None].expand(n, K).reshape(n * K)
        pad = self.E * K - n * K  # finished episodes' rows: planned for nothing (the env's batch is fixed)
        state = TensorDict({"deter": starts["deter"], "stoch": starts["stoch"]}, [n * K])
        if pad:
            state = torch.cat([state, state[:1].expand(pad).clone()])
        for _ in range(self.iters):
            actions = (torch.rand(n, K, H, generator=self.generator) < probs[:, None]).long()
            played = actions.reshape(n * K, H)
            if pad:
                played = torch.cat([played, played[:1].expand(pad, H)])
            out = self.env.rollout(H, PlayActions(played), tensordict=TensorDict({"model_state": state.clone()},
                                                                               [self.E * K]),
                                   auto_reset=False, break_when_any_done=False)
            score = expected_steps_alive(out)[: n * K].reshape(n, K)
            best = score.topk(self.top, dim=1).indices
            elite = torch.gather(actions, 1, best[..., None].expand(-1, -1, H)).float()
            probs = elite.mean(1).clamp(0.05, 0.95)
        choice = torch.gather(actions, 1, score.argmax(1)[:, None, None].expand(-1, 1, H))[:, 0, 0]
        if self.warm:
            self.probs[rows] = torch.cat([probs[:, 1:], torch.full((n, 1), 0.5)], 1)
        return choice


@torch.no_grad()
def real_run(model, planner: CEMPlanner, episodes: int, seed: int, log=print) -> dict:
    """``episodes`` real CartPole-v1 episodes from pixels side by side, each step planned."""
    import gymnasium as gym

    from torchwm_rl.pixel_reality import _frame  # the real check's render -> preprocess, with its checks
    from torchwm_rl.zoo.cartpole_pixels import render_frames_headless

    render_frames_headless()
    envs = [gym.make("CartPole-v1", render_mode="rgb_array") for _ in range(episodes)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + 20_000 + i)

    def frame(env):
        return _frame(model, env)[0]

    latent = model.observe(model.initial_latent(episodes), None, torch.stack([frame(e) for e in envs]))
    running = np.ones(episodes, bool)
    returns, final_states = np.zeros(episodes), [None] * episodes
    t0, steps = time.process_time(), 0
    while running.any():
        rows = torch.as_tensor(np.flatnonzero(running))
        action = planner(latent[rows], rows)
        frames = []
        for j, i in enumerate(rows.tolist()):
            _, reward, terminated, truncated, _ = envs[i].step(int(action[j]))
            returns[i] += reward
            if terminated or truncated:
                running[i] = False
                final_states[i] = np.round(np.asarray(envs[i].unwrapped.state, dtype=float), 3).tolist()
            frames.append(frame(envs[i]))
        latent[rows] = model.observe(latent[rows], action, torch.stack(frames))
        steps += 1
        if steps % 100 == 0:
            log(f"  real step {steps}: {int(running.sum())} of {episodes} episodes running, "
                f"{time.process_time() - t0:.0f} CPU s")
    return {"real_mean_return": float(returns.mean()), "real_returns": returns.tolist(),
            "at_500": int((returns >= 500).sum()), "final_states": final_states,
            "cpu_seconds": round(time.process_time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--horizon", type=int, default=40)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--elite", type=int, default=8, help="the best 1/ELITE of the candidates refit the probabilities")
    p.add_argument("--warm", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cartpole_pixels_mpc.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from torchwm_rl import zoo

    model = zoo.load("cartpole-pixels")
    planner = CEMPlanner(model, args.episodes, args.candidates, args.horizon, args.iters, args.elite, args.warm,
                         args.seed)
    t0 = time.time()
    result = {k: v for k, v in vars(args).items() if k != "out"} | real_run(model, planner, args.episodes, args.seed)
    result["wall_seconds"] = round(time.time() - t0, 1)
    line = json.dumps(result)
    print(line)
    with open(args.out, "a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
