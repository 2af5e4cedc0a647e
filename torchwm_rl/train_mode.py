"""World models left in training mode: the modules whose output then depends on the batch or on
random draws, found so that ``torchwm-rl check`` and env construction can say so.

A model fitted and then wrapped without ``model.eval()`` keeps BatchNorm in training mode: each
step normalizes with the statistics of the batch of envs stepped together (env i's next state
depends on env j's, and on how many envs there are) and updates the running statistics (every
step changes the model). Dropout in training mode zeroes random units at every step. Neither is
an error PyTorch can see, so the env looks for them.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

__all__ = ["TrainModeWarning", "modules_in_training", "warn_if_training"]


class TrainModeWarning(UserWarning):
    """A world model holds BatchNorm / Dropout modules in training mode (see module docs);
    filter this class to silence it where that is meant (a model trained and stepped in turn)."""


def _mode_sensitive(module: nn.Module) -> bool:
    """Whether ``module`` computes differently in training mode (its own forward, not its
    children's): batch statistics or random dropout."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones
        return True
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):  # only with running stats
        return bool(module.track_running_stats)
    if isinstance(module, nn.modules.dropout._DropoutNd):  # Dropout*, AlphaDropout, FeatureAlphaDropout
        return module.p > 0
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):  # their own dropout argument
        return module.dropout > 0
    return False


def _roots(model: Any) -> list[tuple[str, nn.Module]]:
    """The modules a model is or holds: itself, or (a plain object holding networks) its
    attributes that are modules. Modules that hooks reach otherwise (closures) are not seen."""
    if isinstance(model, nn.Module):
        return [("model", model)]
    try:
        attributes = vars(model)
    except TypeError:
        return []
    return [(f"model.{name}", value) for name, value in attributes.items() if isinstance(value, nn.Module)]


def modules_in_training(model: Any) -> list[str]:
    """Names (``"model.net.3 (BatchNorm1d)"``) of the model's mode-sensitive modules that are in
    training mode; empty when there are none or every one is in eval mode."""
    found, seen = [], set()
    for root_name, root in _roots(model):
        for name, module in root.named_modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            if module.training and _mode_sensitive(module):
                path = f"{root_name}.{name}" if name else root_name
                found.append(f"{path} ({type(module).__name__})")
    return found


def train_mode_message(found: list[str]) -> str:
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (
        f"the world model has BatchNorm/Dropout modules in training mode: {shown}. Stepped so, BatchNorm "
        "normalizes each step with the statistics of the envs stepped together (envs influence each other) "
        "and updates its running statistics, and Dropout draws new masks every step. Call model.eval() "
        "before stepping the env (and model.train() only while fitting it)"
    )


def warn_if_training(model: Any, stacklevel: int = 3) -> None:
    """A :class:`TrainModeWarning` when :func:`modules_in_training` finds any (shown once per
    process under Python's default filter). Construction only: nothing per step."""
    found = modules_in_training(model)
    if found:
        warnings.warn(train_mode_message(found), TrainModeWarning, stacklevel=stacklevel)
