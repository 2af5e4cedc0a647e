"""Gymnasium spaces <-> TorchRL TensorSpecs, both directions, with leading batch dims.

TorchRL ships converters in ``torchrl.envs.libs.gym`` but they are private, map Discrete to
one-hot by default and rename a Dict ``"state"`` key to ``"observation"``; this package needs
categorical actions, Dict keys kept at the root as named, and exact round trips, so the small
mapping is written out here.

Supported: Box (any float/int dtype, images included), Discrete, MultiDiscrete (any nvec shape),
MultiBinary and (nested) Dict.

Faithful: every spec's random samples (``rand()``, used by rollouts without a policy, collectors'
random frames, ``rand_action`` and planners) lie in the space and are finite. TorchRL's
``Bounded`` samples uniformly between its bounds, which gives inf/NaN for a float Box with an
infinite bound (``Box(0, inf)``, per-element mixes) and only the bounds for a range too wide for
the dtype (``Box(-3e38, 3e38, float32)``); those Boxes map to :class:`BoxSpec`, a ``Bounded``
that samples as Gymnasium's ``Box.sample`` does. Spaces no TorchRL spec samples faithfully
(``Discrete`` / ``MultiDiscrete`` with a ``start``, a Box with no finite value) are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from gymnasium import spaces
from torchrl.data import Binary, Bounded, BoundedContinuous, Categorical, Composite, MultiCategorical, TensorSpec
from torchrl.data import Unbounded
from torchrl.data.tensor_specs import _BoundedMeta

__all__ = ["space_to_spec", "spec_to_space", "as_space", "numpy_to_torch_dtype", "torch_to_numpy_dtype", "BoxSpec"]


@functools.lru_cache(maxsize=None)  # called per step by validation; dtypes are few
def numpy_to_torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype


def torch_to_numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.zeros(0, dtype=dtype).numpy().dtype


class _KeepSubclass(_BoundedMeta):
    # TorchRL's metaclass resets every Bounded instance's class to BoundedContinuous or
    # BoundedDiscrete, which would drop BoxSpec's sampling; keep the subclass asked for.
    def __call__(cls, *args, **kwargs):
        instance = super().__call__(*args, **kwargs)
        instance.__class__ = cls
        return instance


class BoxSpec(BoundedContinuous, metaclass=_KeepSubclass):
    """A float ``Bounded`` spec whose ``rand()`` samples as Gymnasium's ``Box.sample``: uniform
    where both bounds are finite (without overflow when ``high - low`` exceeds the dtype's range),
    ``low + Exp(1)`` where only ``low`` is, ``high - Exp(1)`` where only ``high`` is, ``N(0, 1)``
    where neither; every sample is finite and within the bounds. Everything else (``is_in``,
    ``project``, bounds, expand/clone/index/stack) is TorchRL's ``Bounded``: a hand-written sampler
    because no TorchRL spec samples a half-bounded box (``Bounded`` gives inf/NaN there).

    Draws use the global torch RNG, as every TorchRL spec's ``rand`` does."""

    def rand(self, shape: torch.Size = None) -> torch.Tensor:
        full = (*(shape or ()), *self._safe_shape)
        # float16 has no exponential_/randn on every device and overflows early: draw in float32
        work = torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype
        low = self.space.low.to(work).expand(full)
        high = self.space.high.to(work).expand(full)
        finite_low, finite_high = torch.isfinite(low), torch.isfinite(high)
        u = torch.rand(full, dtype=work, device=self.device)
        uniform = low * (1 - u) + high * u  # not low + u * (high - low): that overflows
        exp = torch.empty(full, dtype=work, device=self.device).exponential_()
        normal = torch.randn(full, dtype=work, device=self.device)
        out = torch.where(
            finite_low & finite_high,
            uniform,
            torch.where(finite_low, low + exp, torch.where(finite_high, high - exp, normal)),
        )
        # rounding (and low + exp near the dtype's max) must not leave the box nor reach inf
        info = torch.finfo(self.dtype)
        out = torch.maximum(torch.minimum(out, high.clamp(max=info.max)), low.clamp(min=info.min))
        return out.to(self.dtype)

    def to(self, dest) -> Bounded:
        # Bounded.to builds a plain Bounded: keep the sampler on a move to another device
        moved = super().to(dest)
        if moved is self or not moved.dtype.is_floating_point:
            return moved
        return BoxSpec(low=moved.space.low, high=moved.space.high, shape=moved.shape, device=moved.device,
                       dtype=moved.dtype)


class OneElementMultiCategorical(MultiCategorical):
    """A ``MultiCategorical`` of one element whose samples keep their ``[..., 1]`` shape.

    TorchRL squeezes ``rand()`` of a ``[1]`` MultiCategorical to ``()`` unless
    ``remove_singleton=False``, and its clone / expand / to / indexing rebuild the spec with the
    default ``True`` (so a TransformedEnv's cloned action spec sampled shape ``()`` actions):
    this subclass makes ``False`` the default, which every rebuild then keeps."""

    def __init__(self, nvec, shape=None, device=None, dtype=torch.int64, mask=None, remove_singleton: bool = False):
        super().__init__(nvec, shape=shape, device=device, dtype=dtype, mask=mask, remove_singleton=remove_singleton)


def _needs_box_spec(low: np.ndarray, high: np.ndarray) -> bool:
    """Whether TorchRL's uniform ``Bounded.rand`` leaves this float box or the finite numbers:
    an infinite bound, or a range ``high - low`` that overflows the dtype."""
    with np.errstate(over="ignore", invalid="ignore"):
        return not np.all(np.isfinite(high - low))


def space_to_spec(space: spaces.Space, batch_size=(), device=None, name: str = "space") -> TensorSpec:
    """The TorchRL spec of ``space`` with leading ``batch_size`` dims; its ``rand()`` samples lie
    in ``space`` and are finite. A space no spec samples faithfully raises a ``ValueError``
    naming ``name`` (e.g. ``"action_space['mode']"``).

    Discrete becomes :class:`~torchrl.data.Categorical` (integer index, as Gymnasium).
    """
    batch = tuple(batch_size)
    if isinstance(space, spaces.Dict):
        return Composite(
            {k: space_to_spec(sub, batch, device, f"{name}[{k!r}]") for k, sub in space.spaces.items()},
            shape=batch,
            device=device,
        )
    if isinstance(space, spaces.Box):
        dtype = numpy_to_torch_dtype(space.dtype)
        shape = (*batch, *space.shape)
        low, high = np.broadcast_to(space.low, space.shape), np.broadcast_to(space.high, space.shape)
        if np.any(low == np.inf) or np.any(high == -np.inf):
            raise ValueError(
                f"{name}: {space!r} has an element with no finite value (low=+inf or high=-inf): "
                "no finite sample lies in it; give finite bounds on one side at least"
            )
        if np.all(np.isinf(low)) and np.all(np.isinf(high)):
            return Unbounded(shape=shape, dtype=dtype, device=device)
        low_t = torch.as_tensor(np.array(low), dtype=dtype).expand(shape).clone()
        high_t = torch.as_tensor(np.array(high), dtype=dtype).expand(shape).clone()
        kind = BoxSpec if dtype.is_floating_point and _needs_box_spec(low, high) else Bounded
        return kind(low_t, high_t, shape=shape, dtype=dtype, device=device)
    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(
                f"{name}: {space!r} starts at {int(space.start)}; TorchRL's Categorical spec counts from 0, "
                "so its samples would lie outside the space. Use Discrete(n) and add the offset in the hooks"
            )
        return Categorical(int(space.n), shape=batch, dtype=torch.int64, device=device)
    if isinstance(space, spaces.MultiDiscrete):
        if np.any(space.start != 0):
            raise ValueError(
                f"{name}: {space!r} has start={space.start.tolist()}; TorchRL's MultiCategorical spec counts "
                "from 0, so its samples would lie outside the space. Use MultiDiscrete(nvec) and add the "
                "offset in the hooks"
            )
        shape = (*batch, *space.shape)
        nvec = torch.as_tensor(np.array(space.nvec), dtype=torch.int64).expand(shape).clone()
        kind = OneElementMultiCategorical if space.nvec.size == 1 else MultiCategorical
        return kind(nvec, shape=shape, dtype=torch.int64, device=device, remove_singleton=False)
    if isinstance(space, spaces.MultiBinary):
        shape = (*batch, *space.shape)
        return Binary(n=space.shape[-1], shape=shape, dtype=torch.int8, device=device)
    raise TypeError(f"{name}: unsupported space {space!r}: use Box, Discrete, MultiDiscrete, MultiBinary or Dict")


def spec_to_space(spec: TensorSpec, batch_ndim: int = 0) -> spaces.Space:
    """The Gymnasium space of one env for ``spec``, dropping ``batch_ndim`` leading dims."""
    if isinstance(spec, Composite):
        return spaces.Dict({k: spec_to_space(sub, batch_ndim) for k, sub in spec.items()})
    shape = tuple(spec.shape)[batch_ndim:]
    if isinstance(spec, Binary):
        return spaces.MultiBinary(list(shape) if len(shape) > 1 else shape[-1])
    if isinstance(spec, MultiCategorical):
        nvec = spec.nvec.expand(spec.shape)[(0,) * batch_ndim]
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
