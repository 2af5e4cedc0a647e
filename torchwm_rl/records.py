"""Parse the return forms of user reset and transition callables into one record shape.

This module only decides *which* value is the state, the observation, the reward, ...; it does
not convert or validate values (that is :mod:`torchwm_rl.validation`). The one combination it
makes is splitting a Gym 4-tuple's ``done`` with ``info["TimeLimit.truncated"]`` exactly as
Gymnasium's step-API converter does. Accepted forms:

reset:
    ``obs`` | ``(obs, info)`` | ``(state, obs)`` | ``(state, obs, info)`` | mapping with keys
    from :data:`STATE_KEYS`, :data:`OBSERVATION_KEYS` and ``info``.
transition:
    mapping (keys below) | ``(obs, reward, terminated, truncated, info)`` (Gymnasium) |
    ``(obs, reward, done, info)`` (Gym) | ``(state, obs, reward)`` |
    ``(state, obs, reward, terminated, truncated, info)`` | a bare next observation/state.
    The Gymnasium and Gym tuples take the next state from ``info["model_state"]`` when present
    (else the observation is the state), as TorchWM does; the info keeps that entry. A 2-tuple
    is refused: ``(state, obs)`` and ``(obs, reward)`` cannot be told apart.

Each record says how the value was read (:attr:`RawRecord.form`), so a later conversion error
can say it ("read as Gymnasium's (obs, reward, terminated, truncated, info)").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from .validation import as_mapping

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()

STATE_KEYS = ("state", "next_state", "latent", "model_state")
OBSERVATION_KEYS = ("observation", "obs", "next_observation", "next_obs", "image", "pixels")
REWARD_KEYS = ("reward", "rewards")
TERMINATED_KEYS = ("terminated", "done", "terminal")
TRUNCATED_KEYS = ("truncated",)
INFO_KEYS = ("info", "infos")
_RECORD_KEYS = frozenset(
    STATE_KEYS + OBSERVATION_KEYS + REWARD_KEYS + TERMINATED_KEYS + TRUNCATED_KEYS + INFO_KEYS
)


@dataclass
class RawRecord:
    """Values as the user returned them; ``MISSING`` where the form did not carry one."""

    state: Any = MISSING
    observation: Any = MISSING
    reward: Any = MISSING
    terminated: Any = MISSING
    truncated: Any = MISSING
    info: dict = field(default_factory=dict)
    form: str = "a bare observation"


def _is_dict_observation(value: Any, dict_keys: frozenset | None) -> bool:
    """A mapping (or TensorDict) whose keys are exactly those of the Dict observation space."""
    return dict_keys is not None and isinstance(value, (Mapping, TensorDictBase)) and set(value.keys()) == dict_keys


_FIELDS = (
    (STATE_KEYS, "state"), (OBSERVATION_KEYS, "observation"), (REWARD_KEYS, "reward"),
    (TERMINATED_KEYS, "terminated flag"), (TRUNCATED_KEYS, "truncated flag"), (INFO_KEYS, "info"),
)
# key tuple of a returned mapping -> which of its keys holds each field (None: absent). A model
# returns the same keys every step, so the checks below run once per key set, not per step.
_LAYOUTS: dict = {}


def _layout(mapping: Mapping, hook: str) -> tuple:
    """The key of each of :data:`_FIELDS` in ``mapping`` (None where absent); raises for unknown
    keys and for two keys of one field."""
    unknown = [k for k in mapping if k not in _RECORD_KEYS]
    if unknown:
        raise ValueError(
            f"{hook} returned a mapping with unknown key(s) {unknown}; accepted keys are "
            f"{sorted(_RECORD_KEYS)}. Put diagnostics under 'info'."
        )
    layout = []
    for keys, what in _FIELDS:
        found = [k for k in keys if k in mapping]
        if len(found) > 1:
            raise ValueError(f"{hook} returned both {found[0]!r} and {found[1]!r} for the {what}; return one.")
        layout.append(found[0] if found else None)
    return tuple(layout)


def _from_mapping(mapping: Mapping, hook: str, form: str = "a mapping") -> RawRecord:
    keys = tuple(mapping)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        layout = _layout(mapping, hook)
        if len(_LAYOUTS) < 1024:
            _LAYOUTS[keys] = layout
    state, observation, reward, terminated, truncated, info = [
        MISSING if key is None else mapping[key] for key in layout
    ]
    return RawRecord(state, observation, reward, terminated, truncated, _as_info(info, hook), form)


def _as_info(info: Any, hook: str) -> dict:
    if info is MISSING or info is None:
        return {}
    info = as_mapping(info)
    if not isinstance(info, Mapping):
        raise TypeError(f"{hook} returned info of type {type(info).__name__}; expected a dict.")
    return dict(info)


def parse_reset(value: Any, dict_keys: frozenset | None = None, hook: str = "reset_fn") -> RawRecord:
    """Split a reset return value into state / observation / info.

    ``dict_keys`` are the keys of a Dict observation space (None otherwise): a mapping with
    exactly those keys is an observation, not a record. A TensorDict reads as a mapping (a
    record) or as a Dict observation, as a dict would.
    """
    if isinstance(value, TensorDictBase) and not _is_dict_observation(value, dict_keys):
        value = as_mapping(value)
    if isinstance(value, Mapping) and not _is_dict_observation(value, dict_keys):
        if any(k in _RECORD_KEYS for k in value):
            return _from_mapping(value, hook)
    if isinstance(value, tuple):
        if len(value) == 3:
            return RawRecord(state=value[0], observation=value[1], info=_as_info(value[2], hook),
                             form="(state, obs, info)")
        if len(value) == 2:
            second = value[1]
            if isinstance(second, TensorDictBase) and not _is_dict_observation(second, dict_keys):
                second = as_mapping(second)
            if isinstance(second, Mapping) and not _is_dict_observation(second, dict_keys):
                return RawRecord(observation=value[0], info=_as_info(second, hook), form="(obs, info)")
            return RawRecord(state=value[0], observation=second, form="(state, obs)")
        raise ValueError(
            f"{hook} returned a tuple of length {len(value)}; expected obs, (obs, info), "
            "(state, obs), (state, obs, info) or a mapping."
        )
    return RawRecord(observation=value)


def parse_transition(value: Any, dict_keys: frozenset | None = None, hook: str = "transition_fn") -> RawRecord:
    """Split a transition return value into the fields of :class:`RawRecord` (a TensorDict
    reads as a mapping, or as a Dict observation, as a dict would)."""
    if type(value) is not dict and isinstance(value, TensorDictBase) and not _is_dict_observation(value, dict_keys):
        value = as_mapping(value)
    if (type(value) is dict or isinstance(value, Mapping)) and not _is_dict_observation(value, dict_keys):
        if tuple(value) in _LAYOUTS or any(k in _RECORD_KEYS for k in value):  # a known layout: a record
            return _from_mapping(value, hook)
    if isinstance(value, tuple):
        n = len(value)
        if n == 6:
            s, o, r, term, trunc, info = value
            return RawRecord(s, o, r, term, trunc, _as_info(info, hook),
                             "(state, obs, reward, terminated, truncated, info)")
        if n == 5:
            o, r, term, trunc, info = value
            info = _as_info(info, hook)
            return RawRecord(info.get("model_state", MISSING), o, r, term, trunc, info,
                             "Gymnasium's (obs, reward, terminated, truncated, info)")
        if n == 4:
            o, r, done, info = value
            info = _as_info(info, hook)
            form = "Gym's (obs, reward, done, info)"
            state = info.get("model_state", MISSING)
            time_limit = info.pop("TimeLimit.truncated", MISSING)
            if time_limit is MISSING:
                return RawRecord(state, o, r, done, MISSING, info, form)
            terminated, truncated = _split_done(done, time_limit)
            return RawRecord(state, o, r, terminated, truncated, info, form)
        if n == 3:
            return RawRecord(state=value[0], observation=value[1], reward=value[2], form="(state, obs, reward)")
        if n == 2:
            raise ValueError(
                f"{hook} returned a 2-tuple, which could be (state, obs) or (obs, reward); return "
                "{'state': ..., 'observation': ...} or (state, obs, reward) instead."
            )
        raise ValueError(
            f"{hook} returned a tuple of length {n}; expected a mapping, (obs, reward, terminated, "
            "truncated, info), (obs, reward, done, info), (state, obs, reward) or "
            "(state, obs, reward, terminated, truncated, info)."
        )
    return RawRecord(observation=value)


def _split_done(done: Any, time_limit: Any) -> tuple:
    """Gym's ``done`` + ``info["TimeLimit.truncated"]`` -> ``(terminated, truncated)`` as
    Gymnasium's ``convert_to_terminated_truncated_step_api`` does (``terminated = done and not
    time_limit``, ``truncated = done and time_limit``). Written out because that function uses
    Python ``and``/numpy on the values, which fails for batched (or CUDA) tensors."""
    if isinstance(done, torch.Tensor) or isinstance(time_limit, torch.Tensor):
        device = done.device if isinstance(done, torch.Tensor) else time_limit.device
        done = torch.as_tensor(done, device=device).bool()
        time_limit = torch.as_tensor(time_limit, device=device).bool()
        return done & ~time_limit, done & time_limit
    done, time_limit = np.asarray(done, dtype=bool), np.asarray(time_limit, dtype=bool)
    return done & ~time_limit, done & time_limit
