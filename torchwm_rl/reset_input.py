"""What a reset tensordict carries: model states to start from, and the rows a partial reset keeps.

A :class:`~torchwm_rl.WorldModelEnv` starts from model states given in a tensordict
(``reset(td, set_state=True)``, TorchRL's implicit set_state, ``rollout(tensordict=td,
auto_reset=False)``: a replay buffer's states, an encoder's latents, a TorchRL loss's). This
module decides when a tensordict carries such states (:func:`carries_states`, with the key
conventions of TorchRL's ``DreamerActorLoss``), checks them against the env's state spec
(:func:`check_given_state`), fills in what a start implies (:func:`complete_start`) and, for a
partial reset, what the rows kept from the tensordict need (:func:`complete_kept_rows`).

:func:`carries_states`, :func:`could_be_state` and :func:`check_given_state` take the specs
they compare against; the others take the env first (they are its methods of the same name with
a leading underscore, ``WorldModelEnv._complete_start = complete_start``) because they call its
hooks (``decode_fn``) and its episode logic.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Composite, TensorSpec

from .entries import clone_tree, start_flags
from .env_specs import (
    CONTINUE_KEY, ELAPSED_KEY, HALTED_KEY, LAST_OBSERVATION_KEY, NONFINITE_KEY, OBSERVATION_KEY, UNCERTAINTY_KEY,
    info_entries,
)
from .validation import to_observation

#: the root key TorchRL's ``DreamerActorLoss`` reads its start states from, and its default belief key
LOSS_STATE_KEY = "state"
LOSS_BELIEF_KEY = "belief"


def carries_states(tensordict: Optional[TensorDictBase], state_key: str, state_kind: str, env_keys,
                   state_spec: TensorSpec, env_ndim: int) -> bool:
    """TorchRL's implicit set_state (a plain ``reset(td)``, ``set_state`` unspecified): the
    envs start from ``td[state_key]`` when ``td`` carries it (as ``DreamerActorLoss``'s
    reset relies on; TorchRL warns that from v0.15 this needs ``set_state=True``). The step
    count alone is bookkeeping, not a state; a ``"_reset"`` mask asks for fresh starts of
    the masked rows (the others keep theirs), never a reset to the given states; an opaque
    model state never travels in a tensordict.

    ``env_keys``: the env's observation-spec keys; ``state_spec``: the spec of the model state
    (at the env's batch of ``env_ndim`` dims).

    A tensordict that carries ``"state"`` (the key ``DreamerActorLoss`` hard-codes) that is
    not this env's model state key nor one of its keys, and is laid out as the model state
    or one of its entries (:func:`could_be_state`), is refused: the envs would start from
    fresh reset-hook draws instead of those states. A ``"state"`` of another layout (a
    recurrent policy's ``TensorDictPrimer``) is not a model state and is left alone. A
    ``"belief"`` next to the model state that is not one of the env's keys (DreamerActorLoss's
    default belief key, left unmapped) is refused too: it would stay the replay's value at
    every imagined step."""
    if tensordict is None or state_kind == "opaque" or "_reset" in tensordict.keys():
        return False
    keys = tensordict.keys()
    if state_key in keys:
        if LOSS_BELIEF_KEY in keys and LOSS_BELIEF_KEY not in env_keys:
            # DreamerActorLoss selects ("state", belief key): its default "belief", a key this
            # env never steps, would stay the replay's value at every imagined step
            raise KeyError(
                f"reset: the tensordict carries the model state {state_key!r} and a 'belief' this env "
                "does not step: it would stay the given value at every imagined step while the state moves. "
                "With TorchRL's DreamerActorLoss, the whole model state is under the state key: "
                f"actor_loss.set_keys(belief={state_key!r}) (a dict state's entries are nested keys, "
                f"e.g. ({state_key!r}, 'belief')). To carry it unchanged on purpose, pass set_state=True"
            )
        return True
    if LOSS_STATE_KEY in keys and LOSS_STATE_KEY not in env_keys and could_be_state(
            tensordict.get(LOSS_STATE_KEY), tensordict.batch_size, state_spec, env_ndim):
        raise KeyError(
            f"reset: the tensordict carries 'state' but this env's model state is under "
            f"{state_key!r}, so the envs would start from fresh draws of the reset hook, not "
            "from those states. TorchRL's DreamerActorLoss reads its start states from 'state': build "
            "the env with WorldModelEnv(..., state_key='state'). To draw fresh starts on purpose, pass "
            "set_state=False"
        )
    return False


def could_be_state(value: Any, batch, state_spec: TensorSpec, env_ndim: int) -> bool:
    """Whether ``value`` (a tensordict's ``"state"``) may be the model state of ``state_spec``
    (at the env's batch of ``env_ndim`` dims), or part of it, for ``batch``: a tensordict
    sharing an entry with a dict state, or a tensor of the per-env shape of the state or of any
    of its entries (TorchRL's RSSM writes its latent ``"state"`` next to ``"belief"``).
    Anything else under ``"state"`` (a recurrent policy's ``TensorDictPrimer`` of another
    shape) is not a model state: a reset draws fresh starts."""
    if isinstance(value, TensorDictBase):
        return isinstance(state_spec, Composite) and bool(set(value.keys()) & set(state_spec.keys()))
    if not isinstance(value, torch.Tensor):
        return False
    leaves = [state_spec] if not isinstance(state_spec, Composite) else [
        state_spec[k] for k in state_spec.keys(include_nested=True, leaves_only=True)]
    return any(tuple(value.shape) == (*batch, *leaf.shape[env_ndim:]) for leaf in leaves)


def check_given_state(state: Any, state_spec: TensorSpec, env_ndim: int, batch, name: str) -> Any:
    """A model state given in a tensordict (replay buffer, encoder) has the structure, shapes
    and dtypes of the env's own (``state_spec``, at the env's batch of ``env_ndim`` dims), for
    ``batch``: a missing entry of a dict state (e.g. a loss that selected part of it) or a wrong
    shape is an error naming the key (``name`` for the state itself), never a start from a
    different state. A leaf of a narrower dtype of the same kind (float32 for a float64 state:
    replay buffers store the observations' float32) is widened, which keeps every value; returns
    the state (the same object when nothing was widened). Once per start, not per step."""

    def check(value, spec, name):
        if isinstance(spec, Composite):
            if not isinstance(value, TensorDictBase):
                raise TypeError(f"{name}: expected the model state's entries {sorted(spec.keys())}, "
                                f"got a {type(value).__name__}")
            want, got = set(spec.keys()), set(value.keys())
            if want != got:
                raise KeyError(
                    f"{name}: the model state has the entries {sorted(want)}, the tensordict's has "
                    f"{sorted(got)} (missing {sorted(want - got)}, unexpected {sorted(got - want)})"
                )
            fixed = {key: check(value.get(key), spec[key], f"{name}[{key!r}]") for key in spec.keys()}
            if all(fixed[key] is value.get(key) for key in fixed):
                return value
            out = value.copy()
            out.update(fixed)
            return out
        expected = (*batch, *spec.shape[env_ndim:])
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: expected shape {expected} (the tensordict's batch {tuple(batch)}, "
                             f"then one env's state shape {tuple(spec.shape[env_ndim:])}), got {got}")
        if value.dtype != spec.dtype:
            same_kind = value.is_floating_point() == spec.dtype.is_floating_point and value.dtype != torch.bool
            if not (same_kind and torch.promote_types(value.dtype, spec.dtype) == spec.dtype):
                raise TypeError(f"{name}: expected dtype {spec.dtype} (the model's state), got {value.dtype}")
            return value.to(spec.dtype)
        return value

    return check(state, state_spec, name)


def observation_keys(env) -> list:
    """The env's observation keys at the tensordict's root (a Dict space's keys, else ``"observation"``)."""
    return list(env.adapter.observation_space.spaces) if env._dict_observation else [OBSERVATION_KEY]


def start_keys(env) -> list:
    """The keys of a start from given states (``reset(td, set_state=True)``): observation,
    model state, step count, done flags and the optional entries the env writes."""
    keys = [*observation_keys(env), env._state_key, ELAPSED_KEY, "done", "terminated", "truncated"]
    if env.adapter.nan_policy == "truncate":
        keys.append(NONFINITE_KEY)
    if env._carries_last:
        keys.append(LAST_OBSERVATION_KEY)
    if env.adapter.continue_hook is not None:
        keys.append(CONTINUE_KEY)
    if env.adapter.ensemble is not None:
        keys.extend((UNCERTAINTY_KEY, HALTED_KEY))
    return keys


def complete_start(env, tensordict: TensorDictBase, in_place: bool = False, check: bool = True) -> TensorDictBase:
    """``tensordict`` with what a start state implies filled in where absent: the
    observation (:func:`observation_of`), the step count (0), the done flags (False) and
    declared info values (0); with ``check``, the given model state checked
    (:func:`check_given_state`, a widened state set on a copy unless ``in_place``). Unchanged
    (same object) when nothing is missing."""
    batch = tensordict.batch_size
    keys = set(tensordict.keys())
    if check and env._state_key in keys and env._state_kind != "opaque":
        given = tensordict.get(env._state_key)
        state = check_given_state(given, env.state_spec[env._state_key], len(env.batch_size), batch,
                                  repr(env._state_key))
        if state is not given:  # widened to the state's dtypes: a copy, the caller's stays as it is
            tensordict = tensordict.copy() if not in_place else tensordict
            tensordict.set(env._state_key, state)
    obs_keys = observation_keys(env)
    missing_obs = [k for k in obs_keys if k not in keys]
    fill = {}
    if missing_obs:
        fill.update(observation_of(env, tensordict, missing_obs))
    if env._carries_last and LAST_OBSERVATION_KEY not in keys:  # a start: its own observation
        observation = {k: fill[k] if k in fill else tensordict.get(k) for k in obs_keys}
        fill[LAST_OBSERVATION_KEY] = clone_tree(observation if env._dict_observation
                                                else observation[OBSERVATION_KEY])
    if ELAPSED_KEY not in keys:
        fill[ELAPSED_KEY] = torch.zeros((*batch, 1), dtype=torch.int64, device=env.device)
    # the done flags and the optional entries as a reset writes them (not done, not halted, continuing)
    fill.update({k: v for k, v in start_flags(env, batch).items() if k not in keys})
    reset_info = info_entries(env._info_specs, {}, batch, len(env.batch_size), env.device, env.adapter, True)
    fill.update({k: v for k, v in reset_info.items() if k not in keys})
    if not fill:
        return tensordict
    out = tensordict if in_place else tensordict.copy()
    out.update(fill)
    return out


def complete_kept_rows(env, tensordict: TensorDictBase) -> None:
    """A partial reset keeps the rows not reset from ``tensordict``; TorchRL would pad a key
    the tensordict lacks with zeros, so what the kept rows need is filled in here (in place)
    or refused.

    * A tensordict carrying nothing but the ``"_reset"`` mask (TorchRL's
      ``select_reset_only``: ``SerialEnv`` resets its sub-envs so) asks, as for any stateful
      TorchRL env, to keep the other envs where they stand: in the last tensordict this env
      gave at its batch (a step's ``"next"`` or a reset; ``env._current``). Never given one:
      refused.
    * Otherwise a missing model state is an error, and so is a missing step count when a
      time limit is set (read as 0 the kept envs' episodes would run past it); without a
      limit it starts at 0. A missing observation comes from the state
      (:func:`observation_of`)."""
    mask = tensordict.get("_reset", None)
    if mask is None or bool(mask.all()):
        return
    keys = set(tensordict.keys())
    if keys == {"_reset"} and env._current is not None and tensordict.batch_size == env.batch_size:
        kept = set(env.observation_spec.keys()) | set(env.done_keys)
        # copies (TorchRL merges the reset rows into the tensordict's tensors in place), with no
        # graph: what a reset gives carries none (see WorldModelEnv._reset)
        current = {k: v for k, v in env._current.items() if k in kept}
        tensordict.update(TensorDict(current, batch_size=env.batch_size, device=env.device).detach().clone())
        keys = set(tensordict.keys())
    if env._state_key in env.state_spec.keys() and env._state_key not in keys:
        raise KeyError(
            f"partial reset: the envs not being reset keep their state, but the tensordict has no "
            f"{env._state_key!r} (it has {sorted(map(str, keys))}); pass the tensordict of the "
            "previous step or reset (it carries every key), or reset every env"
        )
    if ELAPSED_KEY not in keys and env.logic.max_steps is not None:
        raise KeyError(
            f"partial reset: the envs not being reset keep their step count, but the tensordict has no "
            f"{ELAPSED_KEY!r} and the env has a time limit (max_episode_steps), which those envs would run "
            f"past (read as 0); pass the tensordict of the previous step or reset (a transform such as "
            f"ExcludeTransform({ELAPSED_KEY!r}) must keep it), or reset every env"
        )
    # the kept rows are the env's own running states, not given start states: not checked
    # against the state spec (the fast path's auto-reset never checks them either)
    env._complete_start(tensordict, in_place=True, check=False)


def as_hook_state(state: Any, state_kind: str) -> Any:
    """A state read from a tensordict as the hooks take it: a dict state's TensorDict as a dict."""
    return state.to_dict() if state_kind == "dict" and isinstance(state, TensorDictBase) else state


def observation_of(env, tensordict: TensorDictBase, missing: list) -> dict:
    """The observation entries ``missing`` of the model states in ``tensordict``: the state
    itself (cast to the space, a copy) when the observation is the state, else
    ``decode_fn(model, state)``; refused when the tensordict has no state, or neither applies."""
    state = tensordict.get(env._state_key, None)
    if state is None:
        raise KeyError(
            f"a start state needs {env._state_key!r} in the tensordict (got keys {sorted(map(str, tensordict.keys()))})"
        )
    batch = tensordict.batch_size
    if env._state_is_observation:
        # the observation is the state cast to the space's dtype, and a tensor of its own
        # (writing into one of the two keys must never change the other)
        observation = clone_tree(to_observation(
            state.to_dict() if env._state_kind == "dict" else state, env.adapter.observation_space,
            tuple(batch), env.device))
    elif env._decode is not None:
        with torch.no_grad(), env.logic.batch_override(tuple(batch)):
            raw = env._decode({"model": env.model, "state": as_hook_state(state, env._state_kind)})
        try:
            observation = to_observation(raw, env.adapter.observation_space, tuple(batch), env.device)
        except (TypeError, ValueError) as err:
            raise type(err)(f"decode_fn: {err}") from None
    else:
        raise KeyError(
            f"reset from given states: the tensordict has {env._state_key!r} but no observation {missing}, "
            "and this model's observation is not its state; put the observation in the tensordict "
            "or pass decode_fn=(model, state) -> observation to WorldModelEnv"
        )
    entries = dict(observation) if env._dict_observation else {OBSERVATION_KEY: observation}
    return {k: entries[k] for k in missing}


def start_from_given(env, tensordict: Optional[TensorDictBase], batch, seed=None) -> TensorDictBase:
    """``reset(td, set_state=True)``: a start from the model states ``td`` carries (TorchRL's
    set_state contract), completed (:func:`complete_start`), checked, copied, with the start's
    flags (:func:`~torchwm_rl.entries.start_flags`: done flags False, not halted, ...); the
    episode logic starts its episodes (a pending seed). Atomic: a failure leaves the streams
    and a pending seed alone. No ``state_key`` in ``td``: refused."""
    if tensordict is None or env._state_key not in tensordict.keys():
        got = sorted(map(str, tensordict.keys())) if tensordict is not None else "no tensordict"
        raise KeyError(f"reset(set_state=True) needs {env._state_key!r} in the tensordict, got {got}")
    keys = start_keys(env)
    with env.logic.transaction():  # a failure leaves the streams and a pending seed alone
        start = env._complete_start(tensordict.select(*keys, *env._info_specs, strict=False))
        out = start.select(*keys, *env._info_specs).clone(False)
        env.logic.start_from_given_states(tuple(batch), seed)
        # a start, whatever the given rows' flags were (a replay of steps that ended, halted or
        # were truncated for NaN): what a reset writes, as the done flags
        out.update(start_flags(env, batch))
    return out
