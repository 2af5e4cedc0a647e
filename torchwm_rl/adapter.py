"""ModelAdapter: the one place that understands user world models.

Both the TorchRL path (:class:`torchwm_rl.WorldModelEnv`) and the Gymnasium/SB3 exports call
this adapter and nothing else of the user's. It

* finds the hooks: explicit callables first, then the model's own methods
  (reset: ``reset_env``/``reset_state``/``reset``; transition: ``env_step``, ``step``,
  ``predict_step``, ``predict``, ``imagine_step``, ``transition``, then ``__call__``);
* binds each hook once, at construction, to TorchWM's argument list (:mod:`torchwm_rl.calling`:
  the contract table, the binding rule, and the signatures it refuses);
* parses every documented return form (:mod:`torchwm_rl.records`);
* converts and validates values against the spaces (:mod:`torchwm_rl.validation`) and applies
  the NaN/inf policy.

States are handed back to the model exactly as it returned them. As in TorchWM,
``action_transform_fn`` receives the library's action as given (no tensor conversion) and its
output reaches the model as is. Nothing here detaches or disables grad: the
caller decides (the Gymnasium exports run under ``torch.no_grad``).
"""

from __future__ import annotations

import numbers
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict, TensorDictBase

from .calling import Hook
from .compiled import compile_hooks
from .deferred import DeferredChecks, any_nonfinite, maybe_nonfinite, maybe_nonfinite_rows
from .ensemble import NEGATIVE_UNCERTAINTY, Ensemble
from .errors import TorchWMError, ValueMismatch
from .options import ACTION_CHECKS, NAN_POLICIES, RESET_SCHEDULES, ModelOptions, model_options, with_model_options
from .records import MISSING, RawRecord, parse_reset, parse_transition
from .spaces import check_supported, numpy_to_torch_dtype
from .train_mode import warn_if_training
from .validation import (
    action_as_given,
    all_finite,
    cast_keeping_value,
    check_action,
    check_observation,
    env_rows,
    flatten_observation,
    nonfinite_row_mask,
    nonfinite_rows,
    finite_outside_unit_interval,
    outside_unit_interval,
    probability_check,
    to_action,
    to_batched_scalar,
    to_observation,
    to_probability,
    where_rows,
    zero_nonfinite,
)

#: the options that need an ensemble (ensemble_size)
ENSEMBLE_OPTIONS = ("propagation", "uncertainty_penalty", "uncertainty_threshold", "halt_reward", "uncertainty_fn")

#: the key, in the per-step NaN check, of the tensor that is NaN where continue_fn's output is outside [0, 1]
CONTINUE_OUTSIDE = "continue_fn's range"
#: the key of continue_fn's output itself in that check (NaN/inf there goes through nan_policy)
CONTINUE_KEY = "continue_prob (continue_fn's output)"

RESET_METHODS = ("reset_env", "reset_state", "reset")
TRANSITION_METHODS = ("env_step", "step", "predict_step", "predict", "imagine_step", "transition")


def _resolve(explicit: Optional[Callable], model: Any, methods: tuple, hook: str) -> Optional[Hook]:
    """The explicit callable, else the first of the model's ``methods`` it has, bound as
    ``hook`` (a model method gets the argument list without the model)."""
    if explicit is not None:
        if not callable(explicit):
            raise TypeError(f"{hook} must be callable, got {type(explicit).__name__}")
        return Hook(explicit, hook)
    for name in methods:
        method = getattr(model, name, None)
        if callable(method):
            return Hook(method, hook, on_model=True, label=f"model.{name}")
    return None


@dataclass
class Reset:
    """A normalized reset: tensors of shape ``(*batch, ...)`` on the adapter's device."""

    state: Any
    observation: Any
    info: dict = field(default_factory=dict)
    #: the reset gave no separate state: the state is the observation as the hook returned it
    #: (before the cast to the space's dtype)
    state_is_observation: bool = False


@dataclass
class Transition:
    """A normalized transition. ``reward`` is float32 and the flags are bool, shape ``batch``.

    ``nonfinite`` is a bool mask over the batch (rows truncated by ``nan_policy="truncate"``),
    or None when every value was finite or the policy is ``"ignore"``.
    """

    state: Any
    observation: Any
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    info: dict = field(default_factory=dict)
    nonfinite: Optional[torch.Tensor] = None
    # ensembles only (see torchwm_rl.ensemble): float32 / bool, shape batch
    uncertainty: Optional[torch.Tensor] = None
    halted: Optional[torch.Tensor] = None
    # continue_fn only: the probability of continuing, float32, shape batch (graph kept)
    continue_prob: Optional[torch.Tensor] = None


class ModelAdapter:
    """Normalizes a user's world model and hooks into batched tensor records.

    Args:
        model: the trained world model (any object; an ``nn.Module`` is typical).
        observation_space, action_space: Gymnasium spaces of ONE env.
        reset_fn, transition_fn, reward_fn, terminal_fn, render_fn, action_transform_fn: the
            hooks, bound once here to TorchWM's argument lists (the table in
            :mod:`torchwm_rl.calling`): ``reset_fn(model, seed, options)``,
            ``transition_fn(model, state, action)``, ``reward_fn``/``terminal_fn(model,
            next_state, obs, action)`` (the state and observation the step reached; used when
            the transition gives no reward / terminated flag, else 0 / False),
            ``render_fn(model, state, obs)`` and ``action_transform_fn(model, action)``. Return
            forms: :mod:`torchwm_rl.records`.
        initial_state, initial_observation: used when reset gives no state / observation (the
            state defaults to the observation when neither is given).
        batch_size: leading batch dims of every value (``()`` or ``(N,)``).
        device: where tensors live; default: the model's parameters' device, else CPU.
        torch_actions: convert non-tensor actions to tensors on ``device`` before the hooks.
        nan_policy: ``"raise"`` (default), ``"truncate"`` or ``"ignore"`` for NaN/inf in
            observations and rewards. ``"truncate"`` ends the affected envs' episodes
            (``truncated=True``, ``Transition.nonfinite``); the final observation of such an
            episode is the last finite one (the observation the step started from), so learners
            bootstrap from a real state, never from NaN or made-up zeros; its reward reads 0.
        check_observations: check every observation against ``observation_space`` (Box bounds,
            Discrete/MultiDiscrete ranges, MultiBinary 0/1) and raise naming the hook, key and
            env; off by default because it costs a pass over every observation per step.
        check_actions: ``None`` (default, fastest), ``"clip"`` or ``"raise"``: check actions
            against ``action_space`` before the hooks.
        ensemble_size, propagation, uncertainty_penalty, uncertainty_threshold, halt_reward,
            uncertainty_fn: an ensemble model (the transition's outputs lead with an ensemble
            dim of ``ensemble_size``): how the next state is picked, the uncertainty measure,
            MOPO's reward penalty and MOReL's halting. See :mod:`torchwm_rl.ensemble`.
        continue_fn, continue_threshold: a model whose termination is a probability (Dreamer's
            continue head). ``continue_fn(model, next_state, obs, action)`` (bound as
            ``terminal_fn``; called at every step) returns the probability of CONTINUING, floats
            in [0, 1] of shape ``[*batch]`` or ``[*batch, 1]`` (a scalar when unbatched).
            ``continue_threshold=None`` (default): each row ends with probability ``1 - p``,
            drawn from the env's generator (the one ``seed`` seeds; ``self.generator``) with ONE
            ``torch.rand(batch_size)`` per step for the whole batch, every row drawn whatever
            it does, so a seed gives the same draws on every path: ``terminated = u >= p``. A
            float ``t`` in (0, 1]: ``terminated = p < t``, no draw. Either way the drawn
            termination is OR-ed with the terminal flag (the transition's or ``terminal_fn``'s):
            a hard rule plus a learned head; time limits (``truncated``) are unaffected. The
            probability is ``Transition.continue_prob`` (float32, with its autograd graph), the
            step output's ``continue_prob`` on every path. A bool or integer output, a wrong
            shape or a value outside [0, 1] is refused naming ``continue_fn``; NaN/inf goes
            through ``nan_policy`` (its row's draw is "continue"; truncated, it reads 0). The
            value checks ride on the step's one NaN check, so ``nan_policy="ignore"`` skips
            them, as it does for ``uncertainty_fn``.
    """

    @with_model_options
    def __init__(
        self,
        model: Any,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        batch_size: tuple = (),
        **options: Any,
    ):
        opts = model_options(type(self).__name__, options)
        nan_policy, check_actions = opts.nan_policy, opts.check_actions
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if check_actions not in ACTION_CHECKS:
            raise ValueError(f"check_actions must be one of {ACTION_CHECKS}, got {check_actions!r}")
        check_every = opts.check_every
        if check_every is not None and (not isinstance(check_every, int) or isinstance(check_every, bool)
                                        or check_every < 1):
            raise ValueError(f"check_every must be None (once per rollout) or a positive int (every K steps), "
                             f"got {check_every!r}")
        if opts.reset_schedule not in RESET_SCHEDULES:
            raise ValueError(f"reset_schedule must be one of {RESET_SCHEDULES}, got {opts.reset_schedule!r}")
        for name, space in (("observation_space", observation_space), ("action_space", action_space)):
            if not isinstance(space, spaces.Space):
                raise TypeError(f"{name} must be a gymnasium space, got {type(space).__name__}")
            check_supported(space, name)
        self.model = model
        warn_if_training(model)  # BatchNorm / Dropout left in training mode (torchwm_rl.train_mode)
        self.observation_space = observation_space
        self.action_space = action_space
        self.batch_size = tuple(int(b) for b in batch_size)
        self.device = torch.device(opts.device) if opts.device is not None else _model_device(model)
        self.torch_actions = opts.torch_actions
        self.nan_policy = nan_policy
        self.check_actions = check_actions
        self.check_observations = bool(opts.check_observations)
        self.check_every = check_every
        self.reset_schedule = opts.reset_schedule
        # set by a rollout for its duration: the checks of its steps are read once, there
        # (torchwm_rl.deferred); None: every check reads its result at its step
        self._deferred: Optional[DeferredChecks] = None
        self.initial_state = opts.initial_state
        self.initial_observation = opts.initial_observation
        self._dict_keys = (
            frozenset(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else None
        )
        self.ensemble: Optional[Ensemble] = None
        if opts.ensemble_size is not None:
            self.ensemble = Ensemble(
                opts.ensemble_size, opts.propagation, opts.uncertainty_penalty, opts.uncertainty_threshold,
                opts.halt_reward, opts.uncertainty_fn, self.batch_size, self.device,
            )
        else:
            defaults = ModelOptions()
            given = [name for name in ENSEMBLE_OPTIONS if getattr(opts, name) != getattr(defaults, name)]
            if given:
                raise ValueError(f"{', '.join(given)} need(s) an ensemble: pass ensemble_size=E as well")

        self.reset_hook = _resolve(opts.reset_fn, model, RESET_METHODS, "reset_fn")
        self.transition_hook = _resolve(opts.transition_fn, model, TRANSITION_METHODS, "transition_fn")
        if self.transition_hook is None and opts.transition_fn is None and _has_call(model):
            self.transition_hook = Hook(model, "transition_fn", on_model=True, label="model")
        if self.transition_hook is None:
            raise TypeError(
                f"{type(model).__name__} has no transition: pass transition_fn=(model, state, action) "
                f"or give the model one of the methods {TRANSITION_METHODS} or __call__."
            )
        self.reward_hook = _resolve(opts.reward_fn, model, (), "reward_fn")
        self.terminal_hook = _resolve(opts.terminal_fn, model, (), "terminal_fn")
        self.render_hook = _resolve(opts.render_fn, model, (), "render_fn")
        self.action_hook = _resolve(opts.action_transform_fn, model, (), "action_transform_fn")
        self.continue_hook = _resolve(opts.continue_fn, model, (), "continue_fn")
        self.continue_threshold = _continue_threshold(opts.continue_threshold, self.continue_hook)
        if not isinstance(opts.compile, bool):
            raise TypeError(f"compile: expected True or False, got {opts.compile!r}")
        if opts.compile:  # the step's model hooks through torch.compile (torchwm_rl.compiled)
            compile_hooks(self)
        # the env's random stream for hooks that ask for ``generator`` (set by EpisodeLogic)
        self.generator: Optional[torch.Generator] = None
        # shared with forks (copy.copy), as the model is: what was learned of the hooks
        self._inputs = InputGuard()  # does the transition write into the state it is given?
        self._render_inputs = InputGuard("the state or observation", "the env's current state or observation: "
                                         "what it recorded and hands out has changed")  # ... render_fn?
        # ... reward_fn / terminal_fn into the state and observation the step reached?
        self._reached_inputs = InputGuard("the state or observation the step reached",
                                          "what the env records for this step: the record would differ from "
                                          "the transition's output")
        self._hook_use: dict = {}  # reward_fn / terminal_fn: [called at a step, skipped at a step]
        # the dtypes of a state that is the (uncast) observation, as the first reset gave it (the
        # env's probe, before any fork): every later such state is given them, so the state's
        # dtype never changes between a reset and a step (the TorchRL state spec, and the buffers
        # of SerialEnv/ParallelEnv/collectors, are built from the first reset)
        self._observation_state_dtypes: Optional[dict] = None

    @property
    def hooks(self) -> dict:
        """Every bound hook by role (``"reset_fn"``, ``"transition_fn"``, ...)."""
        found = {
            "reset_fn": self.reset_hook, "transition_fn": self.transition_hook,
            "reward_fn": self.reward_hook, "terminal_fn": self.terminal_hook,
            "render_fn": self.render_hook, "action_transform_fn": self.action_hook,
            "continue_fn": self.continue_hook,
        }
        return {role: hook for role, hook in found.items() if hook is not None}

    def describe_bindings(self) -> list:
        """One line per hook: which argument each parameter receives, and by which rule; for
        ``reward_fn`` / ``terminal_fn``, also whether it is in effect (it is called only for
        steps whose transition gives no reward / terminated flag, as in TorchWM)."""
        lines = []
        for role, hook in self.hooks.items():
            line = hook.binding.describe()
            if role in ("reward_fn", "terminal_fn"):
                what = "reward" if role == "reward_fn" else "terminated flag"
                called, skipped = self._hook_use.get(role, (False, False))
                if skipped and not called:
                    line += f" (NOT CALLED: {self.transition_hook.name} returns the {what}, which is used)"
                elif skipped:
                    line += f" (called only at steps where {self.transition_hook.name} returns no {what})"
                elif called:
                    line += f" (in use: {self.transition_hook.name} returns no {what})"
                else:
                    line += f" (used where {self.transition_hook.name} returns no {what}; not stepped yet)"
            elif role == "continue_fn":
                line += (" (terminated drawn from it with the env's generator)" if self.continue_threshold is None
                         else f" (terminated where it is < {self.continue_threshold})")
            lines.append(line)
        return lines

    def wants_generator(self) -> bool:
        """Whether a step or reset draws from the env's generator (a hook that asks for it, or
        an ensemble that draws members)."""
        if self.ensemble is not None and self.ensemble.propagation != "mean":
            return True
        if self.continue_hook is not None and self.continue_threshold is None:
            return True  # terminated is drawn from the continue probability
        return any("generator" in hook.wants for hook in self.hooks.values())

    def all_hooks_take_generator(self) -> bool:
        """Whether every hook a reset or step calls (reset, transition, reward, terminal,
        action transform) asks for ``generator``: the env then leaves torch's process-global
        RNG alone (see :class:`~torchwm_rl.episode.EpisodeLogic`)."""
        called = [hook for role, hook in self.hooks.items() if role != "render_fn"]  # continue_fn included
        return bool(called) and all("generator" in hook.wants for hook in called)

    # ------------------------------------------------------------------ reset
    @property
    def can_reset(self) -> bool:
        """Whether a reset hook or an initial observation gives reset an observation."""
        return self.reset_hook is not None or self.initial_observation is not None

    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None) -> Reset:
        """Call the reset hook (or use the initial values) and normalize the result."""
        if self.reset_hook is not None:
            options = dict(options or {})
            values = {
                "model": self.model, "seed": seed, "options": options, "batch_size": self.batch_size,
                "reset_mask": options.get("reset_mask"), "generator": self.generator,
            }
            raw = parse_reset(self.reset_hook(values), self._dict_keys, self.reset_hook.name)
        else:
            raw = parse_reset(MISSING)
        observation = raw.observation
        if observation is MISSING or observation is None:
            observation = self._broadcast_initial(self.initial_observation)
        if observation is None:
            raise ValueError(
                "reset produced no observation: return one from reset_fn (obs, (obs, info), "
                "(state, obs[, info]) or {'observation': ...}) or pass initial_observation."
            )
        state = raw.state
        if state is MISSING:
            state = self._broadcast_initial(self.initial_state)
        mask = (options or {}).get("reset_mask")
        # a partial reset: only the rows being reset are checked (the others may hold anything,
        # torch.empty included: the caller keeps its own rows there)
        # (with every row reset, rows=mask checks what rows=None does: without the host read,
        # when the checks are deferred or the reset runs at every step)
        if mask is None or (self._deferred is None and self.reset_schedule != "every_step" and bool(mask.all())):
            rows = None
        else:
            rows = mask
        raw_observation = observation
        try:
            observation = self._read(
                to_observation, raw, self.reset_hook, observation, self.observation_space, self.batch_size,
                self.device, "observation", rows,
            )
        except ValueError as err:
            self._refuse_unbatched_reset(err)
            if rows is None or bool(rows.all()):  # (read only here, on the error path) not a partial reset
                raise
            raise ValueError(
                f"{err}; a partial reset still computes the full batch: return all {self.batch_size[0]} rows "
                "(reset_mask says which of them are used)"
            ) from None
        state_is_observation = state is None
        if state_is_observation:
            state = self._pin_dtypes(state_of_observation(raw_observation, observation, self.device), self.reset_hook)
        else:
            self._check_state(state, self.reset_hook)
        if self.check_observations:
            self._read(check_observation, raw, self.reset_hook, observation, self.observation_space, self.batch_size,
                       "observation", rows)
        self._check_finite_reset(observation, None if state_is_observation else state, rows)
        state, observation = self._unalias((state, observation))
        return Reset(state=state, observation=observation, info=raw.info, state_is_observation=state_is_observation)

    def _refuse_unbatched_reset(self, err: ValueError) -> None:
        """A batched env whose reset hook is not given ``batch_size`` and returned ONE env's
        value (the shape without the batch dims): re-raise ``err`` saying that the hook should
        take ``batch_size``. Anything else: return (the caller re-raises ``err`` as it is)."""
        hook, batch = self.reset_hook, self.batch_size
        expected, got = getattr(err, "expected", None), getattr(err, "got", None)
        if (not batch or hook is None or "batch_size" in hook.wants or not isinstance(expected, tuple)
                or not isinstance(got, tuple) or got != expected[len(batch):]):
            return
        wants = ", ".join(sorted(hook.wants)) or "nothing"
        rows = f"e.g. torch.zeros(*batch_size, {', '.join(map(str, got))})" if got else "shape batch_size"
        fix = (f"; {hook.name} is not given batch_size (it receives {wants}) and returned one env's value, but "
               f"this env is batched (batch_size={batch}): add a batch_size parameter to {hook.name} and return "
               f"one row per env ({rows})")
        if isinstance(err, TorchWMError):
            raise type(err)(f"{err}{fix}", hook=err.hook, key=err.key, expected=expected, got=got) from None
        raise type(err)(f"{err}{fix}") from None

    def _pin_dtypes(self, state: Any, hook: Any) -> Any:
        """A state that is the model's uncast observation keeps the dtypes of the first one the
        env saw (see ``_observation_state_dtypes``): a model whose reset gives float32 and whose
        steps give float64 is stepped in float32 on every path, as the state spec says, instead
        of float64 on some paths and float32 in TorchRL's preallocated buffers on others. One
        dtype comparison per step."""
        pinned = self._observation_state_dtypes
        if pinned is not None and isinstance(state, torch.Tensor) and pinned.get("") == state.dtype:
            return state  # the common case
        dtypes = _leaf_dtypes(state)
        if pinned is None:
            self._observation_state_dtypes = dtypes
            return state
        if not pinned or dtypes == pinned:  # no tensors to pin (a numpy or opaque state), or as pinned
            return state
        name = getattr(hook, "name", "the model")
        return _with_dtypes(state, pinned, f"{name}: state (the observation as returned)")

    def _broadcast_initial(self, value: Any) -> Any:
        """Expand an unbatched tensor initial value to the batch (leaves others alone)."""
        if value is None or value is MISSING or not self.batch_size:
            return None if value is MISSING else value
        if isinstance(value, (torch.Tensor, np.ndarray)):
            tensor = torch.as_tensor(value, device=self.device)
            if tuple(tensor.shape[: len(self.batch_size)]) != self.batch_size:
                return tensor.expand(*self.batch_size, *tensor.shape).clone()
            return tensor
        if isinstance(value, dict):
            return {k: self._broadcast_initial(v) for k, v in value.items()}
        return value

    def _check_finite_reset(self, observation: Any, state: Any = None, rows: Optional[torch.Tensor] = None) -> None:
        """A reset's observation (and the floating leaves of a separate state) must be finite,
        in the rows being reset (``rows``; None: all)."""
        if self.nan_policy == "ignore":
            return
        checked = flatten_observation(observation)
        checked.update(_state_leaves(state))
        deferred = self._deferred
        if deferred is not None:  # read once per rollout (a failure replays its actions checking here)
            values = checked.values()

            def flag() -> torch.Tensor:
                return (maybe_nonfinite(*values) if rows is None or not self.batch_size
                        else maybe_nonfinite_rows(values, rows, self.batch_size))

            if deferred.sweep is not None and self.nan_policy == "raise":
                # the next recorded step holds these starts as its root entries: the read sweeps
                # them there, and computes this flag only if they never got recorded
                deferred.unrecorded.append(flag)
            else:
                deferred.add(flag())
            return
        bad, keys = nonfinite_rows(checked, self.batch_size)
        if bad is not None and rows is not None:
            bad = bad & rows
            if not bool(bad.any()):
                return
            keys = [key for key, value in checked.items() if _bad_rows(value, self.batch_size, bad)]
        if bad is not None:
            source = self.reset_hook.name if self.reset_hook is not None else "initial_observation"
            raise ValueError(f"{source} returned NaN/inf in {keys}{env_rows(bad)}; a reset must be finite.")

    def _check_state(self, state: Any, hook: Any) -> None:
        """Every tensor of a batched state leads with the batch dims (one tuple comparison per
        leaf): a state reduced or broadcast over the batch (shape ``(1, ...)`` or without the
        batch dim) would give every env one env's state at the next step."""
        if not self.batch_size:
            return
        n = len(self.batch_size)
        if isinstance(state, torch.Tensor) and state.shape[:n] == self.batch_size:
            return  # the per-step common case
        for key, leaf in _state_leaves(state, floating_only=False, prefix="model_state").items():
            if tuple(leaf.shape[:n]) != self.batch_size:
                name = hook.name if hook is not None else "initial_state"
                raise ValueMismatch(
                    f"{name} returned a state without the batch dims: {key}: a batched env needs a model state "
                    f"with leading dims {self.batch_size}, got shape {tuple(leaf.shape)} (one row per env; a state "
                    "reduced or broadcast over the batch would give every env one env's state)",
                    key=key, expected=self.batch_size, got=tuple(leaf.shape),
                )

    # ----------------------------------------------------------------- action
    def prepare_action(self, action: Any) -> Any:
        """Library action -> model action, through one converter on every path
        (:mod:`torchwm_rl.validation`): the optional ``check_actions`` check (on the action as
        given, before any cast); then, by default (``torch_actions=True``, no
        ``action_transform_fn``), :func:`~torchwm_rl.validation.to_action`: a tensor of the
        space's dtype and shape ``(*batch, *space.shape)``, whose cast keeps every value, in
        memory the env owns. Otherwise :func:`~torchwm_rl.validation.action_as_given`: the
        action as given, its shape checked (arrays and tensors as the env's own copy, of the
        space's shape), goes to ``action_transform_fn`` (TorchWM: its output reaches the model
        as is) or, with ``torch_actions=False``, to the model.

        The shape check is on by default: an action that does not give each env one action of
        the space's shape (one env's action for a batch, an extra dim) would be broadcast by
        the model, giving every env the same action or mixing envs."""
        if self.check_actions is not None:
            action = check_action(action, self.action_space, self.batch_size, self.device, self.check_actions,
                                  deferred=self._deferred)
        if self.action_hook is None and self.torch_actions:
            return to_action(action, self.action_space, self.batch_size, self.device)
        action = action_as_given(action, self.action_space, self.batch_size)
        if self.action_hook is not None:
            return self.action_hook({"model": self.model, "action": action})
        return action

    # ------------------------------------------------------------- transition
    def step(self, state: Any, action: Any, discard: Optional[torch.Tensor] = None,
             previous_observation: Any = None) -> Transition:
        """One batched model step from ``state`` with a library ``action``.

        ``discard`` (bool, shape batch) marks rows whose result the caller throws away (envs
        that restart instead, under next-step autoreset): the NaN policy ignores them.
        ``previous_observation``: the observation ``state`` stands at (or a function giving it,
        called only when needed): what ``nan_policy="truncate"`` hands out as the final
        observation of a truncated row."""
        model_action = self.prepare_action(action)
        hook = self.transition_hook
        given, token = self._inputs.give(state)
        values = {"model": self.model, "state": given, "action": model_action, "generator": self.generator}
        raw = parse_transition(hook(values), self._dict_keys, hook.name)
        uncertainty = None
        if self.ensemble is not None:  # [E, *batch, ...] -> the propagated transition
            raw, uncertainty = self.ensemble.propagate(raw, hook.name, self.observation_space, self.generator)
        if raw.observation is MISSING or raw.observation is None:
            raise ValueError(f"{hook.name} returned no observation (read as {raw.form})")
        observation = self._read(
            to_observation, raw, hook, raw.observation, self.observation_space, self.batch_size, self.device
        )
        if self.check_observations:
            self._read(check_observation, raw, hook, observation, self.observation_space, self.batch_size)
        if raw.state is MISSING:  # the state is the observation as the model returned it, not its cast
            next_state = self._pin_dtypes(state_of_observation(raw.observation, observation, self.device), hook)
        else:
            next_state = raw.state
            self._check_state(next_state, hook)
        # reward and terminal hooks see the state and observation the step reached (TorchWM),
        # guarded as the transition's input is when they are called (a hook writing into them
        # would change what the env records for this step)
        reached, reached_token = {"next_state": next_state, "obs": observation}, None
        if (self.reward_hook is not None and (raw.reward is MISSING or raw.reward is None)) or (
                self.terminal_hook is not None and (raw.terminated is MISSING or raw.terminated is None)) or (
                self.continue_hook is not None):
            reached, reached_token = self._reached_inputs.give(reached)
        values = {
            "model": self.model, "next_state": reached["next_state"], "obs": reached["obs"], "action": model_action,
            "prev_state": given, "generator": self.generator,
        }

        # a reward of None is no reward (TorchWM): reward_fn's, else 0
        reward, reward_hook = (MISSING if raw.reward is None else raw.reward), hook
        if self.reward_hook is not None:
            self._hook_in_use("reward_fn", reward is MISSING, "a reward")
        if self.reward_hook is not None and reward is MISSING:
            reward, reward_hook = self.reward_hook(values), self.reward_hook
            raw_reward = RawRecord(form="the reward")
        else:
            raw_reward = raw
        own = []  # tensors made here (not the model's memory): _unalias skips them
        if reward is MISSING:
            reward = torch.zeros(self.batch_size, dtype=torch.float32, device=self.device)
            own.append(reward)
        else:
            reward = self._read(to_batched_scalar, raw_reward, reward_hook, reward, self.batch_size, self.device,
                                torch.float32, "reward")
        # a terminated flag of None is no flag, as a reward of None is no reward: terminal_fn's, else False
        terminated, terminal_hook = (MISSING if raw.terminated is None else raw.terminated), hook
        raw_terminal = raw
        if self.terminal_hook is not None:
            self._hook_in_use("terminal_fn", terminated is MISSING, "a terminated flag")
        if self.terminal_hook is not None and terminated is MISSING:
            terminated, terminal_hook = self.terminal_hook(values), self.terminal_hook
            raw_terminal = RawRecord(form="the terminated flag")
        terminated = self._flag(terminated, "terminated", raw_terminal, terminal_hook, own)
        truncated = self._flag(raw.truncated, "truncated", raw, hook, own)
        continue_prob = continue_raw = None
        if self.continue_hook is not None:  # a continue head: terminal OR drawn (see the class docs)
            continue_prob, continue_raw = self._read(
                to_probability, _CONTINUE_FORM, self.continue_hook, self.continue_hook(values), self.batch_size,
                self.device, "continue_prob",
            )
            terminated = terminated | self._continue_ends(continue_prob)
        # the hooks have run: did one of them write into the state it was given?
        self._inputs.check(token, hook.name)
        if reached_token is not None:
            names = [h.name for h, used in ((self.reward_hook, reward_hook is self.reward_hook),
                                            (self.terminal_hook, terminal_hook is self.terminal_hook),
                                            (self.continue_hook, self.continue_hook is not None)) if used]
            self._reached_inputs.check(reached_token, " or ".join(names))
        halted = None
        if self.ensemble is not None:  # MOPO's penalty, MOReL's halting
            reward, terminated, halted = self.ensemble.apply(reward, terminated, uncertainty)

        record = Transition(next_state, observation, reward, terminated, truncated, raw.info,
                            uncertainty=uncertainty, halted=halted, continue_prob=continue_prob)
        self._apply_nan_policy(record, discard, reward_hook.name, model_action, previous_observation, state,
                               continue_raw)
        fields = _STEP_FIELDS if continue_prob is None else _STEP_FIELDS_WITH_CONTINUE
        for name, value in zip(fields, self._unalias(tuple(getattr(record, f) for f in fields), own)):
            setattr(record, name, value)
        return record

    def _continue_ends(self, prob: torch.Tensor) -> torch.Tensor:
        """The rows a continue probability ends (bool, shape batch): ``prob < threshold``, or
        one uniform draw per row, ``u >= prob``, from the env's generator (one ``torch.rand``
        call for the batch per step: the stream advances the same way on every path). A NaN
        probability ends nothing (the NaN policy handles its row). No host sync."""
        prob = prob.detach()
        if self.continue_threshold is not None:
            return prob < self.continue_threshold
        generator = self.generator
        if generator is None:  # an adapter used on its own, without an env: torch's global RNG
            return torch.rand(self.batch_size, device=self.device) >= prob
        draw = torch.rand(self.batch_size, generator=generator, device=generator.device)
        return draw.to(prob.device) >= prob

    def _hook_in_use(self, role: str, called: bool, what: str) -> None:
        """Remember whether the explicit ``role`` hook is called (the transition gives no such
        value) or not (the transition's own value wins, as in TorchWM); warn once, the first
        time a step does not call it, so a hook passed on purpose is never silently dead."""
        seen = self._hook_use.get(role)
        if seen is None:
            seen = self._hook_use[role] = [False, False]  # [called at some step, skipped at some step]
        if seen[not called]:
            return
        seen[not called] = True
        if not called:
            warnings.warn(
                f"{role} is not called: {self.transition_hook.name} returns {what} itself, and the "
                f"transition's value is used (as in TorchWM: {role} only fills in a value the transition "
                f"does not give). Drop {role}, or stop returning {what} from the transition (or return None) "
                f"to use {role}.",
                UserWarning, stacklevel=4,
            )

    def _unalias(self, values: tuple, own: Sequence = ()) -> tuple:
        """``values`` with every tensor that may be memory the model writes into again replaced
        by a copy, so that every recorded step keeps that step's values.

        A model that writes into preallocated buffers (``out=`` kernels, CUDA graphs) returns
        memory it returned before: one buffer every step, two or three in turn (double and
        triple buffering), or views of one ring buffer. Kept by reference, every recorded step
        would show the last values written there and flags would change after the fact. A
        tensor is copied when

        * PyTorch's version counter says it was written in place (``out=``, ``copy_``, ``x[i] =
          ...``): a buffer, caught the first time it is returned (a fresh result of ordinary
          ops has version 0 and is not copied); inference tensors have no version counter and
          are always copied; or
        * a tensor an earlier call (of any env in the process) handed out at the same address
          is still alive (a look-up in a table of weak references to the tensors handed out, so
          memory freed and reused by the allocator is not mistaken for a reuse): the same tensor
          returned again, a constant buffer, or memory written behind PyTorch's back (a CUDA
          graph replay), which is caught from its second return on: return
          ``static_output.clone()`` from a CUDA-graph model.

        A model that returns fresh tensors pays no copy. Outputs of one call may share memory
        with each other (an observation that is a view of the state): only earlier calls count.
        A value given twice (the state that is also the observation) that passes unchanged is
        checked once; one that is copied gets a copy per occurrence, so that a model writing
        into the state it is given next step never changes the observation recorded now.
        ``own``: tensors the adapter itself just made (the zeros of a missing reward or flag),
        which are no model memory and are passed through unchecked."""
        fresh: list = []  # this call's outputs, remembered once all are checked
        passed = {id(o) for o in own}  # by identity (every value stays alive during the call)
        out = []
        for value in values:
            if id(value) in passed:
                out.append(value)
                continue
            result = _fix_aliases(value, fresh)
            if result is value:
                passed.add(id(value))
            out.append(result)
        for tensor in fresh:
            _HANDED_OUT.add(tensor)
        return tuple(out)

    @staticmethod
    def _read(convert: Callable, raw: RawRecord, hook: Any, *args) -> Any:
        """``convert(*args)``; a conversion error names the hook and how its value was read."""
        try:
            return convert(*args)
        except TorchWMError as err:
            name = hook.name if hook is not None else "initial_observation"
            raise err.naming(name, f"{name} (read as {raw.form}): ") from None
        except (ValueError, TypeError) as err:
            name = hook.name if hook is not None else "initial_observation"
            raise type(err)(f"{name} (read as {raw.form}): {err}") from None

    def _flag(self, value: Any, key: str, raw: RawRecord, hook: Any, own: Optional[list] = None) -> torch.Tensor:
        """A terminated/truncated value as a bool ``[*batch]`` tensor; a missing one is all False
        (a tensor made here: it goes to ``own``, see :meth:`_unalias`)."""
        if value is MISSING or value is None:
            zeros = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
            if own is not None:
                own.append(zeros)
            return zeros
        return self._read(to_batched_scalar, raw, hook, value, self.batch_size, self.device, torch.bool, key)

    def _apply_nan_policy(
        self, record: Transition, discard: Optional[torch.Tensor] = None, reward_source: Optional[str] = None,
        action: Any = None, previous_observation: Any = None, previous_state: Any = None,
        continue_raw: Optional[torch.Tensor] = None,
    ) -> None:
        """NaN/inf in the observation, the reward or a floating leaf of the state (a latent
        behind a uint8 image, whose cast turns NaN into 0) raise or truncate the rows holding
        them. ``previous_state``: the state the step started from, the final state of a
        truncated row (as the observation the step started from is its final observation).
        ``continue_raw``: ``continue_fn``'s output as returned (``[*batch]``): NaN/inf there is
        the policy's, a value outside [0, 1] an error whatever the policy; both ride on the same
        reduction (:func:`~torchwm_rl.validation.probability_check`)."""
        if self.nan_policy == "ignore":
            return
        state = record.state
        extra = () if continue_raw is None else (probability_check(continue_raw),)
        deferred = self._deferred
        if deferred is not None and discard is None and (self.nan_policy == "raise" or not callable(previous_observation)):
            self._defer_nan_policy(record, deferred, extra, previous_observation, previous_state, continue_raw)
            return
        if record.uncertainty is None and isinstance(record.observation, torch.Tensor):
            if state is record.observation:
                if all_finite(record.observation, record.reward, *extra):
                    return  # the common case, with one host sync; anything else gets the exact check below
            elif isinstance(state, torch.Tensor):
                if all_finite(record.observation, record.reward, state, *extra):
                    return  # one host sync for the three (one reduction on a device)
            elif all_finite(record.observation, record.reward, *_state_leaves(state).values(), *extra):
                return
        checked = self._nan_checked(record)
        if continue_raw is not None:
            checked[CONTINUE_KEY] = continue_raw
            checked[CONTINUE_OUTSIDE] = outside_unit_interval(continue_raw)
        bad, keys = nonfinite_rows(checked, self.batch_size)
        if NEGATIVE_UNCERTAINTY in keys:  # uncertainty_fn broke its contract: an error whatever the policy
            self.ensemble.refuse_negative(record.uncertainty, discard)
            del checked[NEGATIVE_UNCERTAINTY]  # only in rows thrown away: check the rest as usual
            bad, keys = nonfinite_rows(checked, self.batch_size)
        if CONTINUE_OUTSIDE in keys:  # not a probability: an error whatever the policy
            self._refuse_outside_unit_interval(continue_raw, discard)
            del checked[CONTINUE_OUTSIDE]  # only in rows thrown away: check the rest as usual
            bad, keys = nonfinite_rows(checked, self.batch_size)
        if bad is not None and discard is not None:
            bad = bad & ~discard
            if not bool(bad.any()):
                return
        if bad is None:
            return
        if self.nan_policy == "raise":
            by_hook: dict = {}  # the reward may come from reward_fn: name the hook of each key
            for key in keys:
                hook = reward_source if key == "reward" and reward_source else self.transition_hook.name
                if key == CONTINUE_KEY:
                    hook = self.continue_hook.name
                by_hook.setdefault(hook, []).append(key)
            what = " and ".join(f"{hook} returned NaN/inf in {hook_keys}" for hook, hook_keys in by_hook.items())
            cause = _nonfinite_action(action, self.batch_size)
            if cause is not None:  # the model only passed on what the policy gave it
                what = (f"the action was NaN/inf{env_rows(cause)} (the policy's output; check_actions='raise' "
                        f"refuses it before the model), and then {what}")
            raise ValueError(
                f"{what}{env_rows(bad)}; pass nan_policy='truncate' to end those episodes instead, or 'ignore'."
            )
        self._truncate_rows(record, bad, previous_observation, previous_state)

    def _nan_checked(self, record: Transition) -> dict:
        """``{name: tensor}`` of what nan_policy checks in a step's record: the observation (key by
        key), the reward, the state's floating leaves (when the state is not the observation) and
        an ensemble's member values (maybe not the one picked; with ``uncertainty_fn``, its sign
        as :data:`~torchwm_rl.ensemble.NEGATIVE_UNCERTAINTY`)."""
        checked = flatten_observation(record.observation)
        checked["reward"] = record.reward
        if record.state is not record.observation:
            checked.update(_state_leaves(record.state))
        if record.uncertainty is not None:  # non-finite member predictions (maybe not the one picked)
            checked.update(self.ensemble.checked_values(record.uncertainty))
        return checked

    def _truncate_rows(self, record: Transition, bad: torch.Tensor, previous_observation: Any,
                       previous_state: Any) -> None:
        """``nan_policy="truncate"``: the rows ``bad`` (bool, shape batch) of ``record`` end as
        truncated, holding the last finite observation and state, a 0 reward. Masked writes: rows
        outside ``bad`` keep their values exactly (so it may run with ``bad`` all False)."""
        state = record.state
        record.truncated = record.truncated | bad
        record.nonfinite = bad
        if previous_state is not None:
            # the final state of a truncated row is the one its step started from, as its final
            # observation is: a learner bootstrapping from the state sees a real one
            record.state = _where_state(bad, state, previous_state)
        # What learners see is finite and honest: SB3 and TorchRL's GAE bootstrap from the final
        # observation of a truncated episode, so a truncated row's final observation is the
        # last finite one, the observation the step started from (its value estimate is the
        # best one left; zeros would be a made-up state and NaN would spread into the losses).
        # Only when that observation is unknown (a TorchRL tensordict without it and a model
        # whose observation is not its state) do the non-finite entries read 0. A non-finite
        # reward reads 0; the "nonfinite" flag says why.
        previous = previous_observation() if callable(previous_observation) else previous_observation
        if previous is not None:
            previous = to_observation(previous, self.observation_space, self.batch_size, self.device,
                                      "the observation before the truncated step")
            record.observation = where_rows(bad, record.observation, previous)
        record.observation = zero_nonfinite(record.observation)
        record.reward = zero_nonfinite(record.reward)
        if record.uncertainty is not None:
            record.uncertainty = zero_nonfinite(record.uncertainty)
        if record.continue_prob is not None:  # the truncated row's episode ends: nothing continues
            record.continue_prob = zero_nonfinite(record.continue_prob)

    def _defer_nan_policy(self, record: Transition, deferred: DeferredChecks, extra: tuple, previous_observation: Any,
                          previous_state: Any, continue_raw: Optional[torch.Tensor]) -> None:
        """:meth:`_apply_nan_policy` during a rollout, with no host read (:mod:`torchwm_rl.deferred`).
        ``"raise"``: the NaN/inf of every checked value (the ensemble's uncertainty and, with
        ``uncertainty_fn``, its sign; ``continue_fn``'s range: ``extra``) goes into ONE flag,
        read once per rollout; a failure steps the recorded actions again checking here.
        ``"truncate"``: the rows holding NaN/inf are truncated by masked writes (the same
        values as the per-step branch, which writes only when a row is bad), and only what is
        an error whatever the policy (a negative uncertainty, a continue probability outside
        [0, 1]) goes into the flag."""
        if self.nan_policy == "raise" and deferred.sweep is not None and record.uncertainty is None:
            # what is checked here (observation, reward, state) is what the trajectory records:
            # the read sweeps it there (no op per step); until recorded, the record waits
            deferred.unrecorded.append(lambda: any_nonfinite(self._nan_checked(record).values()))
            if extra:
                deferred.add(maybe_nonfinite(*extra))
            return
        leaves = self._nan_checked(record)
        errors = []
        negative = leaves.pop(NEGATIVE_UNCERTAINTY, None)
        if negative is not None:
            errors.append(negative)  # NaN where negative
        if self.nan_policy == "raise":
            deferred.add(maybe_nonfinite(*leaves.values(), *errors, *extra))
            return
        if continue_raw is not None:
            leaves[CONTINUE_KEY] = continue_raw
            errors.append(outside_unit_interval(continue_raw))  # NaN where finite and outside [0, 1]
        if errors:
            deferred.add(maybe_nonfinite(*errors))
        self._truncate_rows(record, nonfinite_row_mask(leaves.values(), self.batch_size, self.device),
                            previous_observation, previous_state)

    def _refuse_outside_unit_interval(self, raw: torch.Tensor, discard: Optional[torch.Tensor] = None) -> None:
        """Raise if ``continue_fn`` gave a finite value outside [0, 1] in a row the step keeps."""
        outside = finite_outside_unit_interval(raw)
        if discard is not None:
            outside = outside & ~discard
        if not bool(outside.any()):
            return
        got = raw.detach()[outside].flatten()[:5].tolist()
        raise ValueMismatch(
            f"{self.continue_hook.name} returned values outside [0, 1]{env_rows(outside)}: got {got}. It returns the "
            "probability of CONTINUING the episode, in [0, 1]: apply torch.sigmoid to a continue head's logits, "
            "and do not scale it by a discount (gamma)",
            hook=self.continue_hook.name, key="continue_prob", expected="floats in [0, 1]", got=got,
        )

    # ----------------------------------------------------------------- render
    def render(self, state: Any, observation: Any) -> Any:
        """``render_fn(model, state, obs)`` if given, else the observation."""
        if self.render_hook is not None:
            # the state and observation are the env's current ones (recorded, handed out): a
            # render hook writing into them gets copies, as the transition does (InputGuard)
            given, token = self._render_inputs.give({"state": state, "obs": observation})
            frame = self.render_hook({"model": self.model, **given})
            self._render_inputs.check(token, self.render_hook.name)
            return frame
        return observation


class WeakAddressTable:
    """Tensors by memory address, each with a payload, held by weak reference: an entry counts
    only while its tensor (or a view of it) is alive, so memory the allocator freed and reused
    is never mistaken for it. Dead entries are dropped in bulk whenever the table has doubled
    (amortized O(1) per ``add``). Safe to share between threads: the purge iterates a snapshot
    of the items and pops (iterating the live dict would raise "changed size during
    iteration" when another thread's env adds an entry meanwhile)."""

    def __init__(self, purge_min: int = 4096):
        self._entries: dict = {}
        self._purge_min = self._purge_at = purge_min

    def add(self, tensor: torch.Tensor, payload: Any = None) -> None:
        entries = self._entries
        entries[tensor.data_ptr()] = (weakref.ref(tensor), payload)
        if len(entries) > self._purge_at:
            for address, (ref, _) in list(entries.items()):
                if ref() is None:
                    entries.pop(address, None)
            self._purge_at = max(self._purge_min, 2 * len(entries))

    def get(self, tensor: torch.Tensor) -> Optional[tuple]:
        """``(the live tensor added at tensor's address, its payload)``, or None."""
        entry = self._entries.get(tensor.data_ptr())
        if entry is None:
            return None
        alive = entry[0]()
        return None if alive is None else (alive, entry[1])


def version_counter(tensor: torch.Tensor) -> int:
    """The tensor's version counter (bumped by every in-place write: ``out=``, ``copy_``,
    ``x[i] = ...``); -1 for an inference tensor, which has none (its writes cannot be seen)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


class InputGuard:
    """Keeps hooks from rewriting what the env recorded: the state a hook is given is the
    state the env handed out (the rollout's ``model_state`` at that step, the exports' current
    state), so a hook writing into it (``state.add_(1); return state``) would change the
    recorded trajectory after the fact.

    As the buffer-reuse guard, it copies only where a write is seen, with PyTorch's version
    counters (bumped by every in-place write, shared by views): the first call gets a copy and
    tells whether the hook writes into its input; from then on a hook that does gets a copy
    every call, and one that does not gets the env's tensors, whose version counters are
    compared after the call (a tuple comparison). A hook seen to write into them later (it did
    not at its first call) has changed recorded values: that raises, naming the hook, and the
    hook gets copies from then on. A state of inference tensors (no version counter, so no
    telling) is always copied. One guard is shared by an adapter and its forks (one model)."""

    __slots__ = ("copies", "what", "recorded")

    def __init__(self, what: str = "the model state",
                 recorded: str = "the state the env recorded for the previous step: that step's recorded state has "
                                 "changed"):
        self.copies: Optional[bool] = None  # None: not yet known (the first call gets a copy)
        self.what, self.recorded = what, recorded  # for the error messages

    def give(self, value: Any) -> tuple:
        """``(what to hand the hook, a token for check)``."""
        if self.copies is False and type(value) is torch.Tensor:  # the per-step common case
            try:
                return value, (value, value._version)
            except RuntimeError:  # an inference tensor (no version counter): copied below
                pass
        if isinstance(value, torch.Tensor):
            leaves = (value,)
        else:
            leaves = tuple(_state_leaves(value, floating_only=False).values())
            if not leaves:
                return value, None
        versions = tuple(map(version_counter, leaves))
        if self.copies is False and -1 not in versions:
            return value, (leaves, versions, None)
        given = _copy_state(value)
        given_leaves = (given,) if isinstance(given, torch.Tensor) else tuple(
            _state_leaves(given, floating_only=False).values())
        return given, (leaves, versions, (given_leaves, tuple(map(version_counter, given_leaves))))

    def check(self, token: Optional[tuple], hook: str) -> None:
        """After the hooks ran: learn (first call) or refuse (a write into the env's tensors)."""
        if token is None:
            return
        if len(token) == 2:  # give's common case: one tensor, not copied
            if token[0]._version == token[1]:
                return
            token = ((token[0],), (token[1],), None)
        leaves, versions, copies = token
        if any(version_counter(t) != v for t, v in zip(leaves, versions)):
            self.copies = True
            if copies is None:
                raise RuntimeError(
                    f"{hook} wrote in place into {self.what} it was given (state.add_(...), state[i] = ..., "
                    f"out=state; or into a tensor it returned before and kept), which is {self.recorded}. It did "
                    "not do so at its first call, so the env had stopped copying what it hands it; it copies it "
                    "from now on: run the rollout (or episode) again. To avoid the copy, return new tensors "
                    "(state + 1 rather than state.add_(1))."
                )
            raise RuntimeError(
                f"{hook} wrote in place into a state the env recorded earlier (one it returned before and kept a "
                "reference to, or a view of one): recorded steps have changed. Return new tensors, or return a "
                "copy of what the model keeps (state.clone())."
            )
        if copies is not None and self.copies is None:
            given_leaves, given_versions = copies
            self.copies = any(version_counter(t) != v for t, v in zip(given_leaves, given_versions))


def _copy_state(value: Any) -> Any:
    """A tensor, TensorDict or (nested) dict state with its tensors copied (anything else as it is);
    also what a list-mode rollout trajectory records of a step (:mod:`torchwm_rl.trajectory`)."""
    if isinstance(value, (torch.Tensor, TensorDictBase)):
        return value.clone()
    if isinstance(value, Mapping):
        return {k: _copy_state(v) for k, v in value.items()}
    return value


#: the Transition fields a step hands out, each copied where it aliases (``ModelAdapter._unalias``)
_STEP_FIELDS = ("state", "observation", "reward", "terminated", "truncated")
_STEP_FIELDS_WITH_CONTINUE = (*_STEP_FIELDS, "continue_prob")

#: the tensors envs handed out (see ``ModelAdapter._unalias``); shared by every env in the
#: process, since envs (and exports) may share one model and its buffers
_HANDED_OUT = WeakAddressTable()


def _reused(tensor: torch.Tensor, fresh: list) -> bool:
    """Whether ``tensor`` must be copied (see ``ModelAdapter._unalias``); it goes to ``fresh``
    (the model's memory is remembered even when copied). Written in place (version > 0) or an
    inference tensor (no version counter, so no telling: -1) is copied."""
    fresh.append(tensor)
    if version_counter(tensor):
        return True
    return _HANDED_OUT.get(tensor) is not None


def _fix_aliases(value: Any, fresh: list) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() and _reused(value, fresh):
            value = value.clone()
            fresh.append(value)
        return value
    if isinstance(value, TensorDictBase):
        leaves = [v for v in value.values(True, True) if isinstance(v, torch.Tensor) and v.numel()]
        if any([_reused(v, fresh) for v in leaves]):
            value = value.clone()
            fresh.extend(v for v in value.values(True, True) if isinstance(v, torch.Tensor) and v.numel())
        return value
    if isinstance(value, dict):
        fixed = {k: _fix_aliases(v, fresh) for k, v in value.items()}
        # the model's own dict back when nothing was copied: states go back as returned
        return value if all(fixed[k] is value[k] for k in value) else fixed
    return value


def _state_leaves(state: Any, floating_only: bool = True, prefix: str = "state") -> dict:
    """``{"state": t}`` or ``{"state['h']": t, ...}``: the tensors of a tensor, dict or
    TensorDict state (the floating ones only with ``floating_only``); {} for anything else."""
    if isinstance(state, torch.Tensor):
        return {prefix: state} if not floating_only or state.is_floating_point() else {}
    if isinstance(state, (Mapping, TensorDictBase)):
        out: dict = {}
        for key in state.keys():
            out.update(_state_leaves(state[key], floating_only, f"{prefix}[{key!r}]"))
        return out
    return {}


def _bad_rows(value: torch.Tensor, batch_size: tuple, bad: torch.Tensor) -> bool:
    """Whether the float tensor ``value`` holds NaN/inf in a row of ``bad``."""
    if not value.is_floating_point():
        return False
    finite = torch.isfinite(value)
    rows = finite.reshape(*batch_size, -1).all(-1) if batch_size else finite.all()
    return bool((~rows & bad).any())


def _leaf_dtypes(value: Any) -> dict:
    """``{key path: dtype}`` of the tensors of a tensor, dict or TensorDict state."""
    return {key: leaf.dtype for key, leaf in _state_leaves(value, floating_only=False, prefix="").items()}


def _with_dtypes(value: Any, dtypes: dict, key: str, prefix: str = "") -> Any:
    """``value`` with each tensor leaf cast (value-checked) to ``dtypes[its path]``."""
    if isinstance(value, torch.Tensor):
        want = dtypes.get(prefix, value.dtype)
        return value if value.dtype == want else cast_keeping_value(value, want, f"{key}{prefix}")
    if isinstance(value, TensorDictBase):
        return TensorDict({k: _with_dtypes(value.get(k), dtypes, key, f"{prefix}[{k!r}]") for k in value.keys()},
                          batch_size=value.batch_size, device=value.device)
    if isinstance(value, Mapping):
        return {k: _with_dtypes(v, dtypes, key, f"{prefix}[{k!r}]") for k, v in value.items()}
    return value


def state_of_observation(raw: Any, observation: Any, device: torch.device) -> Any:
    """The state of a model that gives no separate state: the observation as the model
    returned it, on ``device``, before its cast to the space's dtype (a float64 or int64 model
    stepped from its float32 or uint8 observation would be rounded or wrapped every step). The
    observation itself when the cast changed nothing (the common case: no copy). A TensorDict
    stays one; numpy becomes a tensor of its own dtype."""
    if raw is observation:
        return observation
    if isinstance(observation, Mapping):
        if isinstance(raw, TensorDictBase):
            fixed = {k: state_of_observation(raw.get(k), observation[k], device) for k in observation}
            if all(fixed[k] is observation[k] for k in observation):
                return observation
            out = raw.to(device) if raw.device != device else raw
            return out
        fixed = {k: state_of_observation(raw[k], observation[k], device) for k in observation}
        if all(fixed[k] is observation[k] for k in observation):
            return observation
        # two keys, two tensors: an entry of the state is never also an entry of the observation
        return {k: v.clone() if v is observation[k] else v for k, v in fixed.items()}
    if isinstance(raw, torch.Tensor):
        if raw.dtype == observation.dtype:
            return observation  # moved to the device only: the moved tensor is the model's value
        return raw if raw.device == device else raw.to(device)
    array = np.asarray(raw)
    if numpy_to_torch_dtype(array.dtype) == observation.dtype:
        return observation
    return torch.tensor(array, device=device)  # a copy: never the model's numpy memory


def _where_state(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """``new`` (a tensor, dict or TensorDict state) with the rows in ``mask`` taken from ``old``."""
    if isinstance(new, torch.Tensor):
        if not isinstance(old, torch.Tensor) or old.shape != new.shape:
            return new
        view = mask.reshape(*mask.shape, *([1] * (new.ndim - mask.ndim)))
        return torch.where(view, old, new)
    if isinstance(new, TensorDictBase):
        out = new.clone(False)
        for key in new.keys():
            out.set(key, _where_state(mask, new.get(key), old[key]))
        return out
    if isinstance(new, Mapping):
        return {k: _where_state(mask, v, old[k]) for k, v in new.items()}
    return new


_CONTINUE_FORM = RawRecord(form="the continue probability")


def _continue_threshold(value: Any, hook: Optional[Hook]) -> Optional[float]:
    """``continue_threshold``: None, or a number in (0, 1]; only with ``continue_fn``."""
    if value is None:
        return None
    if hook is None:
        raise ValueError(
            f"continue_threshold={value!r} needs continue_fn (the model's probability of continuing): pass "
            "continue_fn=(model, next_state, obs, action) as well, or drop continue_threshold"
        )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise ValueError(
            f"continue_threshold: expected None (terminated is drawn from continue_fn's probability) or a number "
            f"in (0, 1] (terminated where the probability is below it), got {value!r}"
        )
    return float(value)


def _nonfinite_action(action: Any, batch_size: tuple) -> Optional[torch.Tensor]:
    """Rows whose (float tensor) action holds NaN/inf, or None. Only looked at once a step has
    already failed the NaN check, so it costs nothing on the common path."""
    if not isinstance(action, torch.Tensor) or not action.is_floating_point():
        return None
    finite = torch.isfinite(action.detach())
    rows = finite.reshape(*batch_size, -1).all(-1) if batch_size else finite.all()
    return None if bool(rows.all()) else ~rows


def _has_call(model: Any) -> bool:
    """Whether calling the model can be its transition. Every ``nn.Module`` is callable, but
    one without ``forward`` raises NotImplementedError when called: that is no transition."""
    if isinstance(model, torch.nn.Module):
        return type(model).forward is not torch.nn.Module.forward
    return callable(model)


def _model_device(model: Any) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        try:
            first = next(iter(parameters()))
            return first.device
        except (StopIteration, TypeError):
            pass
    return torch.device("cpu")
