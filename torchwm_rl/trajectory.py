"""A rollout's trajectory, written into ``[*B, T]`` storage as it runs (:class:`Trajectory`).

:func:`torchwm_rl.rollout.fast_rollout` hands each step's root and ``"next"`` entries (plain
``{key: tensor}`` dicts) to a :class:`Trajectory`, which copies them into buffers allocated at
the first step and builds the rollout's TensorDict around them at the end: the keys, shapes,
dtypes, strides and names ``EnvBase.rollout``'s stacking gives. Steps that do not fit are kept
as lists and stacked as before (:func:`stack_steps`), their policy outputs guarded by
:class:`OwnedOutputs`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase

from .adapter import _copy_state
from .deferred import any_nonfinite


class Trajectory:
    """A rollout's steps (root and ``"next"`` entries, ``{key: tensor}`` dicts), written into
    ``[*B, T]`` buffers allocated at the first step (its shapes and dtypes say what to allocate):
    step ``t`` is copied into ``[..., t]`` (one ``torch._foreach_copy_`` per step, into views made
    once at allocation by ``unbind``), no TensorDict is built per step and nothing is stacked at
    the end; a rollout that stopped early (``break_when_any_done``) gives the first steps (a
    contiguous copy: the layout ``torch.stack`` gives). The copy also means a policy that later
    writes into an output it returned cannot change what was recorded.

    A step that does not fit the buffers (other keys, shapes or dtypes than the first step's, a
    value that requires grad, anything but a tensor or a TensorDict of tensors) turns the
    trajectory into lists of steps from then on (the steps already written as views of their
    buffers), stacked at the end as before (:func:`stack_steps`); their policy outputs are then
    guarded by :class:`OwnedOutputs`."""

    #: the first capacity, in steps, of a trajectory that may stop early (``grow``)
    FIRST_CAPACITY = 32

    def __init__(self, batch, steps: int, written, grow: bool = False):
        self.batch, self.steps_max, self.dim, self.written = batch, steps, len(batch), written
        # a rollout that may stop at its first done step (break_when_any_done) starts with room
        # for a few steps and doubles it when full: max_steps=10**6 allocates nothing it does not use
        self.capacity = min(steps, self.FIRST_CAPACITY) if grow else steps
        self.count = 0
        self.buffers: Optional[tuple] = None  # ({key: buffer} of the root, of "next"), while written in place
        self.keys: tuple = ()  # (root keys, "next" keys) of the first step
        self.slots: list = []  # (side, key, leaf key or None, shape, dtype): one per tensor written
        self.nested: list = []  # (side, key, number of leaves) of the nested states
        self.views: list = []  # per slot, the T views [..., t] of its buffer
        self.roots: list = []
        self.nexts: list = []
        self.owned: Optional[OwnedOutputs] = None  # guards the policy outputs kept as they are (lists)
        self.restarts: list = []  # the steps whose root entries hold starts of restarted envs (ascending)

    def own(self, root: dict, step: int) -> None:
        """Before the step: policy outputs that will be kept as they are get :class:`OwnedOutputs`'s guard."""
        if self.owned is not None:
            self.owned(root, step)

    def append(self, root: dict, nxt: dict, step: int) -> None:
        """Record step ``step`` (the ``step``-th call)."""
        if self.buffers is None and self.count == 0:
            self._allocate(root, nxt)
        if self.buffers is not None:
            values = self._values(root, nxt)
            if values is not None:
                if self.count == self.capacity:
                    self._grow()
                # one call for every tensor of the step (a copy_ per tensor costs a dispatch each)
                torch._foreach_copy_([views[self.count] for views in self.views], values)
                self.count += 1
                return
            self._to_lists()
        if self.owned is None:  # kept as they are from this step on: guard them from here
            self.owned = OwnedOutputs(self.written, start=step)
            self.owned(root, step)
        self.roots.append(root)
        # copies: the next step's root carries these tensors, and a policy writing into its
        # observation in place would otherwise rewrite this step's record (what the buffers'
        # copy already rules out; gradients flow through the copy)
        self.nexts.append({key: _copy_state(value) for key, value in nxt.items()})
        self.count += 1

    def _allocate(self, root: dict, nxt: dict) -> None:
        """The buffers, laid out from the first step; none when it cannot be written in place."""
        shape, dim = (*self.batch, self.capacity), self.dim
        slots, nested, buffers = [], [], ({}, {})
        for side, entries in enumerate((root, nxt)):
            for key, value in entries.items():
                if type(value) is torch.Tensor and not value.requires_grad:
                    buffers[side][key] = torch.empty((*shape, *value.shape[dim:]), dtype=value.dtype,
                                                     device=value.device)
                    slots.append((side, key, None, value.shape, value.dtype))
                elif type(value) is TensorDict and not value.is_locked:  # a nested model state
                    leaves = list(value.items(True, True))
                    if any(type(t) is not torch.Tensor or t.requires_grad for _, t in leaves):
                        return
                    buffers[side][key] = value.apply(
                        lambda t: torch.empty((*shape, *t.shape[dim:]), dtype=t.dtype, device=t.device),
                        batch_size=(*shape, *value.batch_size[dim:]),
                    )
                    slots += [(side, key, leaf, t.shape, t.dtype) for leaf, t in leaves]
                    nested.append((side, key, len(leaves)))
                else:
                    return
        self.buffers, self.slots, self.nested = buffers, slots, nested
        self.keys = (frozenset(root), frozenset(nxt))
        self._make_views()

    def _grow(self) -> None:
        """Double the buffers' room in steps (up to ``steps_max``), keeping the steps written."""
        self.capacity = min(2 * self.capacity, self.steps_max)
        dim, count = self.dim, self.count
        kept = (slice(None),) * dim + (slice(0, count),)
        grown = ({}, {})
        for side in (0, 1):
            for key, buffer in self.buffers[side].items():
                shape = (*buffer.shape[:dim], self.capacity, *buffer.shape[dim + 1:])
                if type(buffer) is torch.Tensor:
                    new = torch.empty(shape, dtype=buffer.dtype, device=buffer.device)
                else:
                    new = buffer.apply(lambda t: torch.empty((*t.shape[:dim], self.capacity, *t.shape[dim + 1:]),
                                                             dtype=t.dtype, device=t.device),
                                       batch_size=shape[:len(buffer.batch_size)])
                new[kept] = buffer[kept]
                grown[side][key] = new
        self.buffers = grown
        self._make_views()

    def _make_views(self) -> None:
        """Per slot, the T views ``[..., t]`` of its buffer (one ``unbind``), which steps are copied into."""
        buffers = self.buffers
        self.views = [(buffers[side][key] if leaf is None else buffers[side][key].get(leaf)).unbind(self.dim)
                      for side, key, leaf, _, _ in self.slots]

    def _values(self, root: dict, nxt: dict) -> Optional[list]:
        """This step's tensors in slot order, or None when the step does not fit the buffers (one
        tuple comparison per value)."""
        if root.keys() != self.keys[0] or nxt.keys() != self.keys[1]:
            return None
        values = []
        sides = (root, nxt)
        for side, key, leaf, shape, dtype in self.slots:
            value = sides[side][key]
            if leaf is not None:
                if type(value) is not TensorDict:
                    return None
                value = value.get(leaf, None)
            if type(value) is not torch.Tensor or value.shape != shape or value.dtype != dtype or value.requires_grad:
                return None
            values.append(value)
        for side, key, count in self.nested:  # no leaf more in a nested state than in the first step's
            if len(sides[side][key].keys(True, True)) != count:
                return None
        return values

    def _step_views(self, side: int, t: int) -> dict:
        index = (slice(None),) * self.dim + (t,)
        return {key: buffer[index] for key, buffer in self.buffers[side].items()}

    def _to_lists(self) -> None:
        """From here on the steps are lists: the ones written so far as views of their buffers."""
        self.roots = [self._step_views(0, t) for t in range(self.count)]
        self.nexts = [self._step_views(1, t) for t in range(self.count)]
        self.buffers = None

    def steps(self) -> list:
        """Each recorded step's ``"next"`` entries (views where written in place)."""
        if self.buffers is None:
            return list(self.nexts)
        return [self._step_views(1, t) for t in range(self.count)]

    def actions(self) -> list:
        """Each recorded step's action, as recorded."""
        if self.buffers is None:
            return [root.get("action") for root in self.roots]
        return [self._step_views(0, t).get("action") for t in range(self.count)]

    def nonfinite_since(self, start: int, keys: frozenset) -> tuple:
        """``(flag, count)``: whether the ``"next"`` entries ``keys`` of the steps recorded from
        ``start`` on, or the root entries ``keys`` of the steps that follow a restart (``restarts``),
        hold NaN/inf (a 0-d bool tensor, no host read; None when no step is new) and the steps
        recorded so far. One pass over the storage: what a per-step check of those
        entries would have found, computed at a read (see :class:`~torchwm_rl.deferred.DeferredChecks`)."""
        count = self.count
        if count <= start:
            return None, count
        restarted = [t for t in self.restarts[-(count - start):] if start <= t < count]
        if self.buffers is None:
            tensors = [n[key] for n in self.nexts[start:count] for key in keys if key in n]
            tensors += [self.roots[t][key] for t in restarted for key in keys if key in self.roots[t]]
        else:
            index = (slice(None),) * self.dim + (slice(start, count),)
            tensors = [buffer[index] for key, buffer in self.buffers[1].items() if key in keys]
            if restarted and restarted[-1] - restarted[0] + 1 == len(restarted):  # a run of steps (masked resets)
                index = (slice(None),) * self.dim + (slice(restarted[0], restarted[-1] + 1),)
                tensors += [buffer[index] for key, buffer in self.buffers[0].items() if key in keys]
            else:
                tensors += [buffer[(slice(None),) * self.dim + (t,)] for t in restarted
                            for key, buffer in self.buffers[0].items() if key in keys]
        return any_nonfinite(tensors), count

    def verify(self) -> None:
        if self.owned is not None:
            self.owned.verify()

    def stacked(self, device, return_contiguous: bool, scalars: frozenset) -> TensorDictBase:
        """The trajectory as ``EnvBase.rollout`` returns it (time last in the batch dims, named "time")."""
        if self.buffers is None:
            return stack_steps(self.roots, self.nexts, self.batch, device, return_contiguous, scalars)
        shape = torch.Size([*self.batch, self.count])

        def final(buffers: dict) -> dict:
            out = {}
            for key, buffer in buffers.items():
                if self.count < self.capacity:  # stopped early: the first steps, laid out as a stack's
                    buffer = buffer[(slice(None),) * self.dim + (slice(0, self.count),)].contiguous()
                out[key] = buffer.unsqueeze(-1) if key in scalars else buffer
            return out

        entries = final(self.buffers[0])
        entries["next"] = TensorDict(final(self.buffers[1]), batch_size=shape, device=device)
        out = TensorDict(entries, batch_size=shape, device=device)
        out.refine_names(..., "time")
        return out


class OwnedOutputs:
    """The trajectory keeps each step's policy outputs until it is stacked at the end, so a
    policy that writes every step into ONE buffer (a static CUDA-graph output, a preallocated
    action) would make every recorded step read the last value. Cheaply, as the adapter's
    input guard does for hooks:

    * the first step's outputs are copied, and the policy's own tensors kept aside (a
      TensorDict's, a Dict action's, entry by entry);
    * a later output whose storage is one of those (or one already recorded) means the
      policy reuses its buffers: from then on every output is copied;
    * otherwise outputs are recorded as they are, with their version counters, and
      :meth:`verify` (before stacking) refuses a recorded output the policy wrote into
      afterwards (its step's value is lost: a policy alternating between buffers).
    """

    def __init__(self, keys, start: int = 0):
        self.keys = keys
        self.start = start  # the first step guarded (its outputs copied, as step 0's)
        self.copy_all = False
        self.storages: set = set()
        self.held: list = []  # the first step's own tensors (kept alive: their memory is not reused)
        self.recorded: list = []  # (step, key, tensor, version) of outputs recorded as they are

    def __call__(self, root: dict, step: int) -> None:
        for key in self.keys:
            value = root.get(key)
            if type(value) is torch.Tensor:
                tensors = (value,)
            elif isinstance(value, TensorDictBase):  # a Dict action: its entries are guarded alike
                tensors = tuple(t for t in value.values(True, True) if isinstance(t, torch.Tensor))
            else:
                continue
            storages = [t.untyped_storage().data_ptr() for t in tensors]
            if step == self.start:
                self.held.extend(tensors)
                self.storages.update(storages)
                root[key] = value.clone()
                continue
            if not self.copy_all and any(storage in self.storages for storage in storages):
                self.verify()  # an output recorded as is may already have been overwritten
                self.copy_all = True
            if self.copy_all:
                root[key] = value.clone()
            else:
                self.storages.update(storages)
                self.recorded.extend((step, key, t, t._version) for t in tensors)

    def verify(self) -> None:
        for step, key, value, version in self.recorded:
            if value._version != version:
                raise RuntimeError(
                    f"rollout: the policy wrote into the {key!r} tensor it returned at step {step} after returning "
                    "it, so the trajectory would record a later value there. Return a new tensor at each call "
                    "(or one buffer every time: that is copied)"
                )


def unsqueezed(entries: dict, scalars: frozenset) -> dict:
    """``entries`` with the per-env scalars ``[*B]`` as ``[*B, 1]`` (views): the tensordict layout."""
    return {k: v.unsqueeze(-1) if k in scalars else v for k, v in entries.items()}


def stack_steps(roots: list, nexts: list, batch, device, return_contiguous, scalars: frozenset) -> TensorDictBase:
    """The trajectory from the steps' root and ``"next"`` entries; ``scalars``: keys held as
    ``[*B]`` (see :func:`fast_rollout`), given their trailing dim of 1 here."""
    dim = len(batch)
    shape = torch.Size([*batch, len(roots)])
    keys, next_keys = list(roots[0]), list(nexts[0])
    same = all(r.keys() == roots[0].keys() for r in roots) and all(n.keys() == nexts[0].keys() for n in nexts)
    if not same:  # a policy that writes different keys at different steps: TorchRL's own stacking
        tds = []
        for root, nxt in zip(roots, nexts):
            td = TensorDict(unsqueezed(root, scalars), batch_size=batch, device=device)
            td.set("next", TensorDict(unsqueezed(nxt, scalars), batch_size=batch, device=device))
            tds.append(td)
        out = torch.stack(tds, dim) if return_contiguous else LazyStackedTensorDict.maybe_dense_stack(tds, dim)
    else:
        def stacked(values: list, key) -> Any:
            value = torch.stack(values, dim)
            return value.unsqueeze(-1) if key in scalars else value

        nxt = TensorDict({k: stacked([n[k] for n in nexts], k) for k in next_keys}, batch_size=shape, device=device)
        entries = {k: stacked([r[k] for r in roots], k) for k in keys}
        entries["next"] = nxt
        out = TensorDict(entries, batch_size=shape, device=device)
    out.refine_names(..., "time")
    return out
