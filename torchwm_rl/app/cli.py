"""The ``torchwm-rl`` command line (also ``python -m torchwm_rl``).

Subcommands:

* ``demo``: train a policy in a bundled world model only, then reality-check it (see
  :mod:`torchwm_rl.app.demo`); ``--json`` prints one JSON object as the last stdout line.
* ``train-model NAME``: refit a bundled world model from real environment data and write it to
  ``./NAME.safetensors`` (or ``--out``); prints how to load it.
* ``mbpo [TASK]``: MBPO online on a real env (see :mod:`torchwm_rl.app.mbpo`), ``--model-free``
  for the SAC baseline; ``--json`` prints one JSON object as the last stdout line.
* ``check MODULE:FACTORY``: validate a user's world-model env (see :mod:`torchwm_rl.app.check`);
  exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence


DEMO_DESCRIPTION = """\
Learn a task without touching it: load a bundled world model of the task, train a policy only
inside it (no real environment steps), then run that policy on the real Gymnasium env from the
same start states and report both returns and the model's open-loop error. Writes
policy.safetensors, results.json and results.png to the output folder.
  cartpole (default): PPO (TorchRL Collector + GAE + ClipPPOLoss) in the CartPole-v1 model;
                      10-20 s on an idle 2-core CPU, 30-45 s on a busy one.
  pendulum:           SAC (TorchRL SACLoss) in a 5-member Pendulum-v1 ensemble; about 50-70 s.
Measured runs: the README and benchmarks/RESULTS.md."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("torchwm-rl")
    except Exception:  # not installed (run from a source tree)
        from .. import __version__

        return __version__


def _tasks() -> str:
    from ..zoo import available

    return ", ".join(available())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchwm-rl", description="World models as TorchRL environments.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    tasks = _tasks()

    d = sub.add_parser("demo", help="train a policy in a bundled world model only, then test it in the real env",
                       description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("task", nargs="?", default="cartpole",
                   help=f"which bundled world model to train in (one of: {tasks}; default: cartpole)")
    d.add_argument("--seed", type=int, default=0,
                   help="seeds the imagined envs, the policy's initialisation, PPO and the real-env start states (default 0)")
    d.add_argument("--frames", "--budget", dest="frames", type=int, default=None,
                   help="imagined-frame budget (upper bound; default 300000; stops early when solved)")
    d.add_argument("--num-envs", type=int, default=None, help="imagined envs stepped in one batch (64)")
    d.add_argument("--episodes", type=int, default=20, help="real episodes in the reality check (20)")
    d.add_argument("--out", default=None, help="output folder (default ./torchwm_rl_runs/<timestamp>)")
    d.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny nets)")
    d.add_argument("--no-plot", action="store_true", help="do not write results.png")
    d.add_argument("--json", action="store_true",
                   help="no progress output; print one JSON object as the last stdout line")

    t = sub.add_parser("train-model", help="rebuild a bundled world model from real transitions",
                       description="Collect transitions from the real Gymnasium env, fit the named world "
                                   "model and write its weights (safetensors).")
    t.add_argument("name", nargs="?", default="cartpole",
                   help=f"which bundled world model to rebuild (one of: {tasks}; default: cartpole)")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds data collection and training; the same seed gives identical weights (default 0)")
    t.add_argument("--out", default=None,
                   help="weights file to write (default: ./NAME.safetensors in the current directory; "
                        "the bundled file in the installed package is never overwritten unless named here)")
    t.add_argument("--quiet", action="store_true")

    m = sub.add_parser("mbpo", help="MBPO online: refit an ensemble while SAC learns inside it (real env steps)",
                       description="Model-based RL online (torchwm_rl.app.mbpo): real steps into a replay buffer, "
                                   "an ensemble refit in place every --refit-every steps, branched imagined rollouts "
                                   "from real states, SAC (TorchRL SACLoss) on imagined plus real data. Writes "
                                   "results.json and results.png (real return against real steps).")
    m.add_argument("task", nargs="?", default="Pendulum-v1",
                   help="Pendulum-v1 (default) or InvertedPendulum-v5 (needs gymnasium[mujoco])")
    m.add_argument("--seed", type=int, default=0, help="seeds everything (default 0)")
    m.add_argument("--real-steps", type=int, default=None, help="real env steps, warm-up included (3000)")
    m.add_argument("--target", type=float, default=None,
                   help="the real return steps_to_target is about (Pendulum-v1: -200, InvertedPendulum-v5: 900)")
    m.add_argument("--model-free", action="store_true", help="only the baseline: SAC on the real env alone")
    m.add_argument("--with-baseline", action="store_true",
                   help="also run the model-free baseline (same networks and settings): both curves in one plot")
    m.add_argument("--propagation", default="random", choices=["random", "fixed", "mean"],
                   help="how imagined envs pick an ensemble member (default random)")
    m.add_argument("--penalty", type=float, default=0.0, help="MOPO's reward penalty lambda (default 0)")
    m.add_argument("--threshold", type=float, default=None, help="MOReL's halting threshold (default: none)")
    m.add_argument("--out", default=None, help="output folder (default ./torchwm_rl_runs/mbpo-<timestamp>)")
    m.add_argument("--json", action="store_true",
                   help="no progress output; print one JSON object as the last stdout line")

    c = sub.add_parser("check", help="validate MODULE:FACTORY (a function returning a WorldModelEnv)",
                       description="Call FACTORY once and check the env it returns (a torchwm_rl.WorldModelEnv "
                                   "or a torchwm_rl.gym env): TorchRL specs, a rollout, Gymnasium's and SB3's "
                                   "checkers, and TorchRL-vs-Gymnasium parity. Exits 1 if a check fails.")
    c.add_argument("target", help="e.g. my_package.envs:make_env or path/to/file.py:make_env")
    c.add_argument("--seed", type=int, default=0, help="seed for the env and the random actions (default 0)")
    c.add_argument("--steps", type=int, default=None,
                   help="steps for the rollout / parity checks (default: the env's max_episode_steps + 10, "
                        "at least 50 and at most 1000, so that episode ends and resets are exercised)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return p


def _unknown_task(command: str, name: str) -> Optional[int]:
    """Print the one-line error for a task that is not in the zoo (exit code 2), else None."""
    from ..zoo import UnknownModelError, canonical

    try:
        canonical(name)
    except UnknownModelError as exc:
        print(f"torchwm-rl {command}: {exc}", file=sys.stderr)
        return 2
    return None


def _demo(args) -> int:
    import time

    t0 = time.perf_counter()  # wall_seconds: the demo's own run, from here (its imports included)
    bad = _unknown_task("demo", args.task)
    if bad is not None:
        return bad
    from ..zoo import canonical

    if canonical(args.task) == "cartpole-pixels":  # its demo is issue 22's last step: not built yet
        print("torchwm-rl demo: cartpole-pixels has no demo yet (issue 22); build its env with "
              "zoo.make_env('cartpole-pixels', batch_size=64)", file=sys.stderr)
        return 2

    from .demo import DemoConfig, json_safe, run_demo

    cfg = DemoConfig(task=args.task, seed=args.seed, episodes=args.episodes, out=args.out,
                     threads=args.threads, progress=not args.json, save_plot=not args.no_plot)
    if args.frames is not None:
        cfg.frames = args.frames
    if args.num_envs is not None:
        cfg.num_envs = args.num_envs
    if args.json:
        import io
        import contextlib
        import logging
        import os
        import warnings

        os.environ.setdefault("RL_WARNINGS", "False")
        logging.getLogger("torchrl").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            result = run_demo(cfg, log=lambda msg: None, t0=t0)
        print(json.dumps(json_safe(result), allow_nan=False))
    else:
        run_demo(cfg, t0=t0)
    return 0


def _train_model(args) -> int:
    bad = _unknown_task("train-model", args.name)
    if bad is not None:
        return bad
    from .. import zoo

    if not args.quiet:
        print(f"[torchwm-rl] training the {args.name} world model from real transitions (seed {args.seed})")
    path = zoo.train_model(args.name, seed=args.seed, path=args.out, verbose=not args.quiet)
    print(f"[torchwm-rl] wrote {Path(path).resolve()}")
    print(f"[torchwm-rl] use it: from torchwm_rl import zoo; env = {zoo.use_hint(args.name, Path(path).resolve())}")
    return 0


def _mbpo(args) -> int:
    import time

    from .mbpo import MBPOConfig, run, write_results

    cfg = MBPOConfig(task=args.task, seed=args.seed, target=args.target, model_free=args.model_free,
                     propagation=args.propagation, penalty=args.penalty, threshold=args.threshold,
                     progress=not args.json)
    if args.real_steps is not None:
        cfg.real_steps = args.real_steps
    out = Path(args.out) if args.out else Path("torchwm_rl_runs") / time.strftime("mbpo-%Y%m%d-%H%M%S")
    log = (lambda msg: None) if args.json else print
    try:
        result = run(cfg, log=log)
        if args.with_baseline and not args.model_free:
            import dataclasses

            result["baseline"] = run(dataclasses.replace(cfg, model_free=True), log=log)
    except ValueError as exc:
        print(f"torchwm-rl mbpo: {exc}", file=sys.stderr)
        return 2
    write_results(result, out)
    if args.json:
        keys = ("task", "seed", "algorithm", "real_mean_return", "real_steps", "target", "steps_to_target",
                "wall_seconds")
        line = {k: result[k] for k in keys}
        if "baseline" in result:
            line["baseline"] = {k: result["baseline"][k] for k in keys}
        print(json.dumps(line))
    else:
        print(f"[torchwm-rl] {result['algorithm']}: real return {result['real_mean_return']:.1f} "
              f"({cfg.final_eval_episodes} episodes) after {result['real_steps']:,} real steps; target "
              f"{result['target']:g} first reached at {result['steps_to_target']} real steps; wrote {out.resolve()}")
    return 0


def _check(args) -> int:
    from .check import check_factory

    report = check_factory(args.target, seed=args.seed, steps=args.steps)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0 if report.ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``torchwm-rl`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    handler = {"demo": _demo, "train-model": _train_model, "mbpo": _mbpo, "check": _check}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
