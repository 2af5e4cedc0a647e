"""The ``torchwm-rl`` command line (also ``python -m torchwm_rl``): parses the arguments and
runs the subcommand's module (:data:`COMMANDS`), importing it only then.

Subcommands:

* ``demo``: train a policy in a bundled world model only, then reality-check it (see
  :mod:`torchwm_rl.app.demo`); ``--json`` prints one JSON object as the last stdout line.
* ``train-model NAME``: refit a bundled world model from real environment data and write it to
  ``./NAME.safetensors`` (or ``--out``); prints how to load it (see :mod:`torchwm_rl.app.train_model`).
* ``mbpo [TASK]``: MBPO online on a real env (see :mod:`torchwm_rl.app.mbpo`), ``--model-free``
  for the SAC baseline; ``--json`` prints one JSON object as the last stdout line.
* ``check MODULE:FACTORY``: validate a user's world-model env (see :mod:`torchwm_rl.app.check`);
  exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Optional, Sequence


DEMO_DESCRIPTION = """\
Learn a task without touching it: load a bundled world model of the task, train a policy only
inside it (no real environment steps), then run that policy on the real Gymnasium env from the
same start states and report both returns and the model's open-loop error. Writes
policy.safetensors, results.json and results.png to the output folder.
  cartpole (default): PPO (TorchRL Collector + GAE + ClipPPOLoss) in the CartPole-v1 model;
                      10-20 s on an idle 2-core CPU, 30-45 s on a busy one.
  pendulum:           SAC (TorchRL SACLoss) in a 5-member Pendulum-v1 ensemble; about 50-70 s.
  cartpole-pixels:    an RSSM learned from CartPole-v1's frames: a CEM planner imagining in it is
                      distilled into a policy on the latent (states from the policy's own imagined
                      rollouts); the real check acts from rendered pixels through the model's
                      posterior (extra: pixels); about 7 min on a 2-core CPU (2 torch threads).
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
                   help="seeds the imagined envs, the policy's initialisation, its training and the real-env start states "
                        "(default 0)")
    d.add_argument("--frames", "--budget", dest="frames", type=int, default=None,
                   help="imagined-frame budget (upper bound; default 300000; stops early when solved); for "
                        "cartpole-pixels: the planner-labelled latents (default 2560)")
    d.add_argument("--num-envs", type=int, default=None, help="imagined envs stepped in one batch (64; cartpole-pixels: the student's imagined "
                        "rollouts per round)")
    d.add_argument("--episodes", type=int, default=20, help="real episodes in the reality check (20)")
    d.add_argument("--out", default=None, help="output folder (default ./torchwm_rl_runs/<timestamp>)")
    d.add_argument("--threads", type=int, default=None,
                   help="torch threads (default 1, the fastest for the state-vector tasks' tiny nets; cartpole-pixels: "
                        "2, for its planner's batched imagination); results are deterministic for a given seed and "
                        "thread count")
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
    m.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; results are deterministic for a given seed and thread count)")
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


#: subcommand -> its module in torchwm_rl.app, imported only when that subcommand runs (``--help``
#: stays free of torch); the module's ``command(args, started)`` runs it and returns the exit code
COMMANDS = {"demo": "demo", "train-model": "train_model", "mbpo": "mbpo", "check": "check"}

#: the subcommands whose argument names a bundled model, and that argument
_ZOO_ARGUMENT = {"demo": "task", "train-model": "name"}


def _unknown_task(args) -> Optional[int]:
    """For a subcommand that names a bundled model: print the one-line error for a name that is
    not in the zoo and return exit code 2; else None. Checked before the command's module (and
    torch) is imported."""
    from ..zoo import UnknownModelError, canonical

    if args.command not in _ZOO_ARGUMENT:
        return None
    try:
        canonical(getattr(args, _ZOO_ARGUMENT[args.command]))
    except UnknownModelError as exc:
        print(f"torchwm-rl {args.command}: {exc}", file=sys.stderr)
        return 2
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``torchwm-rl`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()  # the command's start: the demo's wall_seconds counts from here, imports included
    bad = _unknown_task(args)
    if bad is not None:
        return bad
    return importlib.import_module(f"{__package__}.{COMMANDS[args.command]}").command(args, started)


if __name__ == "__main__":
    sys.exit(main())
