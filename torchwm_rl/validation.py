"""Convert adapter outputs to tensors and check them against the spaces.

Shared by every path (TorchRL, Gymnasium, vector, SB3): each value passes through here once,
so an error names the same key, expected and received shape/dtype whichever path runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDictBase

from .errors import TypeMismatch, ValueMismatch
from .spaces import numpy_to_torch_dtype


def _as_tensor(value: Any, device: torch.device, key: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``value`` as a tensor on ``device`` (a tensor as is); a complex or non-numeric value is
    refused. A numpy array is copied unless a cast to ``dtype`` (where given) will copy it."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():  # a cast to a real dtype would drop the imaginary part
            raise TypeMismatch(f"{key}: expected real numbers, got a complex tensor ({value.dtype})",
                               key=key, expected="real numbers", got=value.dtype)
        return value if value.device == device else value.to(device)
    try:
        array = np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic objects
        raise TypeMismatch(f"{key}: cannot convert {type(value).__name__} to a tensor",
                           key=key, expected="a tensor", got=type(value).__name__) from err
    if array.dtype.kind not in "biuf":  # object, str, bytes, datetime, complex: not a number
        raise TypeMismatch(
            f"{key}: expected numbers, got {type(value).__name__} (numpy dtype {array.dtype})",
            key=key, expected="numbers", got=array.dtype,
        )
    # torch takes neither byte-swapped arrays nor negative strides (a flipped view); both
    # read unambiguously, so convert them (one copy) rather than fail with torch's message
    copied = False
    if not array.dtype.isnative:
        array, copied = array.astype(array.dtype.newbyteorder("=")), True
    if any(stride < 0 for stride in array.strides):
        array, copied = np.ascontiguousarray(array), True
    tensor = torch.as_tensor(array, device=device)
    if isinstance(value, np.ndarray) and not copied and tensor.device.type == "cpu" and (dtype is None or tensor.dtype == dtype):
        # torch.as_tensor shares the hook's numpy memory: a model that refills one numpy
        # buffer every step would rewrite every observation recorded from it, and no version
        # counter sees numpy writes. The env keeps a copy of its own.
        tensor = tensor.clone()
    return tensor


def cast_keeping_value(tensor: torch.Tensor, dtype: torch.dtype, key: str,
                       rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``tensor`` cast to ``dtype``, or an error when the cast would change a value silently:
    a float for an integer or bool dtype (truncation), an integer that does not fit a narrower
    integer dtype (300 -> 44 in uint8), an integer other than 0/1 for bool, a finite value that
    overflows a narrower float dtype (1e300 -> inf in float32, 7e4 -> inf in float16). The one
    cast every value from a hook goes through. ``rows`` (bool, over the leading dims): only
    those rows are checked (a partial reset's unused rows may hold anything)."""
    if tensor.dtype == dtype:
        return tensor
    if tensor.is_floating_point() and not dtype.is_floating_point:
        raise TypeMismatch(f"{key}: expected dtype {dtype}, got floating dtype {tensor.dtype}",
                           key=key, expected=dtype, got=tensor.dtype)
    checked = tensor if rows is None else tensor[rows]
    if not dtype.is_floating_point and checked.numel() and not _fits(tensor.dtype, dtype):
        if dtype is torch.bool:  # 0/1 integers are bools; a 2 is a count or an index
            odd = (checked != 0) & (checked != 1)
            if bool(odd.any()):
                values = sorted(set(checked[odd].tolist()))[:5]
                raise ValueMismatch(f"{key}: expected bools (or integers 0/1), got {tensor.dtype} values {values}",
                                    key=key, expected=(0, 1), got=values)
        else:
            _check_integer_range(checked, dtype, key)
    cast = tensor.to(dtype)
    if dtype.is_floating_point and checked.numel() and (
            not tensor.is_floating_point() or torch.finfo(dtype).max < torch.finfo(tensor.dtype).max):
        if not tensor.is_floating_point() and torch.finfo(dtype).max >= 2.0 ** 64:
            return cast  # every integer fits (float32 and wider, bfloat16)
        _check_float_range(checked, cast if rows is None else cast[rows], key)
    return cast


def as_mapping(value: Any) -> Any:
    """A TensorDict as the dict of its top-level entries (a nested TensorDict stays one); any
    other value as is. TorchRL users return TensorDicts where a dict is expected: they read
    the same."""
    if isinstance(value, TensorDictBase):
        return {k: value.get(k) for k in value.keys()}
    return value


def _check_dict_keys(value: Any, space: spaces.Dict, key: str, what: str) -> None:
    """``value`` must be a mapping with exactly the Dict space's keys."""
    if not isinstance(value, Mapping):
        raise TypeMismatch(f"{key}: the {what} space is a Dict with keys {list(space.spaces)}, got {type(value).__name__}",
                           key=key, expected=list(space.spaces), got=type(value).__name__)
    keys = list(value.keys())  # not iter(value): a TensorDict iterates over its rows
    missing = [k for k in space.spaces if k not in keys]
    extra = [k for k in keys if k not in space.spaces]
    if missing or extra:
        raise ValueMismatch(f"{key}: Dict {what} keys differ: missing {missing}, unexpected {extra}",
                            key=key, expected=list(space.spaces), got=keys)


def to_observation(
    value: Any, space: spaces.Space, batch_shape: tuple, device: torch.device, key: str = "observation",
    rows: Optional[torch.Tensor] = None,
) -> Any:
    """Return ``value`` as a tensor (or dict of tensors for Dict spaces) of the space's dtype.

    Floats of another precision (and integers) are cast to a float space's dtype; a float value
    for an integer space is refused, and so is any cast that would change a value
    (:func:`cast_keeping_value`). Shapes must be ``(*batch_shape, *space.shape)`` exactly. A
    TensorDict for a Dict space reads as the dict of its entries. ``rows``: see
    :func:`cast_keeping_value`.
    """
    if isinstance(space, spaces.Dict):
        value = as_mapping(value)
        _check_dict_keys(value, space, key, "observation")
        return {
            k: to_observation(value[k], sub, batch_shape, device, f"{key}[{k!r}]", rows)
            for k, sub in space.spaces.items()
        }
    expected = (*batch_shape, *space.shape)
    dtype = numpy_to_torch_dtype(space.dtype)
    if isinstance(value, torch.Tensor) and value.dtype == dtype and value.shape == expected and value.device == device:
        return value  # already what the space asks for (the per-step common case)
    tensor = _as_tensor(value, device, key, dtype)
    if tuple(tensor.shape) != expected:
        raise ValueMismatch(f"{key}: expected shape {expected}, got {tuple(tensor.shape)}",
                            key=key, expected=expected, got=tuple(tensor.shape))
    return cast_keeping_value(tensor, dtype, key, rows)


def _fits(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether every value of the integer (or bool) dtype ``source`` is one of integer ``target``."""
    if source is torch.bool:
        return True
    if target is torch.bool:
        return False
    a, b = torch.iinfo(source), torch.iinfo(target)
    return b.min <= a.min and a.max <= b.max


def _check_integer_range(tensor: torch.Tensor, dtype: torch.dtype, key: str) -> None:
    """An integer cast to a narrower integer dtype must not wrap (300 -> 44 in uint8)."""
    info = torch.iinfo(dtype)
    # min/max are not implemented for torch's uint16/32/64: compare in a type that has them
    wide = tensor if tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool) \
        else tensor.to(torch.float64)
    low, high = wide.min().item(), wide.max().item()
    if low < info.min or high > info.max:
        raise ValueMismatch(
            f"{key}: values in [{int(low)}, {int(high)}] ({tensor.dtype}) do not fit the space's dtype "
            f"{dtype} [{info.min}, {info.max}]",
            key=key, expected=(info.min, info.max), got=(int(low), int(high)),
        )


def _check_float_range(tensor: torch.Tensor, cast: torch.Tensor, key: str) -> None:
    """A finite value must stay finite when cast to the space's narrower float dtype (1e300 in
    float64 is inf in float32): say so, rather than report it later as NaN/inf."""
    overflow = torch.isfinite(tensor) & ~torch.isfinite(cast)
    if bool(overflow.any()):
        worst = tensor[overflow].abs().max().item()
        raise ValueMismatch(
            f"{key}: finite values up to {worst:.3g} ({tensor.dtype}) overflow the space's dtype {cast.dtype} "
            f"(max {torch.finfo(cast.dtype).max:.3g})",
            key=key, expected=torch.finfo(cast.dtype).max, got=worst,
        )


def to_batched_scalar(
    value: Any, batch_shape: tuple, device: torch.device, dtype: torch.dtype, key: str
) -> torch.Tensor:
    """A reward or flag: shape ``batch_shape`` (``(*batch, 1)`` is accepted and squeezed).

    In a batched env every per-env value must carry the batch dimension: a scalar (Python,
    numpy or 0-d tensor) is refused, because it usually means the hook reduced over the batch
    (``float(x.mean())``, ``np.any(...)``) and broadcasting it would give every env one env's
    value. An unbatched env takes a scalar or a one-element array.
    """
    if isinstance(value, torch.Tensor) and value.dtype == dtype and value.shape == batch_shape and value.device == device:
        return value  # already a flag/reward of the batch (the per-step common case)
    tensor = _as_tensor(value, device, key, dtype)
    shape = tuple(tensor.shape)
    if shape != batch_shape:
        if shape == (*batch_shape, 1) or (not batch_shape and tensor.numel() == 1 and len(shape) <= 1):
            tensor = tensor.reshape(batch_shape)
        elif batch_shape and not shape:
            raise ValueMismatch(
                f"{key}: a batched env needs one value per env, shape {batch_shape} or "
                f"{(*batch_shape, 1)}; got a scalar ({type(value).__name__}). One value for the "
                "whole batch would be given to every env: compute it per env (reduce over the "
                "non-batch dims only, e.g. x.sum(-1) or (x[..., 0] > 2))",
                key=key, expected=batch_shape, got=shape,
            )
        else:
            what = "a scalar" if not batch_shape else f"shape {batch_shape} or {(*batch_shape, 1)}"
            raise ValueMismatch(f"{key}: expected {what}, got shape {shape}", key=key, expected=batch_shape, got=shape)
    if dtype is torch.bool:
        if tensor.is_floating_point():
            raise TypeMismatch(f"{key}: expected a bool flag, got floating dtype {tensor.dtype}",
                               key=key, expected=torch.bool, got=tensor.dtype)
        if tensor.dtype is not torch.bool:
            # 0/1 integers are flags; a 2 is more likely a count or an index than "True"
            odd = (tensor != 0) & (tensor != 1)
            if bool(odd.any()):
                values = sorted(set(tensor[odd].tolist()))[:5]
                raise ValueMismatch(f"{key}: expected a bool flag (or integers 0/1), got {tensor.dtype} values {values}",
                                    key=key, expected=(0, 1), got=values)
        return tensor.bool()
    return cast_keeping_value(tensor, dtype, key)


def to_probability(value: Any, batch_shape: tuple, device: torch.device, key: str) -> tuple:
    """A probability per env (``continue_fn``'s output): ``(float32 [*batch], the tensor as
    returned, reshaped to [*batch])``. Shapes as for a reward (:func:`to_batched_scalar`:
    ``[*batch]`` or ``[*batch, 1]``; a scalar only for an unbatched env). A bool or integer
    dtype is refused: a bool is a terminal flag, not a probability. The values (in [0, 1],
    finite) are not read here (no host sync): :func:`probability_check` gives the tensor the
    step's one NaN/inf check reads. Gradients flow through both outputs."""
    tensor = _as_tensor(value, device, key)
    if tensor.dtype == torch.bool:
        raise TypeMismatch(
            f"{key}: expected the probability of continuing (floats in [0, 1]), got bool values: a bool is "
            "almost surely a terminal flag (True: the episode ends) given to the wrong hook; pass it as terminal_fn, "
            "or return the probability itself (e.g. torch.sigmoid(logits) of a continue head)",
            key=key, expected="floats in [0, 1]", got=tensor.dtype,
        )
    if not tensor.is_floating_point():
        raise TypeMismatch(
            f"{key}: expected the probability of continuing as floats in [0, 1], got dtype {tensor.dtype}; "
            "return floats (1.0 rather than 1)",
            key=key, expected="floats in [0, 1]", got=tensor.dtype,
        )
    raw = to_batched_scalar(tensor, batch_shape, device, tensor.dtype, key)
    return (raw if raw.dtype == torch.float32 else raw.to(torch.float32)), raw


def probability_check(raw: torch.Tensor) -> torch.Tensor:
    """A tensor that is finite exactly where ``raw`` lies in [0, 1], for the step's one NaN/inf
    check (no host sync here): ``sqrt(p - p*p)``, real for p in [0, 1] (p*p <= p there, also
    after rounding) and NaN for anything else (p < 0, p > 1, NaN, +-inf). Two kernels (a
    ``torch.where`` of the two comparisons costs four). Computed on the dtype the hook returned,
    so a float64 value that float32 would round into range is still seen."""
    raw = raw.detach()
    return torch.sqrt(raw.addcmul(raw, raw, value=-1))


def outside_unit_interval(raw: torch.Tensor) -> torch.Tensor:
    """NaN where ``raw`` is finite and outside [0, 1], else 0 (NaN/inf itself is the NaN
    policy's): the key of the per-step check that is an error whatever ``nan_policy`` says."""
    raw = raw.detach()
    return torch.where(finite_outside_unit_interval(raw), math.nan, torch.zeros_like(raw))


def finite_outside_unit_interval(raw: torch.Tensor) -> torch.Tensor:
    """Where ``raw`` is finite and outside [0, 1] (bool, ``raw``'s shape): not a probability."""
    return torch.isfinite(raw) & ((raw < 0) | (raw > 1))


def to_info_value(value: Any, expected: tuple, dtype: torch.dtype, device: torch.device, key: str) -> torch.Tensor:
    """A declared info value (``info_keys``) as a tensor of ``expected`` shape (the batch, then
    the declared spec's shape; never reshaped, rows would mix across envs) and the declared
    ``dtype``, through the same cast as observations (:func:`cast_keeping_value`)."""
    tensor = _as_tensor(value, device, key, dtype)
    if tuple(tensor.shape) != tuple(expected):
        raise ValueMismatch(f"{key}: expected shape {tuple(expected)} (the batch, then the declared spec's shape), "
                            f"got {tuple(tensor.shape)}", key=key, expected=tuple(expected), got=tuple(tensor.shape))
    try:
        return cast_keeping_value(tensor, dtype, key)
    except TypeMismatch as err:
        raise TypeMismatch(f"{err}; declare a spec of the value's dtype", key=key, expected=dtype,
                           got=tensor.dtype) from None


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every float tensor is certainly free of NaN/inf, with ONE host sync for all of
    them: a sum is finite only if every element is (NaN and inf propagate). False means "maybe
    not": a non-finite sum may also be an overflow of finite values, so a caller that gets False
    looks row by row (:func:`nonfinite_rows`)."""
    total, host = None, 0.0  # device sums add up on the device; CPU sums as Python floats (cheaper there)
    for tensor in tensors:
        if tensor.is_floating_point():
            if tensor.requires_grad:
                tensor = tensor.detach()
            part = tensor.sum(dtype=torch.float32) if tensor.element_size() < 4 else tensor.sum()
            if part.device.type == "cpu":
                host += part.item()  # NaN/inf propagate through Python floats too
            else:
                total = part if total is None else total + part
    if total is not None:
        host += total.item()
    return math.isfinite(host)


def nonfinite_rows(tensors: dict, batch_shape: tuple) -> tuple[torch.Tensor | None, list[str]]:
    """Mask over the batch of rows holding NaN/inf in any float tensor, and the keys involved.

    Returns ``(None, [])`` on the fast path where everything is finite.
    """
    if all_finite(*tensors.values()):
        return None, []
    bad = None
    keys = []
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        rows = _nonfinite_rows_of(tensor, batch_shape)
        if bool(rows.any()):
            keys.append(key)
            bad = rows if bad is None else bad | rows
    return bad, keys


def nonfinite_row_mask(tensors, batch_shape: tuple, device) -> torch.Tensor:
    """The rows (bool, shape ``batch_shape``) where a float tensor of ``tensors`` (each
    ``[*batch_shape, ...]``) holds NaN/inf, computed on the device with no host read
    (:func:`nonfinite_rows` without the keys, which need one)."""
    bad = torch.zeros(batch_shape, dtype=torch.bool, device=device)
    for tensor in tensors:
        if tensor.is_floating_point():
            bad = bad | _nonfinite_rows_of(tensor.detach(), batch_shape)
    return bad


def _nonfinite_rows_of(tensor: torch.Tensor, batch_shape: tuple) -> torch.Tensor:
    """Bool ``batch_shape``: the rows of ``tensor`` holding NaN/inf (a count, not ``any``, so
    nothing reads the host)."""
    nonfinite = ~torch.isfinite(tensor)
    return (nonfinite.reshape(*batch_shape, -1).sum(-1) if batch_shape else nonfinite.sum()) > 0


def flatten_observation(observation: Any, prefix: str = "observation") -> dict:
    """``{"observation": t}`` or ``{"observation['a']": t, ...}`` for error messages."""
    if isinstance(observation, Mapping):
        out = {}
        for k, v in observation.items():
            out.update(flatten_observation(v, f"{prefix}[{k!r}]"))
        return out
    return {prefix: observation}


def zero_nonfinite(value: Any) -> Any:
    """``value`` (a tensor or dict of tensors) with NaN/inf entries of float tensors set to 0."""
    if isinstance(value, Mapping):
        return {k: zero_nonfinite(v) for k, v in value.items()}
    if value.is_floating_point():
        return torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    return value


def where_rows(mask: torch.Tensor, old: Any, new: Any) -> Any:
    """``old`` (a tensor or dict of tensors, shape ``(*batch, ...)``) with the rows in ``mask``
    (bool, shape batch; 0-d for an unbatched env) taken from ``new``."""
    if isinstance(old, Mapping):
        return {k: where_rows(mask, v, new[k]) for k, v in old.items()}
    view = mask.reshape(*mask.shape, *([1] * (old.ndim - mask.ndim)))
    return torch.where(view, new, old)


def env_rows(mask: torch.Tensor) -> str:
    """`` at env index [i, ...]`` for a batch mask; ``""`` for an unbatched (0-d) one."""
    if mask.ndim == 0:
        return ""
    return f" at env index {mask.nonzero().flatten().tolist()}"


# ------------------------------------------------------------------------------------ actions
# One converter for every action that enters the env, on every path (TorchRL tensordicts, the
# Gymnasium env, the vector and SB3 exports): the shape (batch dims included) is checked by
# default, a cast to the space's dtype must keep the values, and the model gets memory the env
# owns, never the caller's buffer.


def action_shape_accepted(got: tuple, one: tuple, batch: tuple) -> bool:
    """Whether an action of shape ``got`` gives each env of ``batch`` one action of the action
    space's shape ``one``: ``(*batch, *one)`` exactly or, for a space of one element, the same
    values with the singleton dim added or dropped: ``(*batch, 1)`` for a scalar space (a
    Discrete index as some TorchRL policies give it) and ``(*batch,)`` for a ``(1,)`` space (one
    number per env). Anything else (one env's action for a batch, an extra dim) is refused:
    broadcast, it would give every env the same action or mix envs."""
    n = len(batch)
    if tuple(got[:n]) != tuple(batch):
        return False
    rest = tuple(got[n:])
    return rest == tuple(one) or (not one and rest == (1,)) or (tuple(one) == (1,) and not rest)


def refuse_action_shape(got: tuple, one: tuple, batch: tuple, key: str = "action", batch_name: str = "the batch",
                        hint: str = "") -> None:
    """Raise :class:`ValueMismatch` for an action of shape ``got`` (see :func:`action_shape_accepted`)
    that says what was expected, why, and what to pass instead."""
    got, one, batch = tuple(got), tuple(one), tuple(batch)
    expected = (*batch, *one)
    if batch:
        why = f"{batch_name} {batch}, then one env's action shape {one}"
        fix = f"pass one action per env, stacked along the first dim{'s' if len(batch) > 1 else ''}: shape {expected}"
        if got == one:
            fix = f"this is one env's action: it is not broadcast to every env; {fix}"
    else:
        why = f"the action space's shape {one}"
        fix = f"pass one action of shape {one}"
    raise ValueMismatch(f"{key}: expected shape {expected}, got {got} ({why}); {fix}{hint}",
                        key=key, expected=expected, got=got)


def _shape_of(value: Any) -> Optional[tuple]:
    """The shape of an action, read without a copy where it has one; None for a value that is
    no array (a string or an object an ``action_transform_fn`` reads), which is not checked."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return tuple(value.shape)
    if isinstance(value, (bool, int, float, list, tuple)):
        try:
            return np.shape(value)
        except ValueError:  # a ragged list: no shape
            return None
    return None


def action_as_given(value: Any, space: spaces.Space, batch_shape: tuple, key: str = "action") -> Any:
    """An action passed on as given (to ``action_transform_fn``, or to the model with
    ``torch_actions=False``: no tensor conversion, no cast), but checked and owned.

    Its shape must give each env one action (:func:`action_shape_accepted`), key by key for a
    Dict space: one tuple comparison. An array or tensor comes back as a copy the env owns (a
    model keeping the action is not changed when the caller refills its buffer), given the
    space's shape where it had a 1-element variant of it (so a model that broadcasts never
    mixes envs); numbers, lists and strings come back as they are (a list is not copied), and
    values that are no array (an object an ``action_transform_fn`` reads) are not checked."""
    if isinstance(space, spaces.Dict):
        _check_dict_keys(value, space, key, "action")
        owned = {k: action_as_given(value[k], sub, batch_shape, f"{key}[{k!r}]") for k, sub in space.spaces.items()}
        return owned
    shape = _shape_of(value)
    if shape is None:
        return value
    expected = (*batch_shape, *space.shape)
    if shape != expected and not action_shape_accepted(shape, space.shape, batch_shape):
        refuse_action_shape(shape, space.shape, batch_shape, key)
    if isinstance(value, torch.Tensor):
        return value.reshape(expected).clone() if shape != expected else value.clone()
    if isinstance(value, np.ndarray):
        return value.reshape(expected).copy() if shape != expected else value.copy()
    return value


def _may_share_memory(value: Any, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (``_as_tensor(value)``, before any cast) may be the caller's memory."""
    if isinstance(value, torch.Tensor):
        return tensor.device == value.device  # a move to another device copied
    if isinstance(value, (bool, int, float, list, tuple, np.generic)):
        return False  # np.asarray made a new array
    return tensor.device.type == "cpu"  # an array, or an object exposing its buffer


def to_action(value: Any, space: spaces.Space, batch_shape: tuple, device: torch.device, key: str = "action") -> Any:
    """The action the model gets (``torch_actions=True``): a tensor of the space's dtype and of
    shape ``(*batch_shape, *space.shape)`` on ``device`` (a dict of them for a Dict space), in
    memory the env owns.

    The shape must give each env one action (:func:`action_shape_accepted`; a 1-element
    variant is reshaped to the space's shape). The cast must keep every value: a float for an
    integer space must be integral (``1.5`` for a Discrete space is refused, not truncated to
    1) and an integer must fit the space's dtype (``300`` for a ``uint8`` space is refused, not
    wrapped to 44), as observations are checked (:func:`to_observation`); a finite float that
    the space's narrower float dtype cannot hold is refused too. Values are checked against
    the dtype, not against the space's bounds: that is ``check_actions``'s job. The result is
    a copy whenever it could be the caller's memory (an array or tensor given without a cast),
    so the caller may refill its buffer; gradients flow through the copy."""
    if isinstance(space, spaces.Dict):
        _check_dict_keys(value, space, key, "action")
        return {k: to_action(value[k], sub, batch_shape, device, f"{key}[{k!r}]") for k, sub in space.spaces.items()}
    dtype = numpy_to_torch_dtype(space.dtype)
    # given the dtype, _as_tensor copies a numpy array that needs no cast (and a cast copies):
    # an array never reaches the model as the caller's memory, and is copied once
    tensor = _as_tensor(value, device, key, dtype)
    expected = (*batch_shape, *space.shape)
    if tensor.shape != expected:
        if not action_shape_accepted(tensor.shape, space.shape, batch_shape):
            refuse_action_shape(tensor.shape, space.shape, batch_shape, key)
        tensor = tensor.reshape(expected)
    if tensor.dtype == dtype:
        owned = isinstance(value, np.ndarray) or not _may_share_memory(value, tensor)
        return tensor if owned else tensor.clone()
    if tensor.numel():
        if tensor.is_floating_point() and not dtype.is_floating_point:
            _refuse_non_integral(tensor, key)
        if not dtype.is_floating_point and dtype is not torch.bool and not _widens(tensor.dtype, dtype):
            try:
                _check_integer_range(tensor, dtype, key)
            except ValueMismatch as err:
                raise ValueMismatch(f"{err}: a cast would wrap them. Pass actions in the action space "
                                    "(check_actions='clip' clips them into it)",
                                    key=key, expected=err.expected, got=err.got) from None
    cast = tensor.to(dtype)  # a new tensor: the cast copied
    if tensor.is_floating_point() and cast.is_floating_point() and tensor.numel() \
            and torch.finfo(dtype).max < torch.finfo(tensor.dtype).max:
        _check_float_range(tensor, cast, key)
    return cast


def _widens(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether every value of the bool/integer dtype ``source`` fits the integer dtype ``target``
    (int32 -> int64): that cast needs no look at the values (and no host sync)."""
    if source is torch.bool:
        return True
    if source.is_floating_point or source.is_complex:
        return False
    small, big = torch.iinfo(source), torch.iinfo(target)
    return big.min <= small.min and small.max <= big.max


def _refuse_non_integral(tensor: torch.Tensor, key: str) -> None:
    """Floats for an integer space: a cast would truncate 1.7 to 1 (and NaN to anything)."""
    integral = torch.isfinite(tensor) & (tensor == torch.round(tensor))
    if not bool(integral.all()):
        bad = tensor[~integral].flatten()[:5].tolist()
        raise ValueMismatch(
            f"{key}: non-integral values {bad} ({tensor.dtype}) for an integer action space; a cast would "
            "truncate them. Round them first, or pass check_actions='clip' (rounds, then clips into the space).",
            key=key, expected="integral values", got=bad,
        )


def _action_bounds(space: spaces.Space):
    """``(low, high, integer)`` of a Box/Discrete/MultiDiscrete/MultiBinary space; None for
    other kinds (nothing to check)."""
    if isinstance(space, spaces.Box):
        return space.low, space.high, not np.issubdtype(space.dtype, np.floating)
    if isinstance(space, spaces.Discrete):
        return np.asarray(space.start), np.asarray(space.start + space.n - 1), True
    if isinstance(space, spaces.MultiDiscrete):
        return space.start, space.start + space.nvec - 1, True
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(space.shape), np.ones(space.shape), True
    return None


def check_action(
    action: Any, space: spaces.Space, batch_shape: tuple, device: torch.device, mode: str, key: str = "action",
    deferred: Any = None,
) -> Any:
    """Check ``action`` against ``space`` (``mode="raise"``) or clip it into the space
    (``mode="clip"``).

    In both modes the shape must give each env one action (:func:`action_shape_accepted`) and NaN is refused (there
    is nothing to clip it to). Out-of-range values (Box low/high, Discrete/MultiDiscrete range,
    MultiBinary 0/1, non-integral values for integer spaces) raise an error naming the env
    index, or are clipped (rounded first for integer spaces). Dict spaces are checked key by
    key. Returns the action, clipped where needed, as the same type (tensor or numpy).

    ``deferred`` (a :class:`~torchwm_rl.deferred.DeferredChecks`, during a rollout): a tensor
    action (not bool) of any of these spaces is checked without a host read: its "maybe failed"
    flag goes to ``deferred`` and, with ``"clip"``, the action is clamped into the space
    unconditionally (rounded first for floats in an integer space: the same values, and for a
    Box the same gradients, where it is inside); a failure steps the recorded actions again with
    this check read at its step, which raises the usual error.
    """
    if isinstance(space, spaces.Dict):
        _check_dict_keys(action, space, key, "action")
        return {
            k: check_action(action[k], sub, batch_shape, device, mode, f"{key}[{k!r}]", deferred)
            for k, sub in space.spaces.items()
        }
    bounds = _action_bounds(space)
    if bounds is None:
        return action
    tensor = _as_tensor(action, device, key)
    given = tuple(tensor.shape)
    expected = (*batch_shape, *space.shape)
    if given != expected:
        if not action_shape_accepted(given, space.shape, batch_shape):
            refuse_action_shape(given, space.shape, batch_shape, key)
        tensor = tensor.reshape(expected)
    low, high, integer = bounds
    # clip's clamp casts the bounds to the tensor's dtype: exact for floats and integers below 2**53 (numpy, no sync)
    exact_bounds = tensor.is_floating_point() or all(float(np.max(np.abs(b))) < 2 ** 53 for b in (low, high))
    low = torch.as_tensor(np.asarray(low, dtype=np.float64), device=device)
    high = torch.as_tensor(np.asarray(high, dtype=np.float64), device=device)
    floating = tensor.is_floating_point()
    nan = torch.isnan(tensor) if floating else torch.zeros_like(tensor, dtype=torch.bool)
    outside = (tensor < low) | (tensor > high) | nan
    if integer and floating:
        outside = outside | (tensor != torch.round(tensor))
    if deferred is not None and isinstance(action, torch.Tensor) and tensor.dtype is not torch.bool:
        if mode == "raise":
            deferred.add(outside.sum() > 0)  # a device op: no host read
            return action
        if exact_bounds:
            deferred.add(nan.sum() > 0)  # NaN has nothing to clip to: the per-step check raises
            # what the per-step clip gives where the action is outside, and the same values inside
            values = torch.round(tensor) if integer and floating else tensor
            return torch.clamp(values, *_clamp_bounds(low, high, tensor.dtype)).reshape(given)
    if not bool(outside.any()):
        return action
    if mode == "clip" and not bool(nan.any()):
        values = torch.round(tensor) if integer and floating else tensor
        clipped = torch.clamp(values, *_clamp_bounds(low, high, tensor.dtype)).reshape(given)
        return clipped if isinstance(action, torch.Tensor) else clipped.cpu().numpy()
    rows = outside.reshape(*batch_shape, -1).any(-1) if batch_shape else outside.any()
    first = tensor[rows.nonzero()[0, 0]] if batch_shape else tensor
    what = "NaN in" if bool(nan.any()) else "outside"
    raise ValueMismatch(
        f"{key}: {what} action_space {space}{env_rows(rows)}; got {first.tolist()}"
        + ("" if mode == "clip" or what == "NaN in" else " (check_actions='clip' clips instead)"),
        key=key, expected=space, got=first.tolist(),
    )


def _clamp_bounds(low: torch.Tensor, high: torch.Tensor, dtype: torch.dtype) -> tuple:
    """The space's bounds (float64 tensors) in the action's ``dtype``, for ``torch.clamp``. For an
    integer dtype they are first limited to its range: a bound beyond it (300 for uint8) would
    wrap in the cast (to 44) and clip values inside the space, while limited it clips nothing
    the dtype can hold. (int64's top is 2**63 - 1024, the largest float64 below 2**63, which
    would overflow the cast.) A float bound's cast rounds, monotonically: a value inside the
    space stays where it is."""
    if dtype.is_floating_point or dtype == torch.bool:
        return low.to(dtype), high.to(dtype)
    info = torch.iinfo(dtype)
    top = float(info.max) if dtype != torch.int64 else 2.0 ** 63 - 1024
    return low.clamp(info.min, top).to(dtype), high.clamp(info.min, top).to(dtype)


def check_observation(value: Any, space: spaces.Space, batch_shape: tuple, key: str = "observation",
                      rows: Optional[torch.Tensor] = None) -> None:
    """Raise when an (already converted) observation lies outside ``space``: Box bounds,
    Discrete/MultiDiscrete ranges, MultiBinary 0/1, key by key for Dict spaces. NaN is left to
    the NaN policy. Used with ``check_observations=True``. ``rows`` (bool, shape batch): only
    those envs are checked (a partial reset's rows in use)."""
    if isinstance(space, spaces.Dict):
        for k, sub in space.spaces.items():
            check_observation(value[k], sub, batch_shape, f"{key}[{k!r}]", rows)
        return
    bounds = _action_bounds(space)
    if bounds is None:
        return
    low, high, _ = bounds
    low = torch.as_tensor(np.asarray(low, dtype=np.float64), device=value.device)
    high = torch.as_tensor(np.asarray(high, dtype=np.float64), device=value.device)
    wide = value.to(torch.float64)
    outside = (wide < low) | (wide > high)
    if rows is not None:
        outside = outside & rows.reshape(*rows.shape, *([1] * (outside.ndim - rows.ndim)))
    if not bool(outside.any()):
        return
    rows = outside.reshape(*batch_shape, -1).any(-1) if batch_shape else outside.any()
    first = value[rows.nonzero()[0, 0]] if batch_shape else value
    raise ValueMismatch(f"{key}: outside observation_space {space}{env_rows(rows)}; got {first.tolist()}",
                        key=key, expected=space, got=first.tolist())
