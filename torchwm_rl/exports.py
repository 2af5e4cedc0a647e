"""``WorldModelEnv.to_gymnasium`` / ``to_sb3``: the Gymnasium and Stable-Baselines3 exports.

Each export is a front end of its own over a fork of the env's episode logic (same model and
hooks, its own episode state and random streams). Both refuse to be reached through a
``TransformedEnv``: TorchRL's ``TransformedEnv.__getattr__`` forwards an attribute it lacks to ``base_env``, so
``TransformedEnv(env, ObservationNorm(...)).to_gymnasium()`` would export the base env without
its transforms: un-normalised observations, unscaled rewards, and no error. :class:`RefuseThroughTransforms`
wraps the two methods so that such a lookup hands out a function that refuses, saying what to do.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any, Callable, Optional

from torchrl.envs.transforms import Compose, TransformedEnv


def to_gymnasium(env, **kwargs):
    """Unbatched env -> :class:`~torchwm_rl.gym.GymWorldModelEnv`; batched (N,) ->
    :class:`~torchwm_rl.gym.GymVectorWorldModelEnv` (``num_envs=N``). Keyword args
    (``render_mode``, ``autoreset_mode``) go to the export.

    Every export shares this env's model and hooks but has its own episode state and
    random streams (:meth:`EpisodeLogic.fork`), starting from this env's (a seed given to
    this env and not yet used seeds the export's first reset too): two exports of one env,
    or an export and this env, never change each other's streams, so each gives the
    trajectories it gives alone. Exports are made for this env's device at the time."""
    from .gym import GymVectorWorldModelEnv, GymWorldModelEnv

    if env.batch_size:
        return GymVectorWorldModelEnv.from_logic(env.logic.fork(), **kwargs)
    return GymWorldModelEnv.from_logic(env.logic.fork(), **kwargs)


def to_sb3(env, render_mode: Optional[str] = None):
    """A Stable-Baselines3 ``VecEnv`` over this env's model (``num_envs=N``; 1 if
    unbatched), with its own episode state and streams as :meth:`to_gymnasium`'s. Batched:
    one model call per step for all N envs. Unbatched: SB3's own ``DummyVecEnv`` around
    :meth:`to_gymnasium` (SB3 already does N=1 right). ``render_mode="rgb_array"``:
    ``render()`` returns the envs' frames tiled (what ``VecVideoRecorder`` records)."""
    from .sb3 import SB3VecWorldModelEnv

    if not env.batch_size:
        from stable_baselines3.common.vec_env import DummyVecEnv

        return DummyVecEnv([lambda: env.to_gymnasium(render_mode=render_mode)])
    return SB3VecWorldModelEnv.from_logic(env.logic.fork(), render_mode)


class RefuseThroughTransforms:
    """The wrapped method, unless it is looked up through a ``TransformedEnv``.

    The lookup is the only moment that tells the two apart (the bound method it returns is the
    base env's), so this descriptor looks at its caller's frames for a ``TransformedEnv`` running
    ``__getattr__`` and then hands out a function that refuses, saying what to do. This avoids
    patching TorchRL's class; tests/test_exports.py fails should TorchRL change how it forwards.
    A ``TransformedEnv`` without transforms exports as its base env (nothing is dropped)."""

    def __init__(self, method: Callable):
        functools.update_wrapper(self, method)
        self.method = method

    def __get__(self, env: Any, owner: Any = None) -> Any:
        if env is None:
            return self.method
        wrapper = forwarding_transformed_env(sys._getframe(1))
        if wrapper is None:
            return types.MethodType(self.method, env)
        name = self.method.__name__

        def refuse(*args, **kwargs):
            raise TypeError(
                f"{name}() was reached through a TransformedEnv, which forwards it to its base env: the export "
                f"would step the base env WITHOUT its transforms ({transform_names(wrapper.transform)}), so its observations and rewards would not be the "
                f"TransformedEnv's. Export the base env explicitly, env.base_env.{name}(), and apply the "
                "transforms on the other side (Gymnasium wrappers such as NormalizeObservation, "
                "TransformObservation, TransformReward; SB3's VecNormalize), or train on the TransformedEnv "
                "with TorchRL."
            )

        refuse.__name__ = refuse.__qualname__ = name
        return refuse


def forwarding_transformed_env(frame: Any, depth: int = 4) -> Any:
    """The ``TransformedEnv`` with transforms whose ``__getattr__`` is among the ``depth`` frames
    from ``frame`` up (the lookup being forwarded to its base env), else None."""
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == "__getattr__":
            wrapper = frame.f_locals.get("self")
            if isinstance(wrapper, TransformedEnv):
                transform = wrapper.transform
                empty = isinstance(transform, Compose) and len(transform) == 0
                return None if empty else wrapper
        frame = frame.f_back
    return None


def transform_names(transform: Any) -> str:
    """The class names of a transform, or of a ``Compose``'s transforms, comma-separated."""
    parts = transform if isinstance(transform, Compose) else [transform]
    return ", ".join(type(t).__name__ for t in parts)
