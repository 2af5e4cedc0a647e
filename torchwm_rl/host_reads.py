"""Counting host reads of tensor values (a stand-in for device syncs), for tests and benchmarks.

On CUDA every read of a tensor's value on the host (``item``, ``bool``, ``tolist``, ``nonzero``,
a boolean-mask index, ...) is a device sync: the step loop cannot run ahead of the GPU and CUDA
graphs cannot apply. :class:`HostReadCounter` counts such calls on any device (the CPU
included) with a ``TorchFunctionMode``, so ``tests/test_host_reads.py`` can pin "no read per
steady-state step" in CI without a GPU, and ``benchmarks/host_reads.py`` prints the counts.
"""

from __future__ import annotations

import collections

import torch
from torch.overrides import TorchFunctionMode

#: the calls whose result depends on a tensor's values on the host (``any``/``all`` are counted
#: because a host branch on their result follows in practice)
METHOD_READS = frozenset({
    "item", "__bool__", "tolist", "nonzero", "__int__", "__float__", "__index__", "numpy", "any", "all",
    # a Python bool, or an output whose shape depends on the values
    "equal", "allclose", "is_nonzero", "masked_select", "unique", "unique_consecutive", "argwhere",
})


class HostReadCounter(TorchFunctionMode):
    """Counts, by name, the calls that read tensor values on the host while it is active
    (``with HostReadCounter() as counter: ...``; ``counter.total``, ``counter.counts``). A
    boolean-mask index (``x[mask]``) counts as ``"bool-mask index"``: it reads the mask."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in METHOD_READS:
            self.counts[name] += 1
        elif name == "__getitem__" and len(args) > 1 and _has_bool_tensor(args[1]):
            self.counts["bool-mask index"] += 1
        elif name == "where" and len(args) + len(kwargs or {}) == 1:  # where(cond) is nonzero
            self.counts["where(cond)"] += 1
        elif name == "repeat_interleave" and isinstance(_repeats(args, kwargs or {}), torch.Tensor):
            self.counts["repeat_interleave"] += 1  # tensor repeats: the output size is their sum
        return func(*args, **(kwargs or {}))


def _has_bool_tensor(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _repeats(args: tuple, kwargs: dict):
    """``repeat_interleave``'s ``repeats`` argument (None when not given)."""
    return args[1] if len(args) > 1 else kwargs.get("repeats")
