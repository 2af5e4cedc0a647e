"""Distilling the planner: an MLP policy on the posterior latent features, trained to imitate the
CEM planner of ``cartpole_pixels_mpc.py`` (which plans only inside the bundled ``cartpole-pixels``
imagination), on states gathered DAgger-style, then acting alone in the real ``CartPole-v1``
from pixels (issue 22). The loop is the library's :func:`torchwm_rl.distillation.distil` (the
pixel demo's training); this script adds a real evaluation after every round and ``--states
real``.

1. Round 0's states: the posterior latents (the real check's filter of the real render) of
   ``--warmup-episodes`` random-action real episodes (reset seeds ``50000 + i``); ``--per-round``
   of them are drawn at random.
2. Each state is labelled with the planner's action: CEM over ``--horizon``-step action sequences,
   ``--candidates`` per CEM iteration, ``--iters`` iterations, each scored by its expected
   imagined steps alive in the library's imagined env (``zoo.make_env("cartpole-pixels",
   sample=False)``), ``--chunk`` states per batched ``env.rollout``. The labels come from
   imagination only: no real reward or real transition is used.
3. The student (``features -> 128 -> 128 -> 2`` logits, ELU, inputs standardised by the labelled
   set's mean and std) is fit from scratch on all labels so far (cross-entropy, Adam).
4. It plays ``--eval`` real episodes greedily from pixels (reset seeds ``20000 + i``, the same
   every round; nothing from them is kept: they are only reported). New states (DAgger: the
   student's own state distribution) come from one of two places, ``--states``:

   - ``real``: the student plays ``--collect`` more real episodes (seeds ``60000 + 100 r + i``)
     and ``--per-round`` of the posterior latents those visit are drawn;
   - ``imagined``: the student plays greedily in the library's imagined env (``zoo.make_env(
     "cartpole-pixels", sample=False, continue_threshold=0.5)``: the prior's mean, as the planner
     imagines) from ``--starts`` latents drawn from round 0's bank of real posterior latents, for
     at most ``--length`` steps, each row stopping at its first ``continue_prob < 0.5``;
     ``--per-round`` of the latents visited are drawn. No real episode is played for training
     after round 0's random ones.

   Those states are labelled (2) and added.

After the last round the student also plays ``--final-eval`` real episodes (seeds ``20000 + i``).
Real frames enter only as the planner's start states (issue 22's "starts from real frames"), and
the real env's reward is only reported. One JSON line per round is printed; the run's record (all
rounds) is appended to ``--out``. Deterministic given the seed with one torch thread.

    python benchmarks/cartpole_pixels_distil.py --rounds 9
    python benchmarks/cartpole_pixels_distil.py --rounds 9 --states imagined --candidates 128 --iters 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from torchwm_rl.app.demo_cartpole_pixels import make_planner, make_rollout_env
from torchwm_rl.distillation import distil


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--warmup-episodes", type=int, default=20)
    p.add_argument("--per-round", type=int, default=256, help="states labelled per round")
    p.add_argument("--collect", type=int, default=4, help="real episodes the student plays per round for new states")
    p.add_argument("--states", choices=("real", "imagined"), default="real",
                   help="where each round's new states come from (see the module docstring)")
    p.add_argument("--starts", type=int, default=64, help="--states imagined: imagined rollouts per round")
    p.add_argument("--length", type=int, default=200, help="--states imagined: their most steps")
    p.add_argument("--horizon", type=int, default=40)
    p.add_argument("--candidates", type=int, default=256)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--fit-steps", type=int, default=1500)
    p.add_argument("--final-members", type=int, default=1,
                   help="the last round's student: the mean logits of this many fits (the demo uses 5)")
    p.add_argument("--eval", type=int, default=10)
    p.add_argument("--final-eval", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cartpole_pixels_distil.jsonl"))
    args = p.parse_args()

    import gymnasium as gym

    from torchwm_rl import zoo
    from torchwm_rl.pixel_reality import filter_episode
    from torchwm_rl.zoo.cartpole_pixels import render_frames_headless

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    render_frames_headless()
    model = zoo.load("cartpole-pixels")
    real = gym.make("CartPole-v1", render_mode="rgb_array")
    planner = make_planner(model, args.candidates, args.horizon, args.iters, 8, args.seed)
    imagination = make_rollout_env(model, args.starts, args.seed) if args.states == "imagined" else None
    t0, wall0 = time.process_time(), time.time()

    def play(policy, seeds):
        return [filter_episode(model, policy, real, seed=s) for s in seeds]

    def real_states(student, r):  # --states real: the latents of the student's own real episodes
        return torch.cat([e.latents for e in play(student, range(60_000 + 100 * r, 60_000 + 100 * r + args.collect))])

    rounds, returns = [], []

    def evaluate(rec, student):  # reported only: nothing from these episodes is kept
        returns[:] = [e.ret for e in play(student, range(20_000, 20_000 + args.eval))]
        rec = rec | {"real_mean_return": float(np.mean(returns)), "at_500": int(sum(x >= 500 for x in returns)),
                     "real_returns": list(returns), "cpu_seconds": round(time.process_time() - t0, 1)}
        rounds.append(rec)
        print(json.dumps(rec), flush=True)

    with torch.no_grad():
        bank = torch.cat([e.latents for e in play(lambda f: int(rng.integers(2)),
                                                  range(50_000, 50_000 + args.warmup_episodes))])
        student, _ = distil(planner, model.features, bank, [args.per_round] * (args.rounds + 1), rng,
                            new_states=real_states if args.states == "real" else None, env=imagination,
                            starts=args.starts, length=args.length, fit_steps=args.fit_steps,
                            final_members=args.final_members, chunk=args.chunk, on_round=evaluate)
        # the last round's evaluation episodes are the final's first ones (the same resets)
        final = returns[:args.final_eval] + [e.ret for e in play(student, range(20_000 + args.eval,
                                                                                20_000 + args.final_eval))]
    result = {k: v for k, v in vars(args).items() if k != "out"} | {
        "final_real_mean_return": float(np.mean(final)), "final_at_500": int(sum(x >= 500 for x in final)),
        "final_real_returns": final, "labels": rounds[-1]["labels"], "cpu_seconds": round(time.process_time() - t0, 1),
        "wall_seconds": round(time.time() - wall0, 1), "rounds": rounds}
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
