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
    array = (observation.detach() if observation.requires_grad else observation).cpu().numpy()
    if space.dtype is not None and array.dtype != space.dtype:
        return array.astype(space.dtype)  # a copy
    return _unshared(array, observation)


def _unshared(array: np.ndarray, tensor: torch.Tensor) -> np.ndarray:
    """``array`` (from ``tensor.numpy()``) as memory the caller owns. ``.numpy()`` of a CPU
    tensor shares the tensor's memory, so a caller writing into it (``obs /= 255``) would change
    the env's observation, and the model state when the state is the observation. Gymnasium's
    vector envs and SB3's VecEnvs hand out copies too."""
    return array.copy() if tensor.device.type == "cpu" else array


_NUMPY_CAN_HOLD: dict = {}


def numpy_can_hold(dtype: torch.dtype) -> bool:
    """Whether numpy has ``dtype`` (it has no bfloat16, complex32 or float8 types)."""
    known = _NUMPY_CAN_HOLD.get(dtype)
    if known is None:
        try:
            torch.empty(0, dtype=dtype).numpy()
            known = True
        except (TypeError, RuntimeError):
            known = False
        _NUMPY_CAN_HOLD[dtype] = known
    return known


def detach_tree(value: Any) -> Any:
    """Every tensor in a (nested) dict/list/TensorDict -> a detached numpy copy; other values
    as they are. Infos handed to Gymnasium/SB3 must hold no autograd graph, and numpy keeps
    Gymnasium's ``check_env`` determinism comparisons (which use ``==``) well defined. A tensor
    of a dtype numpy lacks (a bfloat16 latent in ``info["model_state"]``) stays a tensor: a
    detached CPU copy of its own dtype, as a float32 array would silently change the dtype the
    model uses (``.float()`` it in the hook if numpy is wanted)."""
    if isinstance(value, torch.Tensor):
        if not numpy_can_hold(value.dtype):
            copy = value.detach()
            return copy.clone() if copy.device.type == "cpu" else copy.cpu()
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


# ------------------------------------------------------------------------ batched infos
# A batched hook returns ONE info dict for all N envs. An entry whose leading dim is N is read as
# one row per env; any other entry holds for every env. The exports hand these out in each
# library's layout: SB3 wants one dict per env, Gymnasium's vector API one array per key plus a
# ``"_key"`` mask of the envs that have it.


def observation_row(observation: Any, i: int) -> Any:
    """Env ``i``'s row of a batched (numpy) observation, a Dict observation key by key."""
    if isinstance(observation, dict):
        return {k: observation_row(v, i) for k, v in observation.items()}
    return observation[i]


def rendered_frames(adapter: Any, snapshot: Any) -> list:
    """One HWC frame per env of a batched snapshot (the adapter's render, no gradients); the
    vector and SB3 exports' ``render``/``get_images``."""
    with torch.no_grad():
        frames = adapter.render(snapshot.state, snapshot.observation)
    return [image_hwc(f) for f in frames]


def _is_rows(value: Any, n: int) -> bool:
    """One row per env: an array (or a tensor numpy cannot hold, see :func:`detach_tree`) whose
    leading dim is ``n``."""
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim > 0 and value.shape[0] == n


def _where_rows(rows: np.ndarray, value: Any, other: Any) -> Any:
    """Rows of ``value`` where ``rows`` (bool, shape ``(n,)``), of ``other`` elsewhere (numpy
    arrays, or tensors)."""
    if isinstance(value, torch.Tensor):
        mask = torch.as_tensor(rows, device=value.device).reshape(-1, *[1] * (value.ndim - 1))
        return torch.where(mask, value, other)
    return np.where(rows.reshape(-1, *[1] * (value.ndim - 1)), value, other)


def info_row(info: Mapping, n: int, i: int) -> dict:
    """Env ``i``'s share of a batched (already :func:`detach_tree`-d) info. A row is an array
    (0-d for a scalar per env, as a single env's 0-d tensor gives)."""
    return {
        k: info_row(v, n, i) if isinstance(v, Mapping) else (v[i, ...] if _is_rows(v, n) else v)
        for k, v in info.items()
    }


def per_env_infos(info: Mapping, n: int) -> list:
    """A batched hook's info -> one dict per env (SB3's layout)."""
    if not info:
        return [{} for _ in range(n)]
    info = detach_tree(info)
    return [info_row(info, n, i) for i in range(n)]


def vector_info(info: Mapping, n: int, rows: np.ndarray) -> dict:
    """A batched (already :func:`detach_tree`-d) info in Gymnasium's vector layout, for the envs
    in ``rows`` (bool, shape ``(n,)``).

    The arrays are those ``gymnasium.vector.VectorEnv._add_info`` builds one env at a time
    (typed for Python/numpy scalars and arrays, ``object`` otherwise, zero/None outside
    ``rows``); built here in one go because a batched info already holds the rows. No env in
    ``rows``: no entries at all, as in Gymnasium.
    """
    out: dict = {}
    if not rows.any():
        return out
    for key in info:
        if isinstance(key, str) and key.startswith("_") and key[1:] in info:
            raise ValueError(
                f"info: keys {key[1:]!r} and {key!r} collide: Gymnasium's vector infos use {key!r} for the "
                f"mask of the envs that have {key[1:]!r}; rename {key!r}"
            )
    for key, value in info.items():
        if isinstance(value, Mapping):
            out[key] = vector_info(value, n, rows)
        elif _is_rows(value, n):
            zeros = torch.zeros_like(value) if isinstance(value, torch.Tensor) else np.zeros_like(value)
            out[key] = _where_rows(rows, value, zeros)
        elif type(value) in (int, float, bool) or isinstance(value, (np.number, np.bool_)):
            out[key] = np.where(rows, value, np.zeros((), dtype=type(value)))
        elif isinstance(value, np.ndarray):
            out[key] = np.where(rows.reshape(-1, *[1] * value.ndim), value[None], np.zeros_like(value)[None])
        else:
            out[key] = np.full(n, None, dtype=object)
            for i in np.flatnonzero(rows):
                out[key][i] = value
        out[f"_{key}"] = rows.copy()
    return out


def merge_vector_infos(first: dict, second: dict) -> dict:
    """Two vector-layout infos over disjoint sets of envs -> one (each env keeps its own)."""
    out = dict(first)
    for key, value in second.items():
        if key not in out:
            out[key] = value
            continue
        if key.startswith("_"):  # a mask: the envs of both sides have the key
            out[key] = out[key] | value
            continue
        mine = second[f"_{key}"]
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = merge_vector_infos(out[key], value)
        elif (type(value) is type(out[key]) and isinstance(value, (np.ndarray, torch.Tensor))
              and value.shape == out[key].shape and value.dtype == out[key].dtype):
            out[key] = _where_rows(mine, value, out[key])
        else:  # different kinds for different envs: one object per env
            merged = np.full(len(mine), None, dtype=object)
            theirs = first.get(f"_{key}", np.zeros(len(mine), dtype=bool))
            for i in range(len(mine)):
                merged[i] = value[i] if mine[i] else (out[key][i] if theirs[i] else None)
            out[key] = merged
    return out
