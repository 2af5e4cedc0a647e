"""Tensor -> numpy/Python conversions for the Gymnasium and SB3 exports (one place, one copy
per step)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDictBase


def observation_to_numpy(observation: Any, space: spaces.Space) -> Any:
    """A tensor (or dict of tensors) -> numpy array(s) of the space's dtype."""
    if isinstance(space, spaces.Dict):
        return {k: observation_to_numpy(observation[k], sub) for k, sub in space.spaces.items()}
    array = observation.detach().cpu().numpy()
    if space.dtype is not None and array.dtype != space.dtype:
        return array.astype(space.dtype)  # a copy
    return _unshared(array, observation)


def _unshared(array: np.ndarray, tensor: torch.Tensor) -> np.ndarray:
    """``array`` (from ``tensor.numpy()``) as memory the caller owns. ``.numpy()`` of a CPU
    tensor shares the tensor's memory, so a caller writing into it (``obs /= 255``) would change
    the env's observation, and the model state when the state is the observation. Gymnasium's
    vector envs and SB3's VecEnvs hand out copies too."""
    return array.copy() if tensor.device.type == "cpu" else array


def detach_tree(value: Any) -> Any:
    """Every tensor in a (nested) dict/list/TensorDict -> a detached numpy copy; other values
    as they are. Infos handed to Gymnasium/SB3 must hold no autograd graph, and numpy keeps
    Gymnasium's ``check_env`` determinism comparisons (which use ``==``) well defined."""
    if isinstance(value, torch.Tensor):
        return _unshared(value.detach().cpu().numpy(), value)
    if isinstance(value, TensorDictBase):
        return detach_tree(value.to_dict())
    if isinstance(value, Mapping):
        return {k: detach_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(detach_tree(v) for v in value)
    return value


def image_hwc(frame: Any) -> Any:
    """A channel-first (C,H,W) uint8 image with C in {1,3,4} -> (H,W,C) for ``render()``."""
    array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    return array
