"""Bundled world models ("the zoo").

``load(name)`` returns a ready ``nn.Module`` (eval mode, no grad); ``make_env(name, ...)`` builds
the batched :class:`torchwm_rl.WorldModelEnv` for it; ``train_model(name, seed, path)`` refits a
model from real environment data and writes its weights (default ``./<name>.safetensors``; used
by ``torchwm-rl train-model``); ``load(name, path=...)`` loads such a file.

Available models: ``"cartpole"`` (Gymnasium ``CartPole-v1``; see :mod:`torchwm_rl.zoo.cartpole`),
``"pendulum"`` (Gymnasium ``Pendulum-v1``, a 5-member ensemble; see :mod:`torchwm_rl.zoo.pendulum`) and
``"cartpole-pixels"`` (a Dreamer-style RSSM learned from ``CartPole-v1``'s rendered frames; see
:mod:`torchwm_rl.zoo.cartpole_pixels`).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `--help` of the CLI lists the zoo without importing torch
    import torch

from ..options import OPTION_NAMES, check_keywords

__all__ = ["UnknownModelError", "available", "canonical", "load", "make_env", "train_model", "real_env_id", "weights_path",
           "default_train_path", "use_hint"]

# The one list of bundled models: name -> (module path, real Gymnasium id). The CLI's task list,
# its help and its error messages all read it, so adding a model is adding one line here.
_REGISTRY = {
    "cartpole": ("torchwm_rl.zoo.cartpole", "CartPole-v1"),
    "pendulum": ("torchwm_rl.zoo.pendulum", "Pendulum-v1"),
    "cartpole-pixels": ("torchwm_rl.zoo.cartpole_pixels", "CartPole-v1"),
}


class UnknownModelError(KeyError):
    """A name that is not in the zoo; ``str()`` is the one-line message listing what is."""

    def __str__(self) -> str:
        return str(self.args[0])


def available() -> list[str]:
    """Names accepted by :func:`load` / :func:`make_env`."""
    return sorted(_REGISTRY)


def _squash(name: str) -> str:
    return re.sub(r"-v\d+$", "", str(name).lower()).replace("_", "").replace("-", "")


def canonical(name: str) -> str:
    """The registry name for ``name`` (case, ``_``/``-`` and a Gymnasium ``-vN`` suffix are
    ignored: ``CartPole-v1`` -> ``cartpole``, ``cartpole_pixels`` -> ``cartpole-pixels``);
    :class:`UnknownModelError` if there is none."""
    key = {_squash(known): known for known in _REGISTRY}.get(_squash(name))
    if key is None:
        raise UnknownModelError(f"unknown task {name!r}; available: {', '.join(available())}")
    return key


def _module(name: str):
    import importlib

    return importlib.import_module(_REGISTRY[canonical(name)][0])


def real_env_id(name: str) -> str:
    """The Gymnasium id of the real environment the named model imitates."""
    return _REGISTRY[canonical(name)][1]


def weights_path(name: str) -> Path:
    """Where the bundled weights file for ``name`` lives."""
    return _module(name).WEIGHTS_PATH


def load(name: str = "cartpole", path: str | Path | None = None,
         device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a bundled world model (or the given weights file for that model family)."""
    return _module(name).load(path=path, device=device)


def make_env(name: str = "cartpole", model: torch.nn.Module | None = None, **kwargs: Any):
    """Build the :class:`torchwm_rl.WorldModelEnv` for a zoo model.

    Keyword arguments go to the model module's ``make_env`` (``batch_size``, ``seed``,
    ``max_episode_steps``, ``device``); one it does not take is refused naming the closest.
    """
    build = _module(name).make_env
    params = inspect.signature(build).parameters.values()
    own = ("name", *(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)))
    forwards = any(p.kind is p.VAR_KEYWORD for p in params)  # the rest go to WorldModelEnv
    check_keywords("zoo.make_env", kwargs, own, OPTION_NAMES if forwards else ())
    return build(model=model, **kwargs)


def default_train_path(name: str) -> Path:
    """Where :func:`train_model` writes when given no ``path``: ``./<name>.safetensors`` in the
    current directory (absolute), never the bundled file inside the installed package."""
    return Path.cwd() / f"{canonical(name)}.safetensors"


def use_hint(name: str, path: str | Path) -> str:
    """The Python line that builds an env on a rebuilt weights file (printed by ``train-model``)."""
    key = canonical(name)
    return f"zoo.make_env({key!r}, model=zoo.load({key!r}, path={str(path)!r}), batch_size=64)"


def train_model(name: str = "cartpole", seed: int = 0, path: str | Path | None = None,
                verbose: bool = True, **kwargs: Any) -> Path:
    """Collect real data, fit the named model and write it as safetensors; returns the path.

    ``path=None`` writes :func:`default_train_path` (``./<name>.safetensors``); the bundled
    file is only rewritten when asked for by name (``path=zoo.weights_path(name)``). Load the
    result with ``zoo.load(name, path=...)`` (see :func:`use_hint`)."""
    from ..serialization import save_weights

    import importlib

    mod = _module(name)
    # a model module whose training lives elsewhere names it (so the two import one way only)
    trainer = importlib.import_module(mod.TRAIN_MODULE) if hasattr(mod, "TRAIN_MODULE") else mod
    model, meta = trainer.train(seed=seed, verbose=verbose, **kwargs)
    return save_weights(model, Path(path) if path is not None else default_train_path(name), meta)
