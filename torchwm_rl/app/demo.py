"""The ``torchwm-rl demo [TASK]`` command: train a policy purely in a bundled world model, then
test it in reality.

:func:`run_demo` picks the task's demo module and runs it: :mod:`.demo_cartpole` (PPO; also any
other discrete-action zoo model), :mod:`.demo_pendulum` (SAC in the ensemble) or
:mod:`.demo_cartpole_pixels` (a planner distilled into a policy on the latent of the pixel model). Each writes
``policy.safetensors``, ``results.json`` and ``results.png`` into the output folder and returns
the result record (at least ``real_mean_return``, ``imagined_mean_return`` and
``wall_seconds``). :func:`load_policy` rebuilds the policy file any of them wrote.

The names this module exported before the demos got modules of their own stay importable from
here (and from the deprecated :mod:`torchwm_rl.demo`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import demo_cartpole, demo_cartpole_pixels, demo_pendulum
from .demo_cartpole import build_actor_critic, train_in_imagination
from .demo_pendulum import SACGreedyPolicy
from .runs import DemoConfig, format_table, json_safe, resolved

__all__ = ["DemoConfig", "run_demo", "train_in_imagination", "build_actor_critic", "format_table",
           "json_safe", "load_policy", "SACGreedyPolicy"]

#: zoo model name -> its demo's ``run(cfg, log, t_start)``; a zoo model not listed runs the
#: CartPole demo's PPO (discrete actions)
DEMOS = {"cartpole": demo_cartpole.run, "pendulum": demo_pendulum.run, "cartpole-pixels": demo_cartpole_pixels.run}

#: zoo models with no demo yet -> the one-line message the CLI prints (exit 2) and run_demo raises
NO_DEMO: dict[str, str] = {}


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print,
             t0: Optional[float] = None) -> dict[str, Any]:
    """Run the whole demo of ``cfg.task`` (see module docstring); returns the results dict.

    ``wall_seconds`` is measured from ``t0`` (a ``time.perf_counter()`` value taken in this
    process; the CLI takes it when the ``demo`` command starts, so the demo's own imports count,
    and nothing that ran before the command does), default: the call to ``run_demo``.
    """
    import time

    from .. import zoo
    from .progress import quiet_torchrl_info

    t_start = time.perf_counter() if t0 is None else t0
    cfg = resolved(cfg)
    torch.set_num_threads(max(1, int(cfg.threads)))
    if zoo.canonical(cfg.task) in NO_DEMO:  # before any folder is made
        raise NotImplementedError(f"torchwm-rl demo: {NO_DEMO[zoo.canonical(cfg.task)]}")
    with quiet_torchrl_info():
        return DEMOS.get(zoo.canonical(cfg.task), demo_cartpole.run)(cfg, log, t_start)


def command(args, started: float) -> int:
    """``torchwm-rl demo`` with the parsed ``args`` (the task is known to the zoo, :mod:`.cli`
    checked it); ``started`` is the command's start (``time.perf_counter()``), where
    ``wall_seconds`` counts from. With ``--json`` only one JSON line is printed (strict JSON)."""
    import sys

    from .. import zoo

    if zoo.canonical(args.task) in NO_DEMO:
        print(f"torchwm-rl demo: {NO_DEMO[zoo.canonical(args.task)]}", file=sys.stderr)
        return 2
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
            result = run_demo(cfg, log=lambda msg: None, t0=started)
        print(json.dumps(json_safe(result), allow_nan=False))
    else:
        run_demo(cfg, t0=started)
    return 0


#: the hidden activations a ``ppo_policy`` / ``mlp_policy`` file may name
_ACTIVATIONS = {"Tanh": nn.Tanh, "ELU": nn.ELU}

# Action bounds of SAC policy files written before the bounds were stored in the metadata.
_SAC_TASK_BOUNDS = {"pendulum": (-2.0, 2.0)}


def load_policy(path: str | Path) -> nn.Module:
    """A policy saved by ``torchwm-rl demo`` (``policy.safetensors``), rebuilt from the file's
    metadata as a plain, grad-free ``nn.Module``:

    * CartPole (PPO, kind ``torchwm_rl.demo.ppo_policy``) and the pixel CartPole (the distilled
      student, kind ``torchwm_rl.demo.mlp_policy``): an ``nn.Sequential``
      ``Linear-act-Linear-act-Linear`` (``act``: the metadata's ``activation``, ``Tanh`` or
      ``ELU``; ``Tanh`` when absent) mapping observations ``[..., obs_dim]`` (float32) to action
      logits ``[..., n_actions]``; the greedy action is ``logits.argmax(-1)``.
    * Pendulum (SAC, kind ``torchwm_rl.demo.sac_policy``): a :class:`SACGreedyPolicy` mapping
      observations ``[..., obs_dim]`` to the deterministic action ``[..., act_dim]``, inside the
      action bounds (the one ``reality_check`` scored).

    Any other file is refused with a ``ValueError`` naming its metadata kind."""
    from ..serialization import load_weights, read_metadata
    from .sac import _mlp as _sac_mlp

    meta = read_metadata(path)
    kind = meta.get("kind", "")
    if kind.startswith(("torchwm_rl.demo.ppo_policy", "torchwm_rl.demo.mlp_policy")):
        activation = meta.get("activation", "Tanh")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{path}: unknown activation {activation!r} in the policy file's metadata (expected one "
                             f"of {sorted(_ACTIVATIONS)})")
        net = demo_cartpole._mlp(int(meta["obs_dim"]), int(meta["n_actions"]), int(meta["hidden"]),
                                 _ACTIVATIONS[activation])
        net.load_state_dict(load_weights(path))
        return net.eval().requires_grad_(False)
    if kind.startswith("torchwm_rl.demo.sac_policy"):
        act_dim = int(meta["n_actions"])
        if "action_low" in meta and "action_high" in meta:
            low, high = (torch.tensor(json.loads(meta[k]), dtype=torch.float32).reshape(-1)
                         for k in ("action_low", "action_high"))
            low, high = low.expand(act_dim).clone(), high.expand(act_dim).clone()
        elif meta.get("task") in _SAC_TASK_BOUNDS:
            lo, hi = _SAC_TASK_BOUNDS[meta["task"]]
            low, high = torch.full((act_dim,), lo), torch.full((act_dim,), hi)
        else:
            raise ValueError(f"{path}: SAC policy file without action bounds (no action_low/action_high "
                             f"metadata, task {meta.get('task')!r})")
        net = _sac_mlp(int(meta["obs_dim"]), 2 * act_dim, int(meta["hidden"]))
        net.load_state_dict(load_weights(path))
        return SACGreedyPolicy(net, low, high).eval().requires_grad_(False)
    raise ValueError(f"{path} is not a torchwm-rl demo policy (metadata kind {meta.get('kind')!r}; "
                     "expected torchwm_rl.demo.ppo_policy/..., torchwm_rl.demo.mlp_policy/... or "
                     "torchwm_rl.demo.sac_policy/...)")
