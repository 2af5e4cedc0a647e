"""The TorchRL specs of a :class:`~torchwm_rl.WorldModelEnv` and the keys they name.

TensorDict layout (``B`` = ``batch_size``):

* observation: ``"observation"`` (non-Dict space) or each Dict key at the root, ``[*B, ...]``
* ``"action"``: ``[*B, ...]`` (Discrete -> integer index ``[*B]``)
* ``("next", "reward")``: float32 ``[*B, 1]``; ``"done"``, ``"terminated"``, ``"truncated"``:
  bool ``[*B, 1]``
* ``"model_state"`` (the ``state_key`` argument; e.g. ``"state"`` for TorchRL's Dreamer losses):
  the model's latent state when it is a tensor or a (dict/TensorDict of) tensors, so rollouts
  are functional; an opaque Python state (unbatched envs only) is held by
  the env instead. ``"elapsed_steps"``: int64 ``[*B, 1]``, for the time limit (a step input
  without it is refused when a time limit is set; without one it is a start, at 0).
* ``"nonfinite"``: bool ``[*B, 1]``, only with ``nan_policy="truncate"``.
* ``"last_observation"``: the env's own copy of the observation it gave (the observation's
  layout), only with ``nan_policy="truncate"`` for a model whose observation is not its state
  and no ``decode_fn``: a state entry, so it travels with the state through collectors,
  ``ParallelEnv``/``SerialEnv`` and partial resets, and transforms of ``"observation"``
  never touch it. A truncated step's final observation is the one it started from: this.
* ``"uncertainty"``: float32 ``[*B, 1]`` and ``"halted"``: bool ``[*B, 1]``, only with
  ``ensemble_size`` (see :mod:`torchwm_rl.ensemble`; 0 / False after a reset).
* ``"continue_prob"``: float32 ``[*B, 1]`` in [0, 1], only with ``continue_fn``: the model's
  probability of continuing from the state the step reached (Dreamer's continue head; 1 after a
  reset), with its graph when grad is enabled, for losses that weight returns by it.
  ``"terminated"`` is drawn from it or thresholded (``continue_threshold``; see
  :class:`~torchwm_rl.adapter.ModelAdapter`).

One reset of the model at construction (the probe :class:`~torchwm_rl.episode.Snapshot`) shows
the model state's structure; with the adapter's spaces and options that fixes every spec:
:func:`make_specs`. Info values the user asks for (``info_keys``) get theirs from
:func:`make_info_specs`, and :func:`info_entries` turns a hook's info into those entries at each
step and reset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, TensorSpec, Unbounded

from .episode import is_tensor_state
from .spaces import space_to_spec
from .validation import to_info_value

STATE_KEY = "model_state"
ELAPSED_KEY = "elapsed_steps"
NONFINITE_KEY = "nonfinite"
LAST_OBSERVATION_KEY = "last_observation"
UNCERTAINTY_KEY = "uncertainty"
HALTED_KEY = "halted"
CONTINUE_KEY = "continue_prob"
OBSERVATION_KEY = "observation"

# the env's own keys (plus "nonfinite", "uncertainty", "halted", "continue_prob" when the env writes them)
RESERVED_KEYS = frozenset({
    "action", "reward", "done", "terminated", "truncated", "next", "_reset", "_step", STATE_KEY, ELAPSED_KEY,
})

# keys the env writes only with some options (nan_policy="truncate", an ensemble, continue_fn)
OPTIONAL_KEYS = frozenset({NONFINITE_KEY, UNCERTAINTY_KEY, HALTED_KEY, LAST_OBSERVATION_KEY, CONTINUE_KEY})

#: how the model state travels: a tensor, a TensorDict or a dict of tensors under the state key,
#: or an opaque Python object the env holds (unbatched envs only)
StateKind = Literal["tensor", "tensordict", "dict", "opaque"]


def state_kind(state: Any) -> StateKind:
    """How ``state`` travels (see :data:`StateKind`)."""
    if isinstance(state, torch.Tensor):
        return "tensor"
    if isinstance(state, TensorDictBase):
        return "tensordict"
    if isinstance(state, Mapping) and is_tensor_state(state):
        return "dict"
    return "opaque"


def state_spec(state: Any, device) -> TensorSpec:
    """The spec of a tensor state, or the ``Composite`` of a (nested) dict/TensorDict state."""
    if isinstance(state, torch.Tensor):
        return Unbounded(shape=state.shape, dtype=state.dtype, device=device)
    items = state.items()
    shape = state.batch_size if isinstance(state, TensorDictBase) else ()
    return Composite({k: state_spec(v, device) for k, v in items}, shape=shape, device=device)


def check_state_batch(state: Any, batch: tuple, key: str) -> None:
    """Every tensor of a state that travels in the TensorDict leads with the batch dims."""
    if not batch:
        return
    if isinstance(state, torch.Tensor):
        if tuple(state.shape[: len(batch)]) != batch:
            raise ValueError(
                f"{key}: a batched env needs a model state with leading dims {batch}, "
                f"got shape {tuple(state.shape)} from the reset hook"
            )
        return
    for k, v in state.items():
        check_state_batch(v, batch, f"{key}[{k!r}]")


def refuse_reserved(keys, what: str, taken=(), reserved=RESERVED_KEYS) -> None:
    """Keys that would overwrite (or be overwritten by) the env's own entries are refused."""
    taken = set(taken)
    clash = sorted(k for k in keys if k in reserved or k in taken)
    if clash:
        raise ValueError(
            f"{what}: key(s) {clash} collide with the tensordict's own keys "
            f"({sorted(reserved | taken)}); rename them"
        )


def parse_batch_size(value: Any) -> torch.Size:
    """``()`` or ``(N,)`` with N >= 1; an int N is read as ``(N,)``."""
    if isinstance(value, bool):
        raise TypeError(f"batch_size: expected () or (N,), got {value!r}")
    if isinstance(value, int):
        value = (value,)
    try:
        size = torch.Size(value)
    except TypeError:
        raise TypeError(f"batch_size: expected () or (N,), got {value!r}") from None
    if len(size) > 1 or any(n < 1 for n in size):
        raise ValueError(f"batch_size must be () or (N,) with N >= 1, got {tuple(size)}")
    return size


def check_state_key(state_key: Any) -> frozenset:
    """``state_key`` is a non-empty str that is none of the env's own keys; returns the env's
    reserved keys with it in place of the default :data:`STATE_KEY`."""
    if not isinstance(state_key, str) or not state_key:
        raise TypeError(f"state_key: expected a non-empty str (a root tensordict key), got {state_key!r}")
    own = (RESERVED_KEYS - {STATE_KEY}) | OPTIONAL_KEYS
    if state_key in own:
        raise ValueError(
            f"state_key={state_key!r} collides with one of the env's own keys ({sorted(own)}); "
            "pick another state_key"
        )
    return (RESERVED_KEYS - {STATE_KEY}) | {state_key}


@dataclass
class EnvSpecs:
    """What :func:`make_specs` fixes: the env's specs, and what the step path reads from them."""

    observation: Composite
    state: Composite
    action: TensorSpec
    reward: TensorSpec
    done: Composite
    #: the observation space is a Dict (its keys at the root) rather than one ``"observation"``
    dict_observation: bool
    state_kind: StateKind
    #: one env's action shape, for the step's shape check (None: a Dict action)
    one_action_shape: Optional[tuple]


def make_specs(adapter: Any, probe_state: Any, batch: torch.Size, device, state_key: str, reserved: frozenset,
               carries_last: bool) -> EnvSpecs:
    """The specs of an env at ``batch`` on ``device`` over ``adapter``, whose reset gave
    ``probe_state``: observation keys (Dict keys at the root, else ``"observation"``), the model
    state under ``state_key`` (unless opaque, which a batched env refuses), the step count,
    ``"last_observation"`` where ``carries_last``, and the optional entries the adapter's
    options ask for. A Dict key or ``state_key`` that collides with the env's keys is refused."""
    obs_spec = space_to_spec(adapter.observation_space, batch, device, "observation_space")
    dict_observation = isinstance(obs_spec, Composite)
    if dict_observation:
        optional = ([NONFINITE_KEY] if adapter.nan_policy == "truncate" else []) + (
            [UNCERTAINTY_KEY, HALTED_KEY] if adapter.ensemble is not None else []) + (
            [LAST_OBSERVATION_KEY] if carries_last else []) + (
            [CONTINUE_KEY] if adapter.continue_hook is not None else [])
    obs_keys = list(obs_spec.keys()) if dict_observation else [OBSERVATION_KEY]
    if state_key in obs_keys:
        raise ValueError(
            f"state_key={state_key!r} collides with the observation key(s) {obs_keys}; "
            "pick another state_key"
        )
    if dict_observation:
        refuse_reserved(obs_spec.keys(), "observation_space (a Dict: its keys are tensordict keys)", optional,
                        reserved=reserved)
    observation = Composite(
        dict(obs_spec.items()) if dict_observation else {OBSERVATION_KEY: obs_spec},
        shape=batch,
        device=device,
    )
    state = Composite(shape=batch, device=device)
    kind = state_kind(probe_state)
    if kind != "opaque":
        check_state_batch(probe_state, tuple(batch), state_key)
        state[state_key] = state_spec(probe_state, device)
    elif batch:
        raise TypeError(
            f"a batched env needs a tensor (or dict/TensorDict of tensors) model state with "
            f"leading dim {batch[0]}; the reset hook returned {type(probe_state).__name__}"
        )
    state[ELAPSED_KEY] = Unbounded(shape=(*batch, 1), dtype=torch.int64, device=device)
    if carries_last:
        state[LAST_OBSERVATION_KEY] = obs_spec.clone()
    for key, spec in state.items():
        observation[key] = spec.clone()
    if adapter.nan_policy == "truncate":
        observation[NONFINITE_KEY] = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
    if adapter.ensemble is not None:
        observation[UNCERTAINTY_KEY] = Unbounded(shape=(*batch, 1), dtype=torch.float32, device=device)
        observation[HALTED_KEY] = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
    if adapter.continue_hook is not None:
        observation[CONTINUE_KEY] = Bounded(0.0, 1.0, shape=(*batch, 1), dtype=torch.float32, device=device)
    action = space_to_spec(adapter.action_space, batch, device, "action_space")
    flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
    return EnvSpecs(
        observation=observation,
        state=state,
        action=action,
        reward=Unbounded(shape=(*batch, 1), dtype=torch.float32, device=device),
        done=Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=batch,
                       device=device),
        dict_observation=dict_observation,
        state_kind=kind,
        one_action_shape=None if isinstance(action, Composite) else tuple(action.shape[len(batch):]),
    )


def make_info_specs(info_keys: Any, batch: tuple, device, probe_step: Callable[[], dict]) -> dict:
    """Specs of the model's info values put in the tensordict (GymWrapper's info reader):
    declared (``{key: spec of one env}``, expanded to ``batch``) or probed from the info of one
    step (a list of keys, or one key: ``probe_step()`` runs that step and returns its info).
    None: no info values (``{}``)."""
    if info_keys is None:
        return {}
    if isinstance(info_keys, Mapping):
        specs = {}
        for key, spec in info_keys.items():
            if not isinstance(spec, TensorSpec):
                raise TypeError(f"info_keys[{key!r}]: expected a TensorSpec of one env, got {type(spec).__name__}")
            specs[key] = spec.to(device).expand(*batch, *spec.shape)
        return specs
    info_keys = [info_keys] if isinstance(info_keys, str) else list(info_keys)
    info = probe_step()
    specs = {}
    for key in info_keys:
        if key not in info:
            raise KeyError(
                f"info_keys: the model's step info has no {key!r} (it has {sorted(info)}); "
                "declare it with a spec instead (info_keys={key: spec}) if it only appears later"
            )
        value = torch.as_tensor(info[key], device=device)
        if tuple(value.shape[: len(batch)]) != batch:
            raise ValueError(f"info[{key!r}]: expected leading dims {batch}, got shape {tuple(value.shape)}")
        specs[key] = Unbounded(shape=value.shape, dtype=value.dtype, device=device)
    return specs


def info_entries(info_specs: dict, info: Optional[dict], batch, env_ndim: int, device, adapter: Any,
                 at_reset: bool) -> dict:
    """The declared info values (``info_specs``, specs at the env's batch of ``env_ndim`` dims)
    of a step (a missing one is an error) or a reset (a reset has no transition: a value the
    reset hook does not give is zero), for ``batch``."""
    out = {}
    for key, spec in info_specs.items():
        value = info.get(key) if info else None
        per_env = spec.shape[env_ndim:]
        if value is None:
            if not at_reset:
                raise KeyError(
                    f"info key {key!r} (declared in info_keys) is missing from the model's step info "
                    f"(it has {sorted(info or {})})"
                )
            out[key] = torch.zeros((*batch, *per_env), dtype=spec.dtype, device=device)
        else:
            # the one converter of hook outputs (shape, a cast that keeps the value), then the
            # adapter's buffer-reuse guard, as states and observations: an info buffer the
            # model writes into again must not change recorded steps
            tensor = to_info_value(value, (*batch, *per_env), spec.dtype, device, f"info[{key!r}]")
            out[key] = adapter._unalias((tensor,))[0]
    return out
