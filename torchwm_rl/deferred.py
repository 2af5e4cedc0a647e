"""Checks computed on the device at every step and read on the host once per rollout.

A check that reads its result on the host at every step (``bool(x.any())``, ``x.sum().item()``)
is a device sync per step on CUDA. During ``env.rollout`` the adapter instead hands each such
check's "maybe failed" flag (a 0-d bool tensor, computed on the device) to a
:class:`DeferredChecks`, which ORs them together and reads the result once: at the end of the
rollout, or every ``check_every`` steps (:class:`~torchwm_rl.options.ModelOptions`).

A flag that reads True means "some step may have failed a check": the env then goes back to
where the rollout started and steps the recorded actions again with every check read at its
step, without calling the policy again (:class:`~torchwm_rl.rollout.ReplayActions`), so the
error raised is the one a per-step check raises (the same text, step, env rows and hook) and
the env is left as that check leaves it. A flag is allowed false positives (a sum that
overflows is not NaN): the replay then finishes, and only then is the rollout run once more,
policy included, with per-step checks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Callable, Optional

import torch
from tensordict import TensorDict, TensorDictBase


class RecheckEagerly(Exception):
    """A deferred check read True: step the recorded actions again with per-step checks (internal)."""


class DeferredChecks:
    """The OR of the "maybe failed" flags the checks of a rollout's steps give, read on the host
    every ``every`` steps (None: only when :meth:`read` is called, at the end).

    ``sweep`` (set by the rollout with :meth:`sweep_recorded`): the NaN/inf check of what a step
    records (``nan_policy="raise"``: its observation, reward and state, and the starts of the
    envs that restart, which the next step records) is then not computed per step at all: each
    read sweeps the steps recorded since the last read in one pass over the trajectory's storage
    (``sweep(start) -> (flag or None, stop)``). What was checked but is not recorded yet (a step
    or a restart that failed before the next record) waits in ``unrecorded`` (functions giving
    its flag, called only at a read), emptied at each recorded step (:meth:`step_done`)."""

    __slots__ = ("every", "flag", "pending", "sweep", "swept", "unrecorded")

    def __init__(self, every: Optional[int] = None):
        self.every = every
        self.flag: Optional[torch.Tensor] = None
        self.pending = 0
        self.sweep: Optional[Callable[[int], tuple]] = None
        self.swept = 0  # the recorded steps already swept
        self.unrecorded: list = []

    def sweep_recorded(self, sweep: Callable[[int], tuple]) -> None:
        """Check the recorded steps' NaN/inf at each read with ``sweep`` instead of at each step."""
        self.sweep, self.swept = sweep, 0

    def stop_sweeping(self) -> None:
        """The trajectory now keeps its steps as they are (lists): a later policy call may write
        into what was recorded (its observation is the next step's input), so a sweep at a later
        read could miss a NaN. Sweep what is recorded now (the last step's values as its step gave
        them) into the flag, and check every later step as it runs. No host read."""
        swept, self.swept = self.sweep(self.swept)
        if swept is not None:
            self.add(swept)
        self.sweep = None
        self.unrecorded.clear()  # the last step was recorded: swept above

    def add(self, flag: torch.Tensor) -> None:
        """Record one check's flag (a 0-d bool tensor; True: the check may have failed)."""
        self.flag = flag if self.flag is None else self.flag | flag

    def step_done(self) -> None:
        """Called after each step is recorded: reads the flags once ``every`` steps have passed."""
        if self.unrecorded:
            self.unrecorded.clear()  # in the trajectory now: the sweep sees it
        self.pending += 1
        if self.every is not None and self.pending >= self.every:
            self.read()

    def failed(self) -> bool:
        """Whether a recorded flag reads True (ONE host read; none when nothing was recorded)."""
        flag, self.flag, self.pending = self.flag, None, 0
        parts = [] if flag is None else [flag]
        if self.sweep is not None:
            swept, self.swept = self.sweep(self.swept)
            if swept is not None:
                parts.append(swept)
            parts.extend(flag_of() for flag_of in self.unrecorded)  # checked, not recorded (a later error)
            self.unrecorded.clear()
        if not parts:
            return False
        return bool(functools.reduce(torch.logical_or, parts))

    def read(self) -> None:
        """Raise :class:`RecheckEagerly` when a recorded flag reads True."""
        if self.failed():
            raise RecheckEagerly()


def repeats(steps: list, out) -> bool:
    """Whether the trajectory ``out`` (a rollout's TensorDict, time last in its batch dims)
    starts with the steps ``steps`` (each step's ``"next"`` entries, as the fast rollout keeps
    them: per-env scalars maybe without their trailing 1), value for value. A replay after a
    deferred flag that gives other values did not repeat the first run: the failure it saw may
    be gone. Only called on that failure path."""
    nexts = out.get("next")
    if nexts.batch_size[-1] < len(steps):
        return False
    for i, entries in enumerate(steps):
        step = nexts[..., i]
        for key, value in TensorDict(entries, batch_size=step.batch_size).items(True, True):
            other = step.get(key, None)
            if not isinstance(other, torch.Tensor) or other.numel() != value.numel() \
                    or not _same(value.reshape(other.shape), other):
                return False
    return True


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN (nan_policy="truncate" keeps a row's NaN observation)."""
    if a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
    return torch.equal(a, b)


def maybe_nonfinite(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor, on the tensors' device, that is False when every float tensor is
    certainly free of NaN/inf (their sum is finite: NaN and inf propagate), with no host read.
    True means "maybe not" (a sum of finite values may overflow): the exact check decides."""
    total = None
    for tensor in tensors:
        if tensor.is_floating_point():
            tensor = tensor.detach()
            part = tensor.sum(dtype=torch.float32) if tensor.element_size() < 4 else tensor.sum()
            total = part if total is None else total + part
    if total is None:
        return torch.zeros((), dtype=torch.bool)
    return ~torch.isfinite(total)


def any_nonfinite(tensors) -> torch.Tensor:
    """A 0-d bool tensor: whether a floating tensor (or a nested dict / TensorDict of them) among
    ``tensors`` holds NaN/inf. Exact (no sum that may overflow): it runs once per read, over whole
    trajectories, not per step. No host read."""
    found = None
    for tensor in tensors:
        if isinstance(tensor, (Mapping, TensorDictBase)):
            part = any_nonfinite(tensor.values())
        elif isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            # the smallest and largest value, in one pass (NaN propagates into both): ~25x
            # faster on the CPU than isfinite(t).all(), which makes temporaries
            low, high = torch.aminmax(tensor.detach())
            part = ~(torch.isfinite(low) & torch.isfinite(high))
        elif isinstance(tensor, torch.Tensor) and tensor.is_complex():
            part = ~torch.isfinite(tensor.detach()).all()
        else:
            continue
        found = part if found is None else found | part
    return torch.zeros((), dtype=torch.bool) if found is None else found


def maybe_nonfinite_rows(tensors, rows: torch.Tensor, batch: tuple) -> torch.Tensor:
    """:func:`maybe_nonfinite` over the rows ``rows`` (bool, shape ``batch``) of ``tensors``
    (each ``[*batch, ...]``) only: the rows a partial reset uses."""
    kept = [torch.where(rows.reshape(*rows.shape, *([1] * (tensor.ndim - rows.ndim))), tensor.detach(), 0)
            for tensor in tensors if tensor.is_floating_point()]
    return maybe_nonfinite(*kept) if kept else torch.zeros((), dtype=torch.bool, device=rows.device)
