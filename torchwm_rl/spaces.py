"""Gymnasium spaces <-> TorchRL TensorSpecs, both directions, with leading batch dims.

TorchRL ships converters in ``torchrl.envs.libs.gym`` but they are private, map Discrete to
one-hot by default and rename a Dict ``"state"`` key to ``"observation"``; this package needs
categorical actions, Dict keys kept at the root as named, and exact round trips, so the small
mapping is written out here.

Supported: Box (any float/int dtype, images included), Discrete, MultiDiscrete, MultiBinary and
(nested) Dict.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from gymnasium import spaces
from torchrl.data import Binary, Bounded, Categorical, Composite, MultiCategorical, TensorSpec, Unbounded

__all__ = ["space_to_spec", "spec_to_space", "as_space", "numpy_to_torch_dtype", "torch_to_numpy_dtype"]


@functools.lru_cache(maxsize=None)  # called per step by validation; dtypes are few
def numpy_to_torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype


def torch_to_numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.zeros(0, dtype=dtype).numpy().dtype


def space_to_spec(space: spaces.Space, batch_size=(), device=None) -> TensorSpec:
    """The TorchRL spec of ``space`` with leading ``batch_size`` dims.

    Discrete becomes :class:`~torchrl.data.Categorical` (integer index, as Gymnasium).
    """
    batch = tuple(batch_size)
    if isinstance(space, spaces.Dict):
        return Composite(
            {k: space_to_spec(sub, batch, device) for k, sub in space.spaces.items()},
            shape=batch,
            device=device,
        )
    if isinstance(space, spaces.Box):
        dtype = numpy_to_torch_dtype(space.dtype)
        shape = (*batch, *space.shape)
        low, high = np.broadcast_to(space.low, space.shape), np.broadcast_to(space.high, space.shape)
        if np.all(np.isinf(low)) and np.all(np.isinf(high)):
            return Unbounded(shape=shape, dtype=dtype, device=device)
        low_t = torch.as_tensor(np.array(low), dtype=dtype).expand(shape).clone()
        high_t = torch.as_tensor(np.array(high), dtype=dtype).expand(shape).clone()
        return Bounded(low_t, high_t, shape=shape, dtype=dtype, device=device)
    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"Discrete spaces must start at 0 to map to a TorchRL spec, got start={space.start}")
        return Categorical(int(space.n), shape=batch, dtype=torch.int64, device=device)
    if isinstance(space, spaces.MultiDiscrete):
        nvec = torch.as_tensor(np.array(space.nvec), dtype=torch.int64)
        if nvec.ndim != 1:
            raise ValueError(f"only 1-d MultiDiscrete spaces are supported, got nvec shape {tuple(nvec.shape)}")
        # remove_singleton=False: TorchRL's default squeezes rand() of a 1-element spec to ()
        return MultiCategorical(
            nvec, shape=(*batch, *space.shape), dtype=torch.int64, device=device, remove_singleton=False
        )
    if isinstance(space, spaces.MultiBinary):
        shape = (*batch, *space.shape)
        return Binary(n=space.shape[-1], shape=shape, dtype=torch.int8, device=device)
    raise TypeError(f"unsupported space {space!r}: use Box, Discrete, MultiDiscrete, MultiBinary or Dict")


def spec_to_space(spec: TensorSpec, batch_ndim: int = 0) -> spaces.Space:
    """The Gymnasium space of one env for ``spec``, dropping ``batch_ndim`` leading dims."""
    if isinstance(spec, Composite):
        return spaces.Dict({k: spec_to_space(sub, batch_ndim) for k, sub in spec.items()})
    shape = tuple(spec.shape)[batch_ndim:]
    if isinstance(spec, Binary):
        return spaces.MultiBinary(list(shape) if len(shape) > 1 else shape[-1])
    if isinstance(spec, MultiCategorical):
        nvec = spec.nvec
        while nvec.ndim > 1:
            nvec = nvec[0]
        return spaces.MultiDiscrete(nvec.cpu().numpy().astype(np.int64))
    if isinstance(spec, Categorical):
        if shape:
            raise ValueError(f"Categorical spec with per-env shape {shape} has no Gymnasium equivalent")
        return spaces.Discrete(int(spec.n))
    dtype = torch_to_numpy_dtype(spec.dtype)
    if isinstance(spec, Bounded):
        index = (0,) * batch_ndim
        low = spec.space.low[index].cpu().numpy().astype(dtype)
        high = spec.space.high[index].cpu().numpy().astype(dtype)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if isinstance(spec, Unbounded):
        if np.issubdtype(dtype, np.floating):
            return spaces.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
        info = np.iinfo(dtype)
        return spaces.Box(info.min, info.max, shape=shape, dtype=dtype)
    raise TypeError(f"unsupported spec {type(spec).__name__}: no Gymnasium space maps to it")


SUPPORTED = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def check_supported(space: spaces.Space, name: str) -> None:
    """Refuse, at construction, a space no path can carry (Tuple, Sequence, Text, Graph, ...):
    every value is checked against the space, and these have no tensor form here."""
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            check_supported(sub, f"{name}[{key!r}]")
    elif not isinstance(space, SUPPORTED):
        raise TypeError(
            f"{name}: {type(space).__name__} spaces are not supported ({space!r}); use Box, Discrete, "
            "MultiDiscrete, MultiBinary or a Dict of them"
        )


def as_space(space_or_spec, name: str, batch_ndim: int = 0) -> spaces.Space:
    """Accept a Gymnasium space, a TorchRL spec (with ``batch_ndim`` leading dims) or a
    mapping of either (a Dict); return the Gymnasium space."""
    if isinstance(space_or_spec, spaces.Space):
        return space_or_spec
    if isinstance(space_or_spec, TensorSpec):
        return spec_to_space(space_or_spec, batch_ndim)
    if isinstance(space_or_spec, Mapping):
        return spaces.Dict({k: as_space(v, f"{name}[{k!r}]", batch_ndim) for k, v in space_or_spec.items()})
    raise TypeError(f"{name}: expected a gymnasium space or a TorchRL spec, got {type(space_or_spec).__name__}")
