"""Ensemble world models: propagation, uncertainty, MOPO's penalty and MOReL's halting.

With ``ensemble_size=E`` the transition hook returns every member's prediction: each output it
gives (state, observation, reward, terminated, truncated) has a leading ensemble dim,
``[E, *batch, ...]``. :class:`Ensemble` turns that into the one transition the env steps with
(reward and terminal hooks then see the propagated state and observation, without the E dim):

* ``propagation="random"``: each env takes a member drawn uniformly at every step (PETS' TS1);
* ``"fixed"``: each env takes a member drawn when it resets and keeps it for the episode
  (TS-infinity); a partial reset redraws only the envs that restart;
* ``"mean"``: the mean over members of the state, observation and reward (gradients flow
  through it as through a single model); a flag is True where more than half the members say so.

Draws come from the env's own seeded generator (``EpisodeLogic.hook_generator``), never the
global RNG: the same seed gives the same trajectories.

Uncertainty, per env and step, is the members' disagreement on the next observation:
:func:`max_pairwise_distance`, the largest L2 distance between two members' predicted
observations (all observation entries flattened; a Dict observation concatenates its keys). It
is a distance in the observation's units, so it scales linearly with the spread (doubling every
member's deviation from the mean doubles it). ``uncertainty_fn(members) -> [*batch]`` replaces
it; ``members`` is the observation with its leading E dim (a dict of them for Dict spaces). Its
output must be real (floating or integer; read as float32), of shape ``[*batch]`` or
``[*batch, 1]``, and >= 0: anything else is an error naming ``uncertainty_fn`` (a negative value
whatever ``nan_policy`` says; NaN/inf goes through ``nan_policy``; the value checks ride on the
step's one NaN check, so ``nan_policy="ignore"`` skips them).

Then, in this order:

* ``uncertainty_penalty=lam`` (MOPO): ``reward = reward - lam * uncertainty``;
* ``uncertainty_threshold=tau`` (MOReL): an env whose uncertainty exceeds ``tau`` ends:
  ``terminated=True``, ``reward=halt_reward`` and ``halted=True``.

The "fixed" members live in this object (one per env), not in the TensorDict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from tensordict import TensorDict, TensorDictBase

from .options import PROPAGATIONS
from .records import MISSING

#: the key, in the per-step NaN check, of the tensor that is NaN where uncertainty_fn's output is negative
NEGATIVE_UNCERTAINTY = "uncertainty_fn's sign"


def max_pairwise_distance(members: Any, batch_ndim: int = 1) -> torch.Tensor:
    """``[E, *batch, ...]`` member predictions (``batch_ndim`` batch dims) -> ``[*batch]``: the
    largest L2 distance between two members' predictions, every entry after the batch dims
    flattened (0 for one member). A dict (or TensorDict, nested or not) is flattened leaf by leaf,
    in sorted key order, and concatenated."""
    if isinstance(members, Mapping):
        flat = torch.cat([_flat_members(v, batch_ndim) for v in _sorted_leaves(members)], dim=-1)
    else:
        flat = _flat_members(members, batch_ndim)
    # [E, *batch, D] -> [E, E, *batch] pairwise distances; E is small, so the E x E diff is cheap
    diff = flat.unsqueeze(0) - flat.unsqueeze(1)
    return diff.norm(dim=-1).amax(dim=(0, 1))


def _sorted_leaves(tree: Mapping) -> list:
    leaves = []
    for key in sorted(tree.keys()):
        value = tree[key]
        leaves.extend(_sorted_leaves(value) if isinstance(value, Mapping) else [value])
    return leaves


def _flat_members(x: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    x = x if x.is_floating_point() else x.float()
    return x.reshape(*x.shape[: 1 + batch_ndim], -1)


class Ensemble:
    """The ensemble settings of one env and its per-env "fixed" members (see module docs)."""

    def __init__(
        self,
        size: int,
        propagation: str = "random",
        uncertainty_penalty: float = 0.0,
        uncertainty_threshold: Optional[float] = None,
        halt_reward: float = 0.0,
        uncertainty_fn: Optional[Callable] = None,
        batch_size: tuple = (),
        device: Any = "cpu",
    ):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ensemble_size must be a positive int, got {size!r}")
        if propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
        penalty = float(uncertainty_penalty)
        if not math.isfinite(penalty) or penalty < 0:
            raise ValueError(f"uncertainty_penalty must be a finite number >= 0, got {uncertainty_penalty!r}")
        if uncertainty_threshold is not None:
            threshold = float(uncertainty_threshold)
            if math.isnan(threshold) or threshold < 0:
                raise ValueError(f"uncertainty_threshold must be None or a number >= 0, got {uncertainty_threshold!r}")
            uncertainty_threshold = threshold
        halt = float(halt_reward)
        if not math.isfinite(halt):
            raise ValueError(f"halt_reward must be finite, got {halt_reward!r}")
        if uncertainty_fn is not None and not callable(uncertainty_fn):
            raise TypeError(f"uncertainty_fn must be callable, got {type(uncertainty_fn).__name__}")
        self.size = size
        self.propagation = propagation
        self.penalty = penalty
        self.threshold = uncertainty_threshold
        self.halt_reward = halt
        self.uncertainty_fn = uncertainty_fn
        self.batch_size = tuple(batch_size)
        self.device = torch.device(device)
        self.members: Optional[torch.Tensor] = None  # "fixed": int64, shape batch

    # ------------------------------------------------------------------ draws
    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One member index per env (int64, shape batch) from ``generator``."""
        shape = self.batch_size or (1,)
        idx = torch.randint(self.size, shape, generator=generator, device=generator.device).to(self.device)
        return idx if self.batch_size else idx[0]

    def on_reset(self, generator: torch.Generator, mask: Optional[torch.Tensor]) -> None:
        """Redraw the "fixed" members of the envs in ``mask`` (all when None or first time)."""
        if self.propagation != "fixed":
            return
        new = self.draw(generator)
        if self.members is None or mask is None or not self.batch_size:
            self.members = new
        else:
            self.members = torch.where(mask.to(self.device), new, self.members)

    # ------------------------------------------------------------- transition
    def propagate(self, raw, hook_name: str, observation_space, generator: torch.Generator):
        """Check the E dim of every output in ``raw`` (a ``RawRecord``) and return
        ``(raw', uncertainty [*batch] float32)`` where ``raw'`` holds the propagated values."""
        from .records import RawRecord

        E, batch = self.size, self.batch_size
        obs = raw.observation
        if obs is MISSING or obs is None:
            raise ValueError(f"{hook_name} returned no observation (read as {raw.form})")
        obs = self._members(obs, "observation", hook_name, observation_space)
        state = MISSING if raw.state is MISSING else self._members(raw.state, "state", hook_name)
        reward = MISSING if raw.reward is MISSING else self._members(raw.reward, "reward", hook_name, scalar=True)
        term = MISSING if raw.terminated is MISSING else self._members(raw.terminated, "terminated", hook_name, scalar=True)
        trunc = MISSING if raw.truncated is MISSING else self._members(raw.truncated, "truncated", hook_name, scalar=True)

        uncertainty = self._uncertainty(obs, hook_name)
        if self.propagation == "mean":
            pick = _mean
        else:
            if self.propagation == "random":
                idx = self.draw(generator)
            else:
                if self.members is None:
                    raise RuntimeError("propagation='fixed': reset the env before stepping it")
                idx = self.members
            pick = lambda x, flag=False: _select(x, idx, batch)  # noqa: E731
        out = RawRecord(
            state=MISSING if state is MISSING else _tree(pick, state),
            observation=_tree(pick, obs),
            reward=MISSING if reward is MISSING else pick(reward),
            terminated=MISSING if term is MISSING else pick(term, True),
            truncated=MISSING if trunc is MISSING else pick(trunc, True),
            info=raw.info,
            form=f"{raw.form}, with a leading ensemble dim of {E}",
        )
        return out, uncertainty

    def _members(self, value: Any, key: str, hook_name: str, space=None, scalar: bool = False) -> Any:
        """``value`` as tensors with the leading E dim checked (a dict: every entry; a TensorDict:
        every leaf, the TensorDict kept as given)."""
        if isinstance(value, TensorDictBase):
            sub = getattr(space, "spaces", None)
            for k, leaf in value.items():
                self._members(leaf, f"{key}[{k!r}]", hook_name, sub[k] if sub and k in sub else None)
            return value
        if isinstance(value, Mapping):
            sub = getattr(space, "spaces", None)
            return {k: self._members(v, f"{key}[{k!r}]", hook_name, sub[k] if sub and k in sub else None)
                    for k, v in value.items()}
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value, device=self.device)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"{hook_name}: with ensemble_size={self.size}, {key} must be a tensor (or a dict of "
                    f"tensors) with a leading ensemble dim, got {type(value).__name__}"
                ) from None
        E, batch = self.size, self.batch_size
        shape = tuple(value.shape)
        if scalar:
            ok = shape in ((E, *batch), (E, *batch, 1))
            want = f"{(E, *batch)} or {(E, *batch, 1)}"
        elif space is not None and getattr(space, "shape", None) is not None:
            ok = shape == (E, *batch, *space.shape)
            want = str((E, *batch, *space.shape))
        else:
            ok = len(shape) >= 1 + len(batch) and shape[: 1 + len(batch)] == (E, *batch)
            want = f"{(E, *batch)} + (...)"
        if not ok:
            raise ValueError(
                f"{hook_name}: with ensemble_size={E}, {key} must have a leading ensemble dim: "
                f"expected shape {want}, got {shape}"
            )
        if scalar and len(shape) == 2 + len(batch):
            value = value.squeeze(-1)
        return value

    def _uncertainty(self, obs: Any, hook_name: str) -> torch.Tensor:
        """The uncertainty ``[*batch]`` float32. ``uncertainty_fn``'s output is checked here for
        what costs no host sync (type, real dtype, shape); its values (finite, >= 0) are checked
        in the env's one NaN check of the step (see :meth:`checked_values`)."""
        if self.uncertainty_fn is None:
            return max_pairwise_distance(obs, len(self.batch_size)).to(torch.float32)
        u = self.uncertainty_fn(obs)
        want = f"a real (floating or integer) tensor of shape {self.batch_size} or {(*self.batch_size, 1)}"
        try:
            u = torch.as_tensor(u, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"uncertainty_fn must return {want}, got {type(u).__name__}") from None
        if u.is_complex() or u.dtype == torch.bool:
            # a complex uncertainty cast to float32 loses its imaginary part without an error
            raise TypeError(f"uncertainty_fn must return {want}, got dtype {u.dtype}")
        if tuple(u.shape) not in (self.batch_size, (*self.batch_size, 1)):
            raise ValueError(
                f"uncertainty_fn must return shape {self.batch_size} or {(*self.batch_size, 1)} (expected {want}), "
                f"got {tuple(u.shape)}"
            )
        return u.reshape(self.batch_size).to(torch.float32)

    def checked_values(self, uncertainty: torch.Tensor) -> dict:
        """The tensors the env's per-step NaN check adds for the uncertainty (one reduction, one
        host sync, with the observation and reward): the uncertainty itself (NaN/inf there is
        the model's or the measure's, handled by ``nan_policy``) and, for ``uncertainty_fn``, a
        tensor that is NaN where the uncertainty is negative (``NEGATIVE_UNCERTAINTY``, which
        :meth:`refuse_negative` turns into an error whatever the policy: a negative uncertainty
        turns MOPO's penalty into a bonus). Not checked under ``nan_policy="ignore"``."""
        if self.uncertainty_fn is None:
            return {"uncertainty (the members' observations)": uncertainty}
        nan = torch.full_like(uncertainty, math.nan)
        return {"uncertainty (uncertainty_fn's output)": uncertainty,
                NEGATIVE_UNCERTAINTY: torch.where(uncertainty < 0, nan, torch.zeros_like(uncertainty))}

    def refuse_negative(self, uncertainty: torch.Tensor, discard: Optional[torch.Tensor] = None) -> None:
        """Raise if ``uncertainty_fn`` gave a negative value in a row the step keeps."""
        negative = uncertainty < 0
        if discard is not None:
            negative = negative & ~discard
        if bool(negative.any()):
            rows = negative.nonzero().flatten().tolist() if self.batch_size else []
            where = f" in env rows {rows}" if rows else ""
            raise ValueError(
                f"uncertainty_fn returned negative values{where} (min {float(uncertainty.min()):.6g}): expected "
                "finite values >= 0 (a spread or distance); a negative uncertainty turns uncertainty_penalty "
                "into a bonus and never reaches uncertainty_threshold"
            )

    def apply(self, reward: torch.Tensor, terminated: torch.Tensor, uncertainty: torch.Tensor):
        """MOPO's penalty then MOReL's halting: ``(reward, terminated, halted)``."""
        if self.penalty:  # 0 * NaN is NaN: no penalty term at all when lam is 0
            reward = reward - self.penalty * uncertainty
        halted = torch.zeros_like(terminated)
        if self.threshold is not None:
            halted = uncertainty > self.threshold
            reward = torch.where(halted, torch.full_like(reward, self.halt_reward), reward)
            terminated = terminated | halted
        return reward, terminated, halted


def _tree(fn: Callable, value: Any) -> Any:
    """``fn`` on every leaf of a tensor, dict or TensorDict of ``[E, *batch, ...]`` members; a
    TensorDict comes back a TensorDict, every batch size without its leading E dim (when it has
    one: a TensorDict may keep E and the batch dims out of its batch size)."""
    if isinstance(value, TensorDictBase):
        out = {k: _tree(fn, v) for k, v in value.items()}
        return TensorDict(out, batch_size=value.batch_size[1:], device=value.device)
    if isinstance(value, Mapping):
        return {k: _tree(fn, v) for k, v in value.items()}
    return fn(value)


def _mean(x: torch.Tensor, flag: bool = False) -> torch.Tensor:
    if flag or x.dtype == torch.bool:
        return x.float().mean(0) > 0.5
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"propagation='mean' needs floating-point member predictions, got {x.dtype}; use "
            "propagation='random' or 'fixed' for integer outputs"
        )
    return x.mean(0)


def _select(x: torch.Tensor, idx: torch.Tensor, batch: tuple) -> torch.Tensor:
    """``x[idx[b], b]`` for each env ``b``: ``[E, *batch, ...]`` -> ``[*batch, ...]``."""
    if not batch:
        return x[idx]
    rows = torch.arange(batch[0], device=x.device)
    return x[idx.to(x.device), rows]
