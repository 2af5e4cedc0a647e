"""The ``torchwm-rl train-model NAME`` command: refit a bundled world model from real
environment data (:func:`torchwm_rl.zoo.train_model`) and write its weights to
``./NAME.safetensors`` (or ``--out``); prints how to load the file."""

from __future__ import annotations

from pathlib import Path


def command(args, started: float) -> int:
    """``torchwm-rl train-model`` with the parsed ``args`` (the name is known to the zoo:
    :mod:`.cli` checked it). ``started`` (the command's start) is not used."""
    from .. import zoo

    if not args.quiet:
        print(f"[torchwm-rl] training the {args.name} world model from real transitions (seed {args.seed})")
    path = zoo.train_model(args.name, seed=args.seed, path=args.out, verbose=not args.quiet)
    print(f"[torchwm-rl] wrote {Path(path).resolve()}")
    print(f"[torchwm-rl] use it: from torchwm_rl import zoo; env = {zoo.use_hint(args.name, Path(path).resolve())}")
    return 0
