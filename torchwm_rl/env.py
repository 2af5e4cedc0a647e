"""WorldModelEnv: a TorchRL ``EnvBase`` that imagines with a world model.

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

import functools
import inspect
import sys
import types
from collections.abc import Mapping
from typing import Any, Callable, Literal, Optional, Sequence, Union

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Compose, TransformedEnv
from torchrl.envs.utils import _make_compatible_policy, _update_during_reset

from .adapter import ModelAdapter
from .calling import Hook
from .compiled import compile_hooks, eager_hooks
from .episode import EpisodeLogic, Snapshot, is_tensor_state
from .options import env_repr, with_model_options
from .rollout import _register_originals, checked_rollout, fast_rollout_applies
from .spaces import space_to_spec
from .validation import action_shape_accepted, refuse_action_shape, to_info_value, to_observation

STATE_KEY = "model_state"
ELAPSED_KEY = "elapsed_steps"
NONFINITE_KEY = "nonfinite"
LAST_OBSERVATION_KEY = "last_observation"
UNCERTAINTY_KEY = "uncertainty"
HALTED_KEY = "halted"
CONTINUE_KEY = "continue_prob"
OBSERVATION_KEY = "observation"


def _state_spec(state: Any, device) -> TensorSpec:
    if isinstance(state, torch.Tensor):
        return Unbounded(shape=state.shape, dtype=state.dtype, device=device)
    items = state.items()
    shape = state.batch_size if isinstance(state, TensorDictBase) else ()
    return Composite({k: _state_spec(v, device) for k, v in items}, shape=shape, device=device)


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
            type(self).__name__, model, observation_space, action_space, batch_size=tuple(_batch_size(batch_size)),
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
        if not isinstance(state_key, str) or not state_key:
            raise TypeError(f"state_key: expected a non-empty str (a root tensordict key), got {state_key!r}")
        own = (RESERVED_KEYS - {STATE_KEY}) | _OPTIONAL_KEYS
        if state_key in own:
            raise ValueError(
                f"state_key={state_key!r} collides with one of the env's own keys ({sorted(own)}); "
                "pick another state_key"
            )
        self._state_key = state_key
        self._reserved = (RESERVED_KEYS - {STATE_KEY}) | {state_key}
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
            self._make_specs(probe)
            self._info_specs = self._make_info_specs(probe, info_keys)
        _refuse_reserved(self._info_specs, "info_keys", taken=self.observation_spec.keys(), reserved=self._reserved)
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

    def _make_specs(self, probe: Snapshot) -> None:
        adapter, batch, device = self.adapter, self.batch_size, self.device
        obs_spec = space_to_spec(adapter.observation_space, batch, device, "observation_space")
        self._dict_observation = isinstance(obs_spec, Composite)
        if self._dict_observation:
            optional = ([NONFINITE_KEY] if adapter.nan_policy == "truncate" else []) + (
                [UNCERTAINTY_KEY, HALTED_KEY] if adapter.ensemble is not None else []) + (
                [LAST_OBSERVATION_KEY] if self._carries_last else []) + (
                [CONTINUE_KEY] if adapter.continue_hook is not None else [])
        obs_keys = list(obs_spec.keys()) if self._dict_observation else [OBSERVATION_KEY]
        if self._state_key in obs_keys:
            raise ValueError(
                f"state_key={self._state_key!r} collides with the observation key(s) {obs_keys}; "
                "pick another state_key"
            )
        if self._dict_observation:
            _refuse_reserved(obs_spec.keys(), "observation_space (a Dict: its keys are tensordict keys)", optional,
                             reserved=self._reserved)
        observation = Composite(
            dict(obs_spec.items()) if self._dict_observation else {OBSERVATION_KEY: obs_spec},
            shape=batch,
            device=device,
        )
        state = Composite(shape=batch, device=device)
        self._state_kind: StateKind = _state_kind(probe.state)
        if self._state_kind != "opaque":
            _check_state_batch(probe.state, tuple(batch), self._state_key)
            state[self._state_key] = _state_spec(probe.state, device)
        elif batch:
            raise TypeError(
                f"a batched env needs a tensor (or dict/TensorDict of tensors) model state with "
                f"leading dim {batch[0]}; the reset hook returned {type(probe.state).__name__}"
            )
        state[ELAPSED_KEY] = Unbounded(shape=(*batch, 1), dtype=torch.int64, device=device)
        if self._carries_last:
            state[LAST_OBSERVATION_KEY] = obs_spec.clone()
        for key, spec in state.items():
            observation[key] = spec.clone()
        if self.adapter.nan_policy == "truncate":
            observation[NONFINITE_KEY] = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
        if self.adapter.ensemble is not None:
            observation[UNCERTAINTY_KEY] = Unbounded(shape=(*batch, 1), dtype=torch.float32, device=device)
            observation[HALTED_KEY] = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
        if self.adapter.continue_hook is not None:
            observation[CONTINUE_KEY] = Bounded(0.0, 1.0, shape=(*batch, 1), dtype=torch.float32, device=device)
        self.observation_spec = observation
        self.state_spec = state
        self.action_spec = space_to_spec(adapter.action_space, batch, device, "action_space")
        # one env's action shape, for the shape check of _step_entries (None: a Dict action)
        self._one_action_shape = (
            None if isinstance(self.action_spec, Composite) else tuple(self.action_spec.shape[len(batch):])
        )
        self.reward_spec = Unbounded(shape=(*batch, 1), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=batch, device=device
        )

    def __repr__(self) -> str:
        return env_repr(self, self.adapter, batch_size=tuple(self.batch_size), device=self.device)

    # ------------------------------------------------------------------ core
    def _set_seed(self, seed: Optional[int]) -> None:
        self.logic.seed(seed)

    def _make_info_specs(self, probe: Snapshot, info_keys) -> dict:
        """Specs of the model's info values put in the tensordict (GymWrapper's info reader):
        declared (``{key: spec of one env}``) or probed from one random step (a list of keys)."""
        if info_keys is None:
            return {}
        batch, device = tuple(self.batch_size), self.device
        if isinstance(info_keys, Mapping):
            specs = {}
            for key, spec in info_keys.items():
                if not isinstance(spec, TensorSpec):
                    raise TypeError(f"info_keys[{key!r}]: expected a TensorSpec of one env, got {type(spec).__name__}")
                specs[key] = spec.to(device).expand(*batch, *spec.shape)
            return specs
        info_keys = [info_keys] if isinstance(info_keys, str) else list(info_keys)
        with torch.no_grad():
            action = self.full_action_spec["action"].rand()
            _, record = self.logic.step(probe, action)
        specs = {}
        for key in info_keys:
            if key not in record.info:
                raise KeyError(
                    f"info_keys: the model's step info has no {key!r} (it has {sorted(record.info)}); "
                    "declare it with a spec instead (info_keys={key: spec}) if it only appears later"
                )
            value = torch.as_tensor(record.info[key], device=device)
            if tuple(value.shape[: len(batch)]) != batch:
                raise ValueError(f"info[{key!r}]: expected leading dims {batch}, got shape {tuple(value.shape)}")
            specs[key] = Unbounded(shape=value.shape, dtype=value.dtype, device=device)
        return specs

    def _info_entries(self, info: dict, batch, at_reset: bool) -> dict:
        """The declared info values of a step (a missing one is an error) or a reset (a reset
        has no transition: a value the reset hook does not give is zero)."""
        out = {}
        for key, spec in self._info_specs.items():
            value = info.get(key) if info else None
            per_env = spec.shape[len(self.batch_size):]
            if value is None:
                if not at_reset:
                    raise KeyError(
                        f"info key {key!r} (declared in info_keys) is missing from the model's step info "
                        f"(it has {sorted(info or {})})"
                    )
                out[key] = torch.zeros((*batch, *per_env), dtype=spec.dtype, device=self.device)
            else:
                # the one converter of hook outputs (shape, a cast that keeps the value), then the
                # adapter's buffer-reuse guard, as states and observations: an info buffer the
                # model writes into again must not change recorded steps
                tensor = to_info_value(value, (*batch, *per_env), spec.dtype, self.device, f"info[{key!r}]")
                out[key] = self.adapter._unalias((tensor,))[0]
        return out

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
        """TorchRL's implicit set_state (a plain ``reset(td)``, ``set_state`` unspecified): the
        envs start from ``td[state_key]`` when ``td`` carries it (as ``DreamerActorLoss``'s
        reset relies on; TorchRL warns that from v0.15 this needs ``set_state=True``). The step
        count alone is bookkeeping, not a state; a ``"_reset"`` mask asks for fresh starts of
        the masked rows (the others keep theirs), never a reset to the given states.

        A tensordict that carries ``"state"`` (the key ``DreamerActorLoss`` hard-codes) that is
        not this env's model state key nor one of its keys, and is laid out as the model state
        or one of its entries (:meth:`_could_be_state`), is refused: the envs would start from
        fresh reset-hook draws instead of those states. A ``"state"`` of another layout (a
        recurrent policy's ``TensorDictPrimer``) is not a model state and is left alone. A
        ``"belief"`` next to the model state that is not one of the env's keys (DreamerActorLoss's
        default belief key, left unmapped) is refused too: it would stay the replay's value at
        every imagined step."""
        if tensordict is None or self._state_kind == "opaque" or "_reset" in tensordict.keys():
            return False
        keys = tensordict.keys()
        if self._state_key in keys:
            if "belief" in keys and "belief" not in self.observation_spec.keys():
                # DreamerActorLoss selects ("state", belief key): its default "belief", a key this
                # env never steps, would stay the replay's value at every imagined step
                raise KeyError(
                    f"reset: the tensordict carries the model state {self._state_key!r} and a 'belief' this env "
                    "does not step: it would stay the given value at every imagined step while the state moves. "
                    "With TorchRL's DreamerActorLoss, the whole model state is under the state key: "
                    f"actor_loss.set_keys(belief={self._state_key!r}) (a dict state's entries are nested keys, "
                    f"e.g. ({self._state_key!r}, 'belief')). To carry it unchanged on purpose, pass set_state=True"
                )
            return True
        if "state" in keys and "state" not in self.observation_spec.keys() and self._could_be_state(
                tensordict.get("state"), tensordict.batch_size):
            raise KeyError(
                f"reset: the tensordict carries 'state' but this env's model state is under "
                f"{self._state_key!r}, so the envs would start from fresh draws of the reset hook, not "
                "from those states. TorchRL's DreamerActorLoss reads its start states from 'state': build "
                "the env with WorldModelEnv(..., state_key='state'). To draw fresh starts on purpose, pass "
                "set_state=False"
            )
        return False

    def _could_be_state(self, value: Any, batch) -> bool:
        """Whether ``value`` (a tensordict's ``"state"``) may be this env's model state, or part
        of it, for ``batch``: a tensordict sharing an entry with a dict state, or a tensor of the
        per-env shape of the state or of any of its entries (TorchRL's RSSM writes its latent
        ``"state"`` next to ``"belief"``). Anything else under ``"state"`` (a recurrent policy's
        ``TensorDictPrimer`` of another shape) is not a model state: a reset draws fresh starts."""
        spec = self.state_spec[self._state_key]
        nbatch = len(self.batch_size)
        if isinstance(value, TensorDictBase):
            return isinstance(spec, Composite) and bool(set(value.keys()) & set(spec.keys()))
        if not isinstance(value, torch.Tensor):
            return False
        leaves = [spec] if not isinstance(spec, Composite) else [
            spec[k] for k in spec.keys(include_nested=True, leaves_only=True)]
        return any(tuple(value.shape) == (*batch, *leaf.shape[nbatch:]) for leaf in leaves)

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

    def _complete_kept_rows(self, tensordict: TensorDictBase) -> None:
        """A partial reset keeps the rows not reset from ``tensordict``; TorchRL would pad a key
        the tensordict lacks with zeros, so what the kept rows need is filled in here or refused.

        * A tensordict carrying nothing but the ``"_reset"`` mask (TorchRL's
          ``select_reset_only``: ``SerialEnv`` resets its sub-envs so) asks, as for any stateful
          TorchRL env, to keep the other envs where they stand: in the last tensordict this env
          gave at its batch (a step's ``"next"`` or a reset; :attr:`_current`). Never given one:
          refused.
        * Otherwise a missing model state is an error, and so is a missing step count when a
          time limit is set (read as 0 the kept envs' episodes would run past it); without a
          limit it starts at 0. A missing observation comes from the state
          (:meth:`_observation_of`)."""
        mask = tensordict.get("_reset", None)
        if mask is None or bool(mask.all()):
            return
        keys = set(tensordict.keys())
        if keys == {"_reset"} and self._current is not None and tensordict.batch_size == self.batch_size:
            kept = set(self.observation_spec.keys()) | set(self.done_keys)
            # copies (TorchRL merges the reset rows into the tensordict's tensors in place), with no
            # graph: what a reset gives carries none (see _reset)
            current = {k: v for k, v in self._current.items() if k in kept}
            tensordict.update(TensorDict(current, batch_size=self.batch_size, device=self.device).detach().clone())
            keys = set(tensordict.keys())
        if self._state_key in self.state_spec.keys() and self._state_key not in keys:
            raise KeyError(
                f"partial reset: the envs not being reset keep their state, but the tensordict has no "
                f"{self._state_key!r} (it has {sorted(map(str, keys))}); pass the tensordict of the "
                "previous step or reset (it carries every key), or reset every env"
            )
        if ELAPSED_KEY not in keys and self.logic.max_steps is not None:
            raise KeyError(
                f"partial reset: the envs not being reset keep their step count, but the tensordict has no "
                f"{ELAPSED_KEY!r} and the env has a time limit (max_episode_steps), which those envs would run "
                f"past (read as 0); pass the tensordict of the previous step or reset (a transform such as "
                f"ExcludeTransform({ELAPSED_KEY!r}) must keep it), or reset every env"
            )
        # the kept rows are the env's own running states, not given start states: not checked
        # against the state spec (the fast path's auto-reset never checks them either)
        self._complete_start(tensordict, in_place=True, check=False)

    def _observation_keys(self) -> list:
        return list(self.adapter.observation_space.spaces) if self._dict_observation else [OBSERVATION_KEY]

    def _complete_start(self, tensordict: TensorDictBase, in_place: bool = False, check: bool = True) -> TensorDictBase:
        """``tensordict`` with what a start state implies filled in where absent: the
        observation (:meth:`_observation_of`), the step count (0), the done flags (False) and
        declared info values (0). Unchanged (same object) when nothing is missing."""
        batch = tensordict.batch_size
        keys = set(tensordict.keys())
        if check and self._state_key in keys and self._state_kind != "opaque":
            given = tensordict.get(self._state_key)
            state = self._check_given_state(given, batch)
            if state is not given:  # widened to the state's dtypes: a copy, the caller's stays as it is
                tensordict = tensordict.copy() if not in_place else tensordict
                tensordict.set(self._state_key, state)
        missing_obs = [k for k in self._observation_keys() if k not in keys]
        fill = {}
        if missing_obs:
            fill.update(self._observation_of(tensordict, missing_obs))
        if self._carries_last and LAST_OBSERVATION_KEY not in keys:  # a start: its own observation
            observation = {k: fill[k] if k in fill else tensordict.get(k) for k in self._observation_keys()}
            fill[LAST_OBSERVATION_KEY] = _clone_tree(observation if self._dict_observation
                                                     else observation[OBSERVATION_KEY])
        if ELAPSED_KEY not in keys:
            fill[ELAPSED_KEY] = torch.zeros((*batch, 1), dtype=torch.int64, device=self.device)
        for key in ("done", "terminated", "truncated", *((NONFINITE_KEY,) if self.adapter.nan_policy == "truncate" else ())):
            if key not in keys:
                fill[key] = torch.zeros((*batch, 1), dtype=torch.bool, device=self.device)
        if self.adapter.continue_hook is not None and CONTINUE_KEY not in keys:  # a start continues
            fill[CONTINUE_KEY] = torch.ones((*batch, 1), dtype=torch.float32, device=self.device)
        fill.update({k: v for k, v in self._info_entries({}, batch, True).items() if k not in keys})
        if not fill:
            return tensordict
        out = tensordict if in_place else tensordict.copy()
        out.update(fill)
        return out

    def _check_given_state(self, state: Any, batch) -> Any:
        """A model state given in a tensordict (replay buffer, encoder) has the structure, shapes
        and dtypes of the env's own (``state_spec``), for ``batch``: a missing entry of a dict
        state (e.g. a loss that selected part of it) or a wrong shape is an error naming the key,
        never a start from a different state. A leaf of a narrower dtype of the same kind
        (float32 for a float64 state: replay buffers store the observations' float32) is widened,
        which keeps every value; returns the state (the same object when nothing was widened).
        Once per start, not per step."""
        nbatch = len(self.batch_size)

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
            expected = (*batch, *spec.shape[nbatch:])
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name}: expected shape {expected} (the tensordict's batch {tuple(batch)}, "
                                 f"then one env's state shape {tuple(spec.shape[nbatch:])}), got {got}")
            if value.dtype != spec.dtype:
                same_kind = value.is_floating_point() == spec.dtype.is_floating_point and value.dtype != torch.bool
                if not (same_kind and torch.promote_types(value.dtype, spec.dtype) == spec.dtype):
                    raise TypeError(f"{name}: expected dtype {spec.dtype} (the model's state), got {value.dtype}")
                return value.to(spec.dtype)
            return value

        return check(state, self.state_spec[self._state_key], repr(self._state_key))

    def _observation_of(self, tensordict: TensorDictBase, missing: list) -> dict:
        """The observation entries of the model states in ``tensordict``: the state itself when
        the observation is the state, else ``decode_fn(model, state)``."""
        state = tensordict.get(self._state_key, None)
        if state is None:
            raise KeyError(
                f"a start state needs {self._state_key!r} in the tensordict (got keys {sorted(map(str, tensordict.keys()))})"
            )
        batch = tensordict.batch_size
        if self._state_is_observation:
            # the observation is the state cast to the space's dtype, and a tensor of its own
            # (writing into one of the two keys must never change the other)
            observation = _clone_tree(to_observation(
                state.to_dict() if self._state_kind == "dict" else state, self.adapter.observation_space,
                tuple(batch), self.device))
        elif self._decode is not None:
            with torch.no_grad(), self.logic.batch_override(tuple(batch)):
                raw = self._decode({"model": self.model, "state": self._as_hook_state(state)})
            try:
                observation = to_observation(raw, self.adapter.observation_space, tuple(batch), self.device)
            except (TypeError, ValueError) as err:
                raise type(err)(f"decode_fn: {err}") from None
        else:
            raise KeyError(
                f"reset from given states: the tensordict has {self._state_key!r} but no observation {missing}, "
                "and this model's observation is not its state; put the observation in the tensordict "
                "or pass decode_fn=(model, state) -> observation to WorldModelEnv"
            )
        entries = dict(observation) if self._dict_observation else {OBSERVATION_KEY: observation}
        return {k: entries[k] for k in missing}

    def _as_hook_state(self, state: Any) -> Any:
        return state.to_dict() if self._state_kind == "dict" and isinstance(state, TensorDictBase) else state

    # ------------------------------------------------------------------ core
    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        batch = self.batch_size if tensordict is None else tensordict.batch_size
        if kwargs.get("set_state"):
            # start from the states the tensordict carries (TorchRL's set_state contract)
            if tensordict is None or self._state_key not in tensordict.keys():
                got = sorted(map(str, tensordict.keys())) if tensordict is not None else "no tensordict"
                raise KeyError(f"reset(set_state=True) needs {self._state_key!r} in the tensordict, got {got}")
            keys = [*self._observation_keys(), self._state_key, ELAPSED_KEY, "done", "terminated", "truncated"]
            if self.adapter.nan_policy == "truncate":
                keys.append(NONFINITE_KEY)
            if self._carries_last:
                keys.append(LAST_OBSERVATION_KEY)
            if self.adapter.continue_hook is not None:
                keys.append(CONTINUE_KEY)
            with self.logic.transaction():  # a failure leaves the streams and a pending seed alone
                start = self._complete_start(tensordict.select(*keys, *self._info_specs, strict=False))
                out = start.select(*keys, *self._info_specs).clone(False)
                self.logic.start_from_given_states(tuple(batch), kwargs.get("seed"))
                false = torch.zeros((*batch, 1), dtype=torch.bool, device=self.device)
                out.update({"done": false, "terminated": false.clone(), "truncated": false.clone()})
            return out
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

    def _reset_entries(self, mask: Optional[torch.Tensor], seed=None, options=None, batch=None) -> dict:
        """The entries of a reset tensordict (not yet detached); shared with the fast rollout."""
        batch = self.batch_size if batch is None else batch
        with self.logic.batch_override(tuple(batch)):
            snapshot, info = self.logic.reset(seed=seed, options=options, mask=mask)
        false = torch.zeros((*batch, 1), dtype=torch.bool, device=self.device)
        extra = {"done": false, "terminated": false.clone(), "truncated": false.clone()}
        if self.adapter.nan_policy == "truncate":
            extra[NONFINITE_KEY] = false.clone()
        if self._info_specs:
            extra.update(self._info_entries(info, batch, True))
        if self.adapter.ensemble is not None:
            extra[UNCERTAINTY_KEY] = torch.zeros((*batch, 1), dtype=torch.float32, device=self.device)
            extra[HALTED_KEY] = false.clone()
        if self.adapter.continue_hook is not None:  # a start state is no end: it continues
            extra[CONTINUE_KEY] = torch.ones((*batch, 1), dtype=torch.float32, device=self.device)
        return self._pack(snapshot, extra)

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

    def _scalar_keys(self) -> frozenset:
        """The keys of this env's per-env scalars, ``[*B, 1]`` in its tensordicts: reward, done
        flags, step count, and ``"nonfinite"`` / ``"uncertainty"`` / ``"halted"`` /
        ``"continue_prob"`` where the env writes them."""
        keys = {"reward", "done", "terminated", "truncated", ELAPSED_KEY}
        if self.adapter.nan_policy == "truncate":
            keys.add(NONFINITE_KEY)
        if self.adapter.ensemble is not None:
            keys.update((UNCERTAINTY_KEY, HALTED_KEY))
        if self.adapter.continue_hook is not None:
            keys.add(CONTINUE_KEY)
        return frozenset(keys)

    def _step_entries(
        self, state: Any, elapsed: Optional[torch.Tensor], action: Any, batch=None, root: Any = None,
        compact: bool = False,
    ) -> dict:
        """The entries of a step's ``"next"`` tensordict from the model state (as the hooks
        take it), the step counts ``[*B, 1]`` and the action; shared with the fast rollout.
        A missing step count (None) is 0, a start, unless a time limit is set: then it is
        refused (the limit would never be reached). ``root`` (the step's input tensordict or
        entries) gives ``"last_observation"`` where the env carries it
        (``nan_policy="truncate"``, see the module docs). A batch other than the env's is
        stepped in one model call, its leading dims flattened into one.

        ``compact=True`` (the fast rollout): the per-env scalars (:meth:`_scalar_keys`: step
        counts in, reward, flags and step counts out) are ``[*B]``, without the trailing dim of
        1 the tensordict gives them (the fast rollout adds it once, to the stacked trajectory);
        every other entry is as without it."""
        batch = self.batch_size if batch is None else batch
        one = self._one_action_shape
        # one action per row, by the adapter's rule (checked here first, before a batch of
        # several dims is flattened, and to name TorchRL's planners, which give such actions)
        if one is not None and isinstance(action, torch.Tensor) and not action_shape_accepted(action.shape, one, batch):
            self._refuse_action_shape(action, batch)
        if elapsed is None:
            if self.logic.max_steps is not None:
                raise KeyError(
                    f"step: the tensordict has no {ELAPSED_KEY!r} (the step count) and the env has a time limit "
                    f"(max_episode_steps): read as 0 it would never truncate. Step from the tensordict the env "
                    f"returned (a transform such as ExcludeTransform({ELAPSED_KEY!r}) must keep it), or set "
                    f"{ELAPSED_KEY!r} ([*batch, 1] int64) where you build the tensordict"
                )
            elapsed = torch.zeros((*batch,) if compact else (*batch, 1), dtype=torch.int64, device=self.device)
        last = None
        if self._carries_last:
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
        if batch != self.batch_size:
            if len(batch) > 1:
                flat = (batch.numel(),)
                if last is not None:
                    root = {LAST_OBSERVATION_KEY: _reshape(last, len(batch), flat)}
                entries = self._step_entries(
                    _reshape(state, len(batch), flat), elapsed.reshape(*flat, *elapsed.shape[len(batch):]),
                    _reshape(action, len(batch), flat), torch.Size(flat), root, compact,
                )
                return {k: _reshape(v, 1, batch) for k, v in entries.items()}
            with self.logic.batch_override(tuple(batch)):
                return self._step_entries_now(state, elapsed, action, batch, root, compact)
        return self._step_entries_now(state, elapsed, action, batch, root, compact)

    def _refuse_action_shape(self, action: torch.Tensor, batch) -> None:
        hint = ""
        if self.batch_size:
            hint = (
                ". A policy or planner that reads env.action_spec (batched, "
                f"{tuple(self.action_spec.shape)}) as one env's gives such actions; TorchRL's CEMPlanner and "
                "MPPIPlanner do: plan on an env built with batch_size=() (the planner's input tensordict "
                "carries the batch of start states), or sample from env.full_action_spec_unbatched"
            )
        refuse_action_shape(action.shape, self._one_action_shape, batch, batch_name="the tensordict's batch", hint=hint)

    def _previous_observation(self, state: Any, root: Any) -> Any:
        """The observation a step starts from, for ``nan_policy="truncate"`` (called only when a
        row is truncated): the state itself when the observation is the state, else
        ``decode_fn(model, state)``, else the ``"last_observation"`` the env wrote itself and
        the step's input carries (untouched by transforms of the observation)."""
        if self._state_is_observation:
            return state
        if self._decode is not None:
            return self._decode({"model": self.model, "state": state})
        last = root.get(LAST_OBSERVATION_KEY)
        return last.to_dict() if isinstance(last, TensorDictBase) else last

    def _step_entries_now(self, state: Any, elapsed: torch.Tensor, action: Any, batch, root: Any = None,
                          compact: bool = False) -> dict:
        snapshot = Snapshot(state=state, observation=None, elapsed=elapsed if compact else elapsed.reshape(elapsed.shape[:-1]))
        previous = None
        if self.adapter.nan_policy == "truncate":  # as is, unless decode_fn makes it (then only when needed)
            previous = self._previous_observation(state, root) if self._decode is None else (
                lambda: self._previous_observation(state, root))
        snapshot, record = self.logic.step(snapshot, action, self._discard_rows, previous)
        terminated, truncated, reward = record.terminated, record.truncated, record.reward
        if not compact:
            terminated, truncated, reward = terminated.unsqueeze(-1), truncated.unsqueeze(-1), reward.unsqueeze(-1)
        entries = self._pack(snapshot, compact=compact)
        entries["reward"] = reward
        entries["terminated"] = terminated
        entries["truncated"] = truncated
        entries["done"] = terminated | truncated
        if self.adapter.nan_policy == "truncate":
            nonfinite = record.nonfinite
            if nonfinite is None:
                nonfinite = torch.zeros_like(record.truncated)
            entries[NONFINITE_KEY] = nonfinite if compact else nonfinite.unsqueeze(-1)
        if self._info_specs:
            entries.update(self._info_entries(record.info, batch, False))
        if record.uncertainty is not None:
            entries[UNCERTAINTY_KEY] = record.uncertainty if compact else record.uncertainty.unsqueeze(-1)
            entries[HALTED_KEY] = record.halted if compact else record.halted.unsqueeze(-1)
        if record.continue_prob is not None:
            entries[CONTINUE_KEY] = record.continue_prob if compact else record.continue_prob.unsqueeze(-1)
        return entries

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
        # atomic as a step: a rollout that raises leaves the streams, a pending seed and a held
        # state as they were, so a retry gives the trajectory a run without the failure gives
        held = self._held_state
        try:
            with self.logic.transaction():
                out = self._rollout(max_steps, policy, callback, kwargs)
        except BaseException:
            self._held_state = held
            raise
        if out.batch_size[:-1] == self.batch_size and out.batch_size[-1:] != (0,):
            self._current = dict(out.get("next")[..., -1].items())  # where the envs stand now
        return out

    def _rollout(self, max_steps: int, policy, callback, kwargs: dict) -> TensorDictBase:
        tensordict, auto_reset = kwargs["tensordict"], kwargs["auto_reset"]
        if tensordict is not None and not auto_reset and self._state_kind != "opaque":
            # start states from a replay buffer or an encoder: fill in the observation, step
            # count and done flags they imply (both rollout paths then see a full tensordict)
            tensordict = self._complete_start(tensordict)
            kwargs["tensordict"] = tensordict
        if not fast_rollout_applies(self, dict(kwargs, max_steps=max_steps, callback=callback)):
            return super().rollout(max_steps, policy, callback, **kwargs)
        break_when_any_done, return_contiguous = kwargs["break_when_any_done"], kwargs["return_contiguous"]
        trust_policy, set_state = kwargs["trust_policy"], kwargs["set_state"]
        # the argument handling of EnvBase.rollout, for the cases the fast path takes
        if break_when_any_done is None:
            break_when_any_done = True
        if return_contiguous is None:
            return_contiguous = not self._has_dynamic_specs
        if policy is not None:
            policy = _make_compatible_policy(
                policy, self.observation_spec, env=self, fast_wrap=True, trust_policy=trust_policy
            )
        else:
            policy = self.rand_action
        return checked_rollout(
            self, max_steps, policy, auto_reset=auto_reset, break_when_any_done=break_when_any_done,
            return_contiguous=return_contiguous, tensordict=tensordict, set_state=set_state,
        )

    def _read_state(self, tensordict: TensorDictBase) -> Any:
        if self._state_kind == "opaque":
            return self._held_state
        state = tensordict.get(self._state_key, None)
        if state is None:
            raise KeyError(
                f"step: the tensordict has no {self._state_key!r} (it has {sorted(map(str, tensordict.keys()))}); "
                "step from the tensordict env.reset() returns, or from model states (env.reset(td, set_state=True))"
            )
        if self._state_kind == "dict":
            return state.to_dict()
        return state

    def _pack(self, snapshot: Snapshot, extra: Optional[dict] = None, compact: bool = False) -> dict:
        """Snapshot (+ ``extra`` entries) -> the entries of a tensordict (observation keys,
        model state, step count), made into a tensordict by ONE constructor call by the caller:
        this is on the per-step hot path. ``compact``: the step count ``[*B]`` (see
        :meth:`_step_entries`)."""
        kind = _state_kind(snapshot.state)
        if kind != self._state_kind:  # the state spec was built from the first reset's state
            raise TypeError(
                f"model state: the first reset gave a {self._state_kind} state, this call gave a {kind} "
                f"({type(snapshot.state).__name__}); return the state in one structure throughout "
                "(a hook that returns no state makes the observation the state)"
            )
        observation = snapshot.observation
        if observation is snapshot.state:  # the observation is the state: two keys, two tensors,
            # so writing into one never changes the other
            observation = _clone_tree(observation)
        entries = dict(observation) if self._dict_observation else {OBSERVATION_KEY: observation}
        if self._carries_last:  # a copy: a transform writing into the observation never changes it
            entries[LAST_OBSERVATION_KEY] = _clone_tree(observation)
        if self._state_kind != "opaque":
            entries[self._state_key] = snapshot.state
        entries[ELAPSED_KEY] = snapshot.elapsed if compact else snapshot.elapsed.unsqueeze(-1)
        if extra:
            entries.update(extra)
        if self._state_kind == "opaque":
            self._held_state = snapshot.state  # committed only after the step succeeded
        return entries

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

    # --------------------------------------------------------------- exports
    def to_gymnasium(self, **kwargs):
        """Unbatched env -> :class:`~torchwm_rl.gym.GymWorldModelEnv`; batched (N,) ->
        :class:`~torchwm_rl.gym.GymVectorWorldModelEnv` (``num_envs=N``). Keyword args
        (``render_mode``, ``autoreset_mode``) go to the export.

        Every export shares this env's model and hooks but has its own episode state and
        random streams (:meth:`EpisodeLogic.fork`), starting from this env's (a seed given to
        this env and not yet used seeds the export's first reset too): two exports of one env,
        or an export and this env, never change each other's streams, so each gives the
        trajectories it gives alone. Exports are made for this env's device at the time."""
        from .gym import GymVectorWorldModelEnv, GymWorldModelEnv

        if self.batch_size:
            return GymVectorWorldModelEnv.from_logic(self.logic.fork(), **kwargs)
        return GymWorldModelEnv.from_logic(self.logic.fork(), **kwargs)

    def to_sb3(self, render_mode: Optional[str] = None):
        """A Stable-Baselines3 ``VecEnv`` over this env's model (``num_envs=N``; 1 if
        unbatched), with its own episode state and streams as :meth:`to_gymnasium`'s. Batched:
        one model call per step for all N envs. Unbatched: SB3's own ``DummyVecEnv`` around
        :meth:`to_gymnasium` (SB3 already does N=1 right). ``render_mode="rgb_array"``:
        ``render()`` returns the envs' frames tiled (what ``VecVideoRecorder`` records)."""
        from .sb3 import SB3VecWorldModelEnv

        if not self.batch_size:
            from stable_baselines3.common.vec_env import DummyVecEnv

            return DummyVecEnv([lambda: self.to_gymnasium(render_mode=render_mode)])
        return SB3VecWorldModelEnv.from_logic(self.logic.fork(), render_mode)


class _Export:
    """``WorldModelEnv.to_gymnasium`` / ``to_sb3``: the method, unless it is looked up through a
    ``TransformedEnv``.

    TorchRL's ``TransformedEnv.__getattr__`` forwards an attribute it lacks to ``base_env``, so
    ``TransformedEnv(env, ObservationNorm(...)).to_gymnasium()`` would export the base env
    without its transforms: un-normalised observations, unscaled rewards, and no error. The
    lookup is the only moment that tells the two apart (the bound method it returns is the base
    env's), so this descriptor looks at its caller's frames for a ``TransformedEnv`` running
    ``__getattr__`` and then hands out a function that refuses, saying what to do. This avoids
    patching TorchRL's class; tests/test_exports.py fails should TorchRL change how it forwards.
    A ``TransformedEnv`` without transforms exports as its base env (nothing is dropped)."""

    def __init__(self, method: Callable):
        functools.update_wrapper(self, method)
        self.method = method

    def __get__(self, env: Any, owner: Any = None) -> Any:
        if env is None:
            return self.method
        wrapper = _forwarding_transformed_env(sys._getframe(1))
        if wrapper is None:
            return types.MethodType(self.method, env)
        name = self.method.__name__

        def refuse(*args, **kwargs):
            raise TypeError(
                f"{name}() was reached through a TransformedEnv, which forwards it to its base env: the export "
                f"would step the base env WITHOUT its transforms ({_transform_names(wrapper.transform)}), so its observations and rewards would not be the "
                f"TransformedEnv's. Export the base env explicitly, env.base_env.{name}(), and apply the "
                "transforms on the other side (Gymnasium wrappers such as NormalizeObservation, "
                "TransformObservation, TransformReward; SB3's VecNormalize), or train on the TransformedEnv "
                "with TorchRL."
            )

        refuse.__name__ = refuse.__qualname__ = name
        return refuse


def _forwarding_transformed_env(frame: Any, depth: int = 4) -> Any:
    """The ``TransformedEnv`` with transforms whose ``__getattr__`` is among the ``depth`` frames
    from ``frame`` up (the lookup being forwarded to its base env), else None."""
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == "__getattr__":
            wrapper = frame.f_locals.get("self")
            if isinstance(wrapper, TransformedEnv):
                transform = wrapper.transform
                empty = isinstance(transform, Compose) and len(transform) == 0
                return None if empty else wrapper
        frame = frame.f_back
    return None


def _transform_names(transform: Any) -> str:
    parts = transform if isinstance(transform, Compose) else [transform]
    return ", ".join(type(t).__name__ for t in parts)


WorldModelEnv.to_gymnasium = _Export(WorldModelEnv.to_gymnasium)
WorldModelEnv.to_sb3 = _Export(WorldModelEnv.to_sb3)
_register_originals(WorldModelEnv)
# TorchRL's metaclass and __new__ take (*args, **kwargs): the class's signature is __init__'s
_init_signature = inspect.signature(WorldModelEnv.__init__)
WorldModelEnv.__signature__ = _init_signature.replace(parameters=list(_init_signature.parameters.values())[1:])


# the env's own keys (plus "nonfinite", "uncertainty", "halted", "continue_prob" when the env writes them)
RESERVED_KEYS = frozenset({
    "action", "reward", "done", "terminated", "truncated", "next", "_reset", "_step", STATE_KEY, ELAPSED_KEY,
})


# keys the env writes only with some options (nan_policy="truncate", an ensemble, continue_fn)
_OPTIONAL_KEYS = frozenset({NONFINITE_KEY, UNCERTAINTY_KEY, HALTED_KEY, LAST_OBSERVATION_KEY, CONTINUE_KEY})


def _refuse_reserved(keys, what: str, taken=(), reserved=RESERVED_KEYS) -> None:
    """Keys that would overwrite (or be overwritten by) the env's own entries are refused."""
    taken = set(taken)
    clash = sorted(k for k in keys if k in reserved or k in taken)
    if clash:
        raise ValueError(
            f"{what}: key(s) {clash} collide with the tensordict's own keys "
            f"({sorted(reserved | taken)}); rename them"
        )


def _clone_tree(value: Any) -> Any:
    """A tensor, or a (nested) dict of tensors, copied."""
    if isinstance(value, Mapping):
        return {k: _clone_tree(v) for k, v in value.items()}
    return value.clone()


def _batch_size(value: Any) -> torch.Size:
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


def _check_state_batch(state: Any, batch: tuple, key: str) -> None:
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
        _check_state_batch(v, batch, f"{key}[{k!r}]")


def _reshape(value: Any, ndim: int, batch) -> Any:
    """``value`` (a tensor, TensorDict or dict of them) with its ``ndim`` leading dims made ``batch``."""
    if isinstance(value, torch.Tensor):
        return value.reshape(*batch, *value.shape[ndim:])
    if isinstance(value, TensorDictBase):
        return value.reshape(*batch)
    if isinstance(value, Mapping):
        return {k: _reshape(v, ndim, batch) for k, v in value.items()}
    return value


#: how the model state travels: a tensor, a TensorDict or a dict of tensors under the state key,
#: or an opaque Python object the env holds (unbatched envs only)
StateKind = Literal["tensor", "tensordict", "dict", "opaque"]


def _state_kind(state: Any) -> StateKind:
    if isinstance(state, torch.Tensor):
        return "tensor"
    if isinstance(state, TensorDictBase):
        return "tensordict"
    if isinstance(state, Mapping) and is_tensor_state(state):
        return "dict"
    return "opaque"


class _SharedLogicEnv(WorldModelEnv):
    """:meth:`WorldModelEnv.from_logic`'s env (a subclass only so that TorchRL's metaclass
    finishes the env as it does for any constructor call)."""

    def __init__(self, logic: EpisodeLogic, seed: Optional[int] = None, decode_fn=None, info_keys=None,
                 state_key: str = STATE_KEY):
        self._setup(logic, seed, decode_fn, info_keys, state_key)
