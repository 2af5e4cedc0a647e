"""The entries of a :class:`~torchwm_rl.WorldModelEnv`'s reset and step tensordicts.

A reset's or a step's ``"next"`` entries come from the episode logic's
:class:`~torchwm_rl.episode.Snapshot` and step record as a plain ``{key: tensor}`` dict, made
into a tensordict by ONE constructor call by the caller: ``WorldModelEnv._reset`` / ``_step``, or
the fast rollout (:mod:`torchwm_rl.rollout`), which keeps them as dicts. This is the per-step hot
path: no wrapper layers.

Each function takes the env first and is the env's method of the same name with a leading
underscore (``WorldModelEnv._step_entries = step_entries``), so the calls between them go
through the env (a subclass that overrides one is seen, and the fast rollout, which checks the
originals, steps aside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from tensordict import TensorDictBase

from .env_specs import (
    CONTINUE_KEY, ELAPSED_KEY, HALTED_KEY, LAST_OBSERVATION_KEY, NONFINITE_KEY, OBSERVATION_KEY, UNCERTAINTY_KEY,
    info_entries, state_kind,
)
from .episode import Snapshot
from .validation import action_shape_accepted
from .validation import refuse_action_shape as refuse_shape


def clone_tree(value: Any) -> Any:
    """A tensor, or a (nested) dict of tensors, copied."""
    if isinstance(value, Mapping):
        return {k: clone_tree(v) for k, v in value.items()}
    return value.clone()


def reshape_tree(value: Any, ndim: int, batch) -> Any:
    """``value`` (a tensor, TensorDict or dict of them) with its ``ndim`` leading dims made ``batch``."""
    if isinstance(value, torch.Tensor):
        return value.reshape(*batch, *value.shape[ndim:])
    if isinstance(value, TensorDictBase):
        return value.reshape(*batch)
    if isinstance(value, Mapping):
        return {k: reshape_tree(v, ndim, batch) for k, v in value.items()}
    return value


def scalar_keys(env) -> frozenset:
    """The keys of this env's per-env scalars, ``[*B, 1]`` in its tensordicts: reward, done
    flags, step count, and ``"nonfinite"`` / ``"uncertainty"`` / ``"halted"`` /
    ``"continue_prob"`` where the env writes them."""
    keys = {"reward", "done", "terminated", "truncated", ELAPSED_KEY}
    if env.adapter.nan_policy == "truncate":
        keys.add(NONFINITE_KEY)
    if env.adapter.ensemble is not None:
        keys.update((UNCERTAINTY_KEY, HALTED_KEY))
    if env.adapter.continue_hook is not None:
        keys.add(CONTINUE_KEY)
    return frozenset(keys)


def read_state(env, tensordict: TensorDictBase) -> Any:
    """The model state a step starts from, as the hooks take it: the one the env holds (an
    opaque state), else ``tensordict[state_key]`` (a dict state as a dict); missing: refused."""
    if env._state_kind == "opaque":
        return env._held_state
    state = tensordict.get(env._state_key, None)
    if state is None:
        raise KeyError(
            f"step: the tensordict has no {env._state_key!r} (it has {sorted(map(str, tensordict.keys()))}); "
            "step from the tensordict env.reset() returns, or from model states (env.reset(td, set_state=True))"
        )
    if env._state_kind == "dict":
        return state.to_dict()
    return state


def pack(env, snapshot: Snapshot, extra: Optional[dict] = None, compact: bool = False) -> dict:
    """Snapshot (+ ``extra`` entries) -> the entries of a tensordict (observation keys,
    model state, step count), made into a tensordict by ONE constructor call by the caller:
    this is on the per-step hot path. ``compact``: the step count ``[*B]`` (see
    :func:`step_entries`). An opaque state is held by the env (``_held_state``); a state of
    another kind than the first reset's is refused."""
    kind = state_kind(snapshot.state)
    if kind != env._state_kind:  # the state spec was built from the first reset's state
        raise TypeError(
            f"model state: the first reset gave a {env._state_kind} state, this call gave a {kind} "
            f"({type(snapshot.state).__name__}); return the state in one structure throughout "
            "(a hook that returns no state makes the observation the state)"
        )
    observation = snapshot.observation
    if observation is snapshot.state:  # the observation is the state: two keys, two tensors,
        # so writing into one never changes the other
        observation = clone_tree(observation)
    entries = dict(observation) if env._dict_observation else {OBSERVATION_KEY: observation}
    if env._carries_last:  # a copy: a transform writing into the observation never changes it
        entries[LAST_OBSERVATION_KEY] = clone_tree(observation)
    if env._state_kind != "opaque":
        entries[env._state_key] = snapshot.state
    entries[ELAPSED_KEY] = snapshot.elapsed if compact else snapshot.elapsed.unsqueeze(-1)
    if extra:
        entries.update(extra)
    if env._state_kind == "opaque":
        env._held_state = snapshot.state  # committed only after the step succeeded
    return entries


def reset_entries(env, mask: Optional[torch.Tensor], seed=None, options=None, batch=None) -> dict:
    """The entries of a reset tensordict for ``batch`` (the env's by default; not yet
    detached), the rows of ``mask`` reset (None: all); shared with the fast rollout."""
    batch = env.batch_size if batch is None else batch
    with env.logic.batch_override(tuple(batch)):
        snapshot, info = env.logic.reset(seed=seed, options=options, mask=mask)
    extra = start_flags(env, batch)
    if env._info_specs:
        extra.update(info_entries(env._info_specs, info, batch, len(env.batch_size), env.device, env.adapter, True))
    return env._pack(snapshot, extra)


def start_flags(env, batch) -> dict:
    """The per-env entries every start writes (``[*batch, 1]``): the done flags False and, where
    the env writes them, ``"nonfinite"`` False, ``"uncertainty"`` 0 and ``"halted"`` False, and
    ``"continue_prob"`` 1 (a start state is no end: it continues). A reset and a start from
    given states (``reset(td, set_state=True)``) both write these."""
    false = torch.zeros((*batch, 1), dtype=torch.bool, device=env.device)
    flags = {"done": false, "terminated": false.clone(), "truncated": false.clone()}
    if env.adapter.nan_policy == "truncate":
        flags[NONFINITE_KEY] = false.clone()
    if env.adapter.ensemble is not None:
        flags[UNCERTAINTY_KEY] = torch.zeros((*batch, 1), dtype=torch.float32, device=env.device)
        flags[HALTED_KEY] = false.clone()
    if env.adapter.continue_hook is not None:
        flags[CONTINUE_KEY] = torch.ones((*batch, 1), dtype=torch.float32, device=env.device)
    return flags


def step_entries(
    env, state: Any, elapsed: Optional[torch.Tensor], action: Any, batch=None, root: Any = None,
    compact: bool = False,
) -> dict:
    """The entries of a step's ``"next"`` tensordict from the model state (as the hooks
    take it), the step counts ``[*B, 1]`` and the action; shared with the fast rollout.
    A missing step count (None) is 0, a start, unless a time limit is set: then it is
    refused (the limit would never be reached). ``root`` (the step's input tensordict or
    entries) gives ``"last_observation"`` where the env carries it
    (``nan_policy="truncate"``, see :mod:`torchwm_rl.env_specs`). A batch other than the env's is
    stepped in one model call, its leading dims flattened into one.

    ``compact=True`` (the fast rollout): the per-env scalars (:func:`scalar_keys`: step
    counts in, reward, flags and step counts out) are ``[*B]``, without the trailing dim of
    1 the tensordict gives them (the fast rollout adds it once, to the stacked trajectory);
    every other entry is as without it."""
    batch = env.batch_size if batch is None else batch
    one = env._one_action_shape
    # one action per row, by the adapter's rule (checked here first, before a batch of
    # several dims is flattened, and to name TorchRL's planners, which give such actions)
    if one is not None and isinstance(action, torch.Tensor) and not action_shape_accepted(action.shape, one, batch):
        env._refuse_action_shape(action, batch)
    if elapsed is None:
        if env.logic.max_steps is not None:
            raise KeyError(
                f"step: the tensordict has no {ELAPSED_KEY!r} (the step count) and the env has a time limit "
                f"(max_episode_steps): read as 0 it would never truncate. Step from the tensordict the env "
                f"returned (a transform such as ExcludeTransform({ELAPSED_KEY!r}) must keep it), or set "
                f"{ELAPSED_KEY!r} ([*batch, 1] int64) where you build the tensordict"
            )
        elapsed = torch.zeros((*batch,) if compact else (*batch, 1), dtype=torch.int64, device=env.device)
    last = None
    if env._carries_last:
        last = None if root is None else root.get(LAST_OBSERVATION_KEY, None)
        if last is None:
            raise KeyError(
                f"step: the tensordict has no {LAST_OBSERVATION_KEY!r}, the env's own copy of the observation "
                "the step starts from, which nan_policy='truncate' hands out as a truncated row's final "
                "observation (this model's observation is not its state). Step from the tensordict the env "
                f"returned (it carries {LAST_OBSERVATION_KEY!r}), start from given states with "
                "env.reset(td, set_state=True) or env.rollout(..., tensordict=td, auto_reset=False), or pass "
                "decode_fn=(model, state) -> observation"
            )
    if batch != env.batch_size:
        if len(batch) > 1:
            flat = (batch.numel(),)
            if last is not None:
                root = {LAST_OBSERVATION_KEY: reshape_tree(last, len(batch), flat)}
            entries = env._step_entries(
                reshape_tree(state, len(batch), flat), elapsed.reshape(*flat, *elapsed.shape[len(batch):]),
                reshape_tree(action, len(batch), flat), torch.Size(flat), root, compact,
            )
            return {k: reshape_tree(v, 1, batch) for k, v in entries.items()}
        with env.logic.batch_override(tuple(batch)):
            return env._step_entries_now(state, elapsed, action, batch, root, compact)
    return env._step_entries_now(state, elapsed, action, batch, root, compact)


def refuse_action_shape(env, action: torch.Tensor, batch) -> None:
    """Raise the adapter's action-shape error for ``action`` at ``batch``, naming TorchRL's
    planners when the env is batched (they read the batched ``action_spec`` as one env's)."""
    hint = ""
    if env.batch_size:
        hint = (
            ". A policy or planner that reads env.action_spec (batched, "
            f"{tuple(env.action_spec.shape)}) as one env's gives such actions; TorchRL's CEMPlanner and "
            "MPPIPlanner do: plan on an env built with batch_size=() (the planner's input tensordict "
            "carries the batch of start states), or sample from env.full_action_spec_unbatched"
        )
    refuse_shape(action.shape, env._one_action_shape, batch, batch_name="the tensordict's batch", hint=hint)


def previous_observation(env, state: Any, root: Any) -> Any:
    """The observation a step starts from, for ``nan_policy="truncate"`` (called only when a
    row is truncated): the state itself when the observation is the state, else
    ``decode_fn(model, state)``, else the ``"last_observation"`` the env wrote itself and
    the step's input carries (untouched by transforms of the observation)."""
    if env._state_is_observation:
        return state
    if env._decode is not None:
        return env._decode({"model": env.model, "state": state})
    last = root.get(LAST_OBSERVATION_KEY)
    return last.to_dict() if isinstance(last, TensorDictBase) else last


def step_entries_now(env, state: Any, elapsed: torch.Tensor, action: Any, batch, root: Any = None,
                     compact: bool = False) -> dict:
    """:func:`step_entries` for a batch the logic steps as it is (the env's, or one leading
    dim under ``batch_override``): ONE model call, then the record's entries."""
    snapshot = Snapshot(state=state, observation=None, elapsed=elapsed if compact else elapsed.reshape(elapsed.shape[:-1]))
    previous = None
    if env.adapter.nan_policy == "truncate":  # as is, unless decode_fn makes it (then only when needed)
        previous = env._previous_observation(state, root) if env._decode is None else (
            lambda: env._previous_observation(state, root))
    snapshot, record = env.logic.step(snapshot, action, env._discard_rows, previous)
    terminated, truncated, reward = record.terminated, record.truncated, record.reward
    if not compact:
        terminated, truncated, reward = terminated.unsqueeze(-1), truncated.unsqueeze(-1), reward.unsqueeze(-1)
    entries = env._pack(snapshot, compact=compact)
    entries["reward"] = reward
    entries["terminated"] = terminated
    entries["truncated"] = truncated
    entries["done"] = terminated | truncated
    if env.adapter.nan_policy == "truncate":
        nonfinite = record.nonfinite
        if nonfinite is None:
            nonfinite = torch.zeros_like(record.truncated)
        entries[NONFINITE_KEY] = nonfinite if compact else nonfinite.unsqueeze(-1)
    if env._info_specs:
        entries.update(info_entries(env._info_specs, record.info, batch, len(env.batch_size), env.device,
                                    env.adapter, False))
    if record.uncertainty is not None:
        entries[UNCERTAINTY_KEY] = record.uncertainty if compact else record.uncertainty.unsqueeze(-1)
        entries[HALTED_KEY] = record.halted if compact else record.halted.unsqueeze(-1)
    if record.continue_prob is not None:
        entries[CONTINUE_KEY] = record.continue_prob if compact else record.continue_prob.unsqueeze(-1)
    return entries
