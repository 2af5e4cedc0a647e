"""WorldModelEnv: a TorchRL ``EnvBase`` that imagines with a world model.

The TensorDict layout (keys, shapes, dtypes; ``B`` = ``batch_size``) is the contract: it is
in :mod:`torchwm_rl.env_specs`, where the keys and their specs are made. The step and reset
entries come from :mod:`torchwm_rl.entries` (shared with the fast rollout,
:mod:`torchwm_rl.rollout`); what a reset tensordict carries (given start states, the rows a
partial reset keeps) is :mod:`torchwm_rl.reset_input`; the exports are :mod:`torchwm_rl.exports`.

Partial resets use TorchRL's ``"_reset"`` mask: the reset hook computes the full batch (it gets
``options["reset_mask"]``) and TorchRL keeps the rows not being reset from the input tensordict;
a tensordict carrying only the mask (``SerialEnv`` resets its sub-envs so) keeps them where the
last tensordict the env gave at its batch left them. Steps and resets are atomic (a failure
leaves the random streams as they were) and one env is stepped by one thread at a time (another
thread's concurrent call is refused: see :meth:`EpisodeLogic.acquire`).
Nothing here disables grad: with grad enabled, ``env.rollout(H, policy)`` keeps the graph from
rewards back to the policy's parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Composite, TensorSpec
from torchrl.envs import EnvBase
from torchrl.envs.utils import _update_during_reset

from . import entries, exports, reset_input
from .adapter import ModelAdapter
from .calling import Hook
from .compiled import compile_hooks, eager_hooks
from .env_specs import (  # noqa: F401  (the key names, importable from here as before)
    CONTINUE_KEY, ELAPSED_KEY, HALTED_KEY, LAST_OBSERVATION_KEY, NONFINITE_KEY, OBSERVATION_KEY, RESERVED_KEYS,
    STATE_KEY, UNCERTAINTY_KEY, StateKind, check_state_key, make_info_specs, make_specs, parse_batch_size,
    refuse_reserved,
)
from .episode import EpisodeLogic
from .exports import RefuseThroughTransforms
from .options import env_repr, with_model_options
from .rollout import _register_originals, env_rollout
from .spaces import space_to_spec


class WorldModelEnv(EnvBase):
    """A TorchRL environment driven by a trained world model.

    Args:
        model: the world model (any object; hooks default to its methods, see
            :class:`~torchwm_rl.adapter.ModelAdapter`).
        observation_space, action_space: Gymnasium spaces or TorchRL specs of ONE env.
        reset_fn, transition_fn, reward_fn, terminal_fn, render_fn, action_transform_fn,
        initial_state, initial_observation: the adapter hooks (see ``ModelAdapter``).
        max_episode_steps: int or one per env; reaching it sets ``truncated``.
        batch_size: ``()`` or ``(N,)``: N imagined envs stepped by ONE model call per step.
        device: where the env's tensors live (default: the model's device).
        seed: seeds the env (as ``set_seed``); the first reset hands it to the reset hook.
        start_states: bank of start states to sample resets from (see ``EpisodeLogic``).
        nan_policy, check_actions, check_observations, torch_actions: see ``ModelAdapter``.
        ensemble_size, propagation, uncertainty_penalty, uncertainty_threshold, halt_reward,
        uncertainty_fn: an ensemble world model, see :mod:`torchwm_rl.ensemble`.
        continue_fn, continue_threshold: a continue head (the probability of continuing, at
            ``("next", "continue_prob")``), see ``ModelAdapter``.
        decode_fn: ``(model, state) -> observation``, for ``reset(td, set_state=True)`` from
            model states that come without an observation (when the observation is not the
            state itself).
        info_keys: model info values to put in the tensordict: a list of keys (specs probed
            from one random step here) or ``{key: spec of one env}``.
        state_key: the root tensordict key that carries the model state (default
            ``"model_state"``). TorchRL's ``DreamerActorLoss`` reads its start states from the
            root key ``"state"``: build the env with ``state_key="state"``. It must not be one
            of the env's other keys (observation, action, reward, done flags, step count,
            info keys); the TorchRL path only (Gymnasium/SB3 keep ``info["model_state"]``).

    Batch-unlocked, as TorchRL's model-based envs: ``reset``, ``step`` and ``rollout`` take any
    leading batch of start states (``batch_size`` is the batch of a reset without a
    tensordict); ``reset(td, set_state=True)`` (and a plain ``reset(td)``, TorchRL's implicit
    set_state) starts from ``td[state_key]``; an
    ``nn.Module`` model is the submodule ``world_model``.

    The model's reset hook is called once at construction to learn the state's structure.
    """

    @with_model_options
    def __init__(
        self,
        model: Any,
        observation_space: Any = None,
        action_space: Any = None,
        *,
        max_episode_steps: Union[None, int, Sequence[int], torch.Tensor] = None,
        batch_size: Sequence[int] = (),
        seed: Optional[int] = None,
        start_states: Any = None,
        decode_fn: Optional[Callable] = None,
        info_keys: Union[None, Sequence[str], Mapping[str, TensorSpec]] = None,
        state_key: str = STATE_KEY,
        **options: Any,
    ):
        if observation_space is None or action_space is None:
            raise TypeError("WorldModelEnv needs observation_space and action_space (gymnasium spaces or TorchRL specs)")
        logic = EpisodeLogic.from_model(
            type(self).__name__, model, observation_space, action_space, batch_size=tuple(parse_batch_size(batch_size)),
            max_episode_steps=max_episode_steps, start_states=start_states, options=options,
        )
        self._setup(logic, seed, decode_fn, info_keys, state_key)

    def __new__(cls, *args, **kwargs):
        # batch-unlocked, as TorchRL's own model-based envs (ModelBasedEnvBase.__new__)
        return super().__new__(cls, *args, _batch_locked=False, **kwargs)

    #: ``reset(td, set_state=True)`` starts from the model states ``td`` carries (TorchRL's flag)
    _supports_set_state = True

    def _setup(self, logic: EpisodeLogic, seed: Optional[int], decode_fn=None, info_keys=None,
               state_key: str = STATE_KEY) -> None:
        EnvBase.__init__(self, device=logic.device, batch_size=torch.Size(logic.batch_size))
        self._reserved = check_state_key(state_key)
        self._state_key = state_key
        self.logic = logic
        model = logic.adapter.model
        if isinstance(model, torch.nn.Module):
            # a registered submodule, as in TorchRL's model-based envs: parameters(), state_dict(),
            # to(device) and hold_out_net(env) include the world model
            self.world_model = model
        self._decode = Hook(decode_fn, "decode_fn") if decode_fn is not None else None
        if not self.logic.can_reset:
            raise TypeError(
                "WorldModelEnv builds its TensorDict specs from one reset at construction: "
                + self.logic.no_reset_message()
            )
        self._held_state: Any = None  # opaque (non-tensor) model state, unbatched envs only
        self._discard_rows: Optional[torch.Tensor] = None  # rows a "_step" mask leaves out (step)
        # the entries of the last tensordict this env gave at its own batch (see _complete_kept_rows)
        self._current: Optional[dict] = None
        for name in ("observation_space", "action_space"):  # refuse an unmappable space before any hook runs
            space_to_spec(getattr(logic.adapter, name), logic.batch_size, logic.device, name)
        # the probes (a reset for the specs, a step for probed info keys) leave the logic's seed,
        # streams and ensemble members as they were: the logic may belong to a Gymnasium env
        with self.logic.preserved():
            probe = self.logic.reset()[0]
            # the observation IS the state when the reset gave no separate state (adapter.reset)
            # (the model's value; the observation is its cast to the space's dtype)
            self._state_is_observation = probe.state is probe.observation or probe.state_is_observation
            # nan_policy="truncate" hands out the observation a truncated step started from: the
            # state itself, decode_fn's, or else the env's own copy it carries as a state entry
            self._carries_last = (self.adapter.nan_policy == "truncate" and not self._state_is_observation
                                  and self._decode is None)
            self._set_specs(make_specs(self.adapter, probe.state, self.batch_size, self.device, state_key,
                                       self._reserved, self._carries_last))

            def probe_step() -> dict:  # one random step, for the specs of probed info keys
                with torch.no_grad():
                    action = self.full_action_spec["action"].rand()
                    return self.logic.step(probe, action)[1].info

            self._info_specs = make_info_specs(info_keys, tuple(self.batch_size), self.device, probe_step)
        refuse_reserved(self._info_specs, "info_keys", taken=self.observation_spec.keys(), reserved=self._reserved)
        for key, spec in self._info_specs.items():
            self.observation_spec[key] = spec
        if seed is not None:
            self.set_seed(seed)

    @classmethod
    def from_logic(cls, logic: EpisodeLogic, seed: Optional[int] = None, *,
                   state_key: str = STATE_KEY) -> "WorldModelEnv":
        """A TorchRL env over an existing episode logic, so over the same adapter and model: the
        TorchRL side of a Gymnasium env, ``WorldModelEnv.from_logic(gym_env.logic)``."""
        return _SharedLogicEnv(logic, seed, state_key=state_key)

    @property
    def state_key(self) -> str:
        """The root tensordict key carrying the model state (``state_key`` argument)."""
        return self._state_key

    # ----------------------------------------------------------------- specs
    @property
    def adapter(self) -> ModelAdapter:
        return self.logic.adapter

    @property
    def model(self) -> Any:
        return self.adapter.model

    def _set_specs(self, specs) -> None:
        """Install :func:`~torchwm_rl.env_specs.make_specs`'s specs and what the step reads of them."""
        self._dict_observation = specs.dict_observation
        self._state_kind: StateKind = specs.state_kind
        self.observation_spec = specs.observation
        self.state_spec = specs.state
        if isinstance(specs.action, Composite):
            # a Dict action space: its entries under "action" (("action", "a"), ...), so the action
            # key stays "action"; setting action_spec to a Composite would make each entry a
            # top-level action key and leave "action" unset
            self.full_action_spec = Composite(action=specs.action, shape=self.batch_size, device=self.device)
        else:
            self.action_spec = specs.action
        self._one_action_shape = specs.one_action_shape  # for the shape check of _step_entries
        self.reward_spec = specs.reward
        self.done_spec = specs.done

    def __repr__(self) -> str:
        return env_repr(self, self.adapter, batch_size=tuple(self.batch_size), device=self.device)

    # ------------------------------------------------------------------ core
    def _set_seed(self, seed: Optional[int]) -> None:
        self.logic.seed(seed)

    # ---------------------------------------------------------- batch-unlocked
    def _assert_tensordict_shape(self, tensordict: TensorDictBase) -> None:
        # Batch-unlocked: any leading batch of start states (EnvBase still refuses every batch
        # but env.batch_size on an unlocked env whose batch_size is not (), hence this override).
        return

    def rand_action(self, tensordict: Optional[TensorDictBase] = None):
        """Random actions for ``tensordict``'s batch (the env's batch without one)."""
        if tensordict is None:
            return self.full_action_spec.rand()
        if tensordict.batch_size == self.batch_size:
            return super().rand_action(tensordict)
        return tensordict.update(self.full_action_spec_unbatched.rand(tensordict.batch_size))

    def step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """TorchRL's ``step``. A ``"_step"`` mask (``rollout(break_when_all_done=True)``, or
        given directly) at the env's own batch steps only the rows it marks: the others get
        TorchRL's skipped step (``_skip_tensordict``: every ``"next"`` entry copied from the
        input tensordict where it has one, so their state, observation, step count and done
        flags stay as they were; zeros elsewhere, e.g. a reward the input lacks). The model is still called once for the whole batch,
        as when the env was batch-locked (EnvBase's unlocked branch would step a row subset and
        lose which env each row is: per-env time limits), and the masked-out rows' results are
        thrown away (a NaN there is not reported)."""
        if "_step" in tensordict.keys() and tensordict.batch_size == self.batch_size:
            partial = tensordict.pop("_step").reshape(self.batch_size)
            if bool(partial.all()):
                return super().step(tensordict)
            skipped = self._skip_tensordict(tensordict)
            if not bool(partial.any()):
                tensordict.set("next", skipped)
                return tensordict
            self._discard_rows = ~partial
            try:
                out = super().step(tensordict)
            finally:
                self._discard_rows = None
            merged = out.get("next").where(partial, skipped)
            out.set("next", merged)
            self._current = dict(merged.items())
            return out
        return super().step(tensordict)

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        """TorchRL's ``maybe_reset`` (``step_and_maybe_reset``, so ``EnvBase.rollout`` and the
        ``Collector``). With ``reset_schedule="every_step"`` and the env's own batch, the done
        rows restart without a host read of ``done.any()``: the reset hook computes the full
        batch at every step and the done rows are merged into ``tensordict`` in place with one
        masked write, TorchRL's partial rule (``_update_during_reset``: the reset rows from the
        reset, the other keys' reset rows zero-padded), also when every row is done. Otherwise
        TorchRL's own."""
        batch = self.batch_size
        if (self.adapter.reset_schedule != "every_step" or not batch or tensordict.batch_size != batch
                or self.reset_keys != ["_reset"] or not self._simple_done):
            return super().maybe_reset(tensordict)
        mask = tensordict.get("done").reshape(batch)
        with self.logic.transaction():  # atomic, as _reset
            entries = self._reset_entries(mask)
        fresh = TensorDict(entries, batch_size=batch, device=self.device).detach()  # as _reset
        tensordict.where(~mask, other=fresh, out=tensordict, pad=0)
        self._current = dict(tensordict.items())
        return tensordict

    def _input_td_has_state(self, tensordict: Optional[TensorDictBase]) -> bool:
        """TorchRL's implicit set_state: whether a plain ``reset(td)`` starts from the model
        states ``td`` carries; see :func:`~torchwm_rl.reset_input.carries_states` (which also
        refuses DreamerActorLoss's ``"state"`` / ``"belief"`` keys left unmapped)."""
        if tensordict is None or self._state_kind == "opaque" or "_reset" in tensordict.keys():
            return False  # carries_states' own first answer, before the spec lookups below
        return reset_input.carries_states(tensordict, self._state_key, self._state_kind, self.observation_spec.keys(),
                                          self.state_spec[self._state_key], len(self.batch_size))

    def _step_proc_data(self, next_tensordict):
        if next_tensordict.batch_size == self.batch_size:
            return super()._step_proc_data(next_tensordict)
        # another batch: EnvBase's completion reads the spec's batch; _step wrote every done
        # entry and the reward [*batch, 1] itself
        return next_tensordict

    def _reset_proc_data(self, tensordict, tensordict_reset):
        if tensordict is not None:
            self._complete_kept_rows(tensordict)
        if tensordict_reset.batch_size == self.batch_size:
            out = super()._reset_proc_data(tensordict, tensordict_reset)
            self._current = dict(out.items())
            return out
        if tensordict is not None:
            return _update_during_reset(tensordict_reset, tensordict, self.reset_keys)
        return tensordict_reset

    # ------------------------------------------------------------------ core
    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        batch = self.batch_size if tensordict is None else tensordict.batch_size
        if kwargs.get("set_state"):  # start from the states the tensordict carries
            return reset_input.start_from_given(self, tensordict, batch, kwargs.get("seed"))
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(batch)
        held = self._held_state
        try:
            # atomic: a failure after the reset hook ran (an info value, the state's structure)
            # leaves the streams, a pending seed and a held state as they were
            with self.logic.transaction():
                entries = self._reset_entries(mask, kwargs.get("seed"), kwargs.get("options"), batch)
                # Start states carry no graph: gradients flow through the actions of steps, and a
                # reset hook that decodes with trainable parameters must not leak a graph into
                # TorchRL's buffers (ParallelEnv workers copy into shared memory).
                return TensorDict(entries, batch_size=batch, device=self.device).detach()
        except BaseException:
            self._held_state = held
            raise

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch = tensordict.batch_size
        elapsed = tensordict.get(ELAPSED_KEY, None)
        action = tensordict.get("action", None)
        if action is None:
            raise KeyError("step: the tensordict has no 'action' (set one, e.g. env.rand_action(td) or a policy)")
        held = self._held_state
        try:
            # atomic: a step that fails after the model ran (an info value, the state's
            # structure, a conversion) leaves the streams and a held state as they were, so a
            # retry gives the step a run without the failure gives
            with self.logic.transaction():
                entries = self._step_entries(self._read_state(tensordict), elapsed, action, batch, tensordict)
                out = TensorDict(entries, batch_size=batch, device=self.device)
        except BaseException:
            self._held_state = held
            raise
        # An autograd graph cannot cross processes: a step whose input lives in shared memory
        # (a ParallelEnv / multi-process collector worker) hands out detached tensors, so a
        # model with trainable parameters works there unchanged.
        # (``is_shared()`` is True for EVERY CUDA tensor, so it only says "worker" on the CPU: on
        # CUDA the graph is kept, as the fast rollout keeps it.)
        shared = elapsed is not None and elapsed.device.type == "cpu" and elapsed.is_shared()
        if batch == self.batch_size:
            self._current = entries
        return out.detach() if shared else out

    # the entries of reset and step tensordicts (shared with the fast rollout) and the start
    # states a tensordict carries: module functions taking the env first, bound here as methods
    _reset_entries = entries.reset_entries
    _step_entries = entries.step_entries
    _step_entries_now = entries.step_entries_now
    _pack = entries.pack
    _read_state = entries.read_state
    _previous_observation = entries.previous_observation
    _refuse_action_shape = entries.refuse_action_shape
    _scalar_keys = entries.scalar_keys
    _complete_start = reset_input.complete_start
    _complete_kept_rows = reset_input.complete_kept_rows

    def compile(self, *, warmup: Optional[int] = None, **options: Any) -> "WorldModelEnv":
        """``compile=True`` (TorchRL's constructor keyword) or this call: the step's model hooks run
        through ``torch.compile`` (:mod:`torchwm_rl.compiled`; ``options`` go to it), every path
        and the fast rollout kept (TorchRL's own compiles ``step_and_maybe_reset``, whose
        bookkeeping does not trace). ``warmup`` is accepted and not needed. :meth:`eager` undoes it."""
        compile_hooks(self.adapter, **options)
        return self

    def eager(self) -> "WorldModelEnv":
        eager_hooks(self.adapter)
        return super().eager()

    def rollout(
        self,
        max_steps: int,
        policy: Optional[Callable[[TensorDictBase], TensorDictBase]] = None,
        callback: Optional[Callable] = None,
        *,
        actions=None,
        auto_reset: bool = True,
        auto_cast_to_device: bool = False,
        break_when_any_done: Optional[bool] = None,
        break_when_all_done: Optional[bool] = None,
        return_contiguous: Optional[bool] = False,
        tensordict: Optional[TensorDictBase] = None,
        set_truncated: bool = False,
        out=None,
        trust_policy: bool = False,
        storing_device=None,
        set_state: Optional[bool] = None,
    ) -> TensorDictBase:
        """TorchRL's :meth:`~torchrl.envs.EnvBase.rollout` (same arguments, same result).

        The common calls (a policy or random actions, with or without ``break_when_any_done``,
        ``auto_reset``, ``tensordict=``) take a fast path (:mod:`torchwm_rl.rollout`) that
        skips TorchRL's per-step TensorDict bookkeeping and returns the same tensordict; the
        rest (``callback``, ``out=``, ``break_when_all_done``, ...) runs ``EnvBase.rollout``.
        """
        kwargs = dict(
            actions=actions, auto_reset=auto_reset, auto_cast_to_device=auto_cast_to_device,
            break_when_any_done=break_when_any_done, break_when_all_done=break_when_all_done,
            return_contiguous=return_contiguous, tensordict=tensordict, set_truncated=set_truncated,
            out=out, trust_policy=trust_policy, storing_device=storing_device, set_state=set_state,
        )
        return env_rollout(self, max_steps, policy, callback, kwargs, super().rollout)

    def to(self, device) -> "WorldModelEnv":
        """Move the env, its specs and its world model (a registered submodule) to ``device``."""
        out = super().to(device)
        self.logic.move_to(self.device)
        return out

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Drop the model state this env holds (an opaque state, the last tensordict's entries it
        keeps for mask-only resets); the adapter keeps the model, which belongs to the caller.
        Exports made with ``to_gymnasium``/``to_sb3`` close on their own."""
        self._held_state = None
        self._current = None
        super().close(raise_if_closed=raise_if_closed)

    # exports (torchwm_rl.exports): refused when reached through a TransformedEnv
    to_gymnasium = RefuseThroughTransforms(exports.to_gymnasium)
    to_sb3 = RefuseThroughTransforms(exports.to_sb3)


_register_originals(WorldModelEnv)
# TorchRL's metaclass and __new__ take (*args, **kwargs): the class's signature is __init__'s
_init_signature = inspect.signature(WorldModelEnv.__init__)
WorldModelEnv.__signature__ = _init_signature.replace(parameters=list(_init_signature.parameters.values())[1:])


class _SharedLogicEnv(WorldModelEnv):
    """:meth:`WorldModelEnv.from_logic`'s env (a subclass only so that TorchRL's metaclass
    finishes the env as it does for any constructor call)."""

    def __init__(self, logic: EpisodeLogic, seed: Optional[int] = None, decode_fn=None, info_keys=None,
                 state_key: str = STATE_KEY):
        self._setup(logic, seed, decode_fn, info_keys, state_key)
