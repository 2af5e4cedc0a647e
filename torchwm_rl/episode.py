"""Episode bookkeeping shared by every path: resets (full, partial, from a start-state bank),
steps with per-env time limits, and seeding.

The logic is functional: :meth:`EpisodeLogic.reset` and :meth:`EpisodeLogic.step` take the
current :class:`Snapshot` and return a new one without mutating anything the caller holds, so a
step that raises leaves the caller's state, counters and RNG as they were (atomic steps). The
TorchRL env keeps its snapshot in TensorDicts; the Gymnasium exports keep it in an attribute.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tensordict import TensorDictBase

from .adapter import RESET_METHODS, ModelAdapter, Reset, Transition, state_of_observation
from .refit import guard_structure
from .starts import ReplayStarts, check_start_observations, is_replay_buffer
from .validation import to_observation

#: Serialises every swap of the process-global torch RNG (save the caller's state, install an
#: env's stream, call the hooks, restore): without it two threads stepping seeded envs would
#: install and restore each other's streams, and neither env nor the caller would keep its own.
_GLOBAL_RNG_LOCK = threading.RLock()


@dataclass
class Snapshot:
    """Where every env stands: model state, last observation, steps taken this episode."""

    state: Any
    observation: Any
    elapsed: torch.Tensor  # int64, shape batch
    #: the reset gave no separate state: the observation is the state cast to the space's dtype
    state_is_observation: bool = False


def is_tensor_state(state: Any) -> bool:
    """A tensor, TensorDict, or (nested) dict of tensors: can travel in a TensorDict."""
    if isinstance(state, (torch.Tensor, TensorDictBase)):
        return True
    if isinstance(state, Mapping) and state:
        return all(is_tensor_state(v) for v in state.values())
    return False


def select_rows(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """Rows of ``new`` where ``mask`` (shape batch) is True, rows of ``old`` elsewhere."""
    if isinstance(new, TensorDictBase):
        return new.where(mask, old)
    if isinstance(new, Mapping):
        return {k: select_rows(mask, new[k], old[k]) for k in new}
    if isinstance(new, torch.Tensor):
        view = mask.reshape(*mask.shape, *([1] * (new.ndim - mask.ndim)))
        return torch.where(view, new, old)
    if isinstance(new, np.ndarray):  # a numpy state (the Gymnasium/SB3 exports keep it as given)
        rows = mask.detach().cpu().numpy()
        return np.where(rows.reshape(*rows.shape, *([1] * (new.ndim - rows.ndim))), new, old)
    raise TypeError(
        f"a partial reset needs tensor (or dict/TensorDict of tensor) states, got {type(new).__name__}"
    )


def check_mergeable_state(state: Any, batch: tuple, name: str = "model_state") -> None:
    """A batched env's model state is one a partial reset can merge row by row
    (:func:`select_rows`): a tensor or numpy array with leading dims ``batch``, or a TensorDict
    or (nested) dict of these. Checked at every reset, so that a state no episode end could
    merge is refused before the first step rather than at the first episode end."""
    if isinstance(state, TensorDictBase):
        return
    if isinstance(state, (torch.Tensor, np.ndarray)):
        if tuple(state.shape[: len(batch)]) != tuple(batch):
            raise ValueError(
                f"{name}: a batched env needs a model state with leading dims {tuple(batch)}, got shape "
                f"{tuple(state.shape)} from the reset hook (one row per env, so that a partial reset can "
                "restart some rows)"
            )
        return
    if isinstance(state, Mapping) and state:
        for key, value in state.items():
            check_mergeable_state(value, batch, f"{name}[{key!r}]")
        return
    raise TypeError(
        f"{name}: a batched env needs a tensor or numpy array model state (or a dict/TensorDict of them) "
        f"with leading dims {tuple(batch)}, so that a partial reset can restart some rows; the reset hook "
        f"returned {type(state).__name__}. Return the state as a tensor (one row per env), or use batch_size=()"
    )


def _index_rows(value: Any, index: torch.Tensor) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, TensorDictBase):
        return {k: _index_rows(v, index) for k, v in value.items()}
    # a 0-d index (unbatched env) is basic indexing, i.e. a view: copy so that callers
    # writing into their observation cannot change the bank
    return value[index].clone() if index.ndim == 0 else value[index]


def num_envs_batch(num_envs: Any) -> tuple:
    """The batch ``(N,)`` of a batched export built from a model (``num_envs=N``, a positive
    int; a bool, a float or a non-positive value is refused)."""
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
    return (num_envs,)


class EpisodeLogic:
    """Resets and steps a batch of imagined envs through a :class:`ModelAdapter`.

    Args:
        adapter: the normalized model.
        max_episode_steps: None, an int, or one int per env (shape ``batch``); an episode whose
            step count reaches it ends with ``truncated=True`` (Gymnasium TimeLimit semantics:
            ``terminated`` is left as the model said).
        start_states: optional bank of real start states with leading dim M (a tensor, used as
            both state and observation, or a mapping/TensorDict with ``"observation"`` and
            optionally ``"state"``). When given, reset samples rows with replacement from it
            (reproducible under the seed) instead of calling the reset hook. A TorchRL
            ``ReplayBuffer`` is a live bank: each reset samples what it holds then
            (:mod:`torchwm_rl.starts`).

    Randomness. Every env has its own seeded streams: ``generator`` (start-state bank draws)
    and ``hook_generator``, handed to every hook that asks for ``generator`` (and used by
    ensembles). Seeding (``seed`` or ``reset(seed=...)``) seeds both. Hooks that draw from the
    process-global torch RNG (``torch.rand*`` without ``generator=``) are handled as follows:

    * when EVERY hook a reset or step calls asks for ``generator``, the global torch RNG is
      never touched: the hooks are expected to draw from the generator they get;
    * otherwise, once seeded, the env also keeps a global-RNG stream of its own: each hook call
      runs with that stream installed in torch's global RNG, and the caller's global state is
      put back afterwards, so a model sampling with ``torch.rand*`` reproduces its episodes
      under a seed and the caller's global RNG is unchanged by env calls. The
      save/install/call/restore runs under one process-wide lock, so envs stepped from several
      threads each keep their own stream (their hook calls then run one at a time); code in
      another thread that draws from the global RNG while a hook runs would still draw from
      that env's stream, which is why hooks that take ``generator`` are the thread-safe choice.
      An env never seeded leaves the global RNG to the model.

    Threads. One env (one logic) is stepped by one thread at a time: a step or reset that
    starts while another thread's runs is refused (:meth:`acquire`); use one env per thread.
    """

    @classmethod
    def from_model(
        cls,
        owner: str,
        model: Any,
        observation_space: Any,
        action_space: Any,
        *,
        batch_size: tuple = (),
        max_episode_steps: Union[None, int, Sequence[int], torch.Tensor] = None,
        start_states: Any = None,
        options: Optional[dict] = None,
    ) -> "EpisodeLogic":
        """The logic every public constructor builds (``owner``: its class name, for errors): a
        :class:`ModelAdapter` over ``model`` with the model ``options``
        (:class:`~torchwm_rl.options.ModelOptions`), spaces given as Gymnasium spaces or
        TorchRL specs."""
        from .options import model_options
        from .spaces import as_space

        options = options or {}
        model_options(owner, options)  # an unknown keyword is named as the owner's
        adapter = ModelAdapter(model, as_space(observation_space, "observation_space"),
                               as_space(action_space, "action_space"), batch_size=tuple(batch_size), **options)
        logic = cls(adapter, max_episode_steps, start_states)
        logic.owner = owner
        return logic

    def __init__(
        self,
        adapter: ModelAdapter,
        max_episode_steps: Union[None, int, Sequence[int], torch.Tensor] = None,
        start_states: Any = None,
    ):
        self.adapter = adapter
        guard_structure(adapter.model)  # a refit in place never leaves it half-loaded (torchwm_rl.refit)
        self.owner = "the env"  # the public class's name, for errors (from_model sets it)
        # one step or reset at a time (see in_use): held for a whole step, taken without waiting
        self._in_use = threading.RLock()
        self.batch_size = adapter.batch_size
        self.device = adapter.device
        self.max_steps = self._max_steps(max_episode_steps)
        self.generator = torch.Generator(device="cpu")
        self.generator.seed()
        self.pending_seed: Optional[int] = None
        self.rng_state: Optional[tuple] = None  # the model's torch RNG stream(s) once seeded
        self.bank = self._bank(start_states)
        # the env's random stream handed to hooks that ask for ``generator`` (on the env's device)
        self.hook_generator = torch.Generator(device=self.device)
        self.hook_generator.seed()
        adapter.generator = self.hook_generator
        self._guard_generator = adapter.wants_generator()
        # every hook takes ``generator``: the process-global RNG is left alone (class docs)
        self._swap_global = not adapter.all_hooks_take_generator()

    def fork(self) -> "EpisodeLogic":
        """An independent logic over the same model and hooks, for an export
        (``WorldModelEnv.to_gymnasium()``/``to_sb3()``): it starts where this one stands (the
        streams' states, a seed not yet used, the ensemble's "fixed" members) and from then on
        has its own, so resets, seeds and steps of one export never change another's (nor the
        TorchRL env's). The model (and its parameters) is shared, not copied."""
        adapter = copy.copy(self.adapter)
        if adapter.ensemble is not None:
            adapter.ensemble = copy.copy(adapter.ensemble)
        out = copy.copy(self)
        out.adapter = adapter
        out._in_use = threading.RLock()  # an export is used on its own: its own lock
        out.generator = torch.Generator(device="cpu")
        out.generator.set_state(self.generator.get_state())
        out.hook_generator = torch.Generator(device=self.device)
        out.hook_generator.set_state(self.hook_generator.get_state())
        adapter.generator = out.hook_generator
        # rng_state (a tuple of state tensors) and the ensemble's members are replaced, never
        # written into, so the fork may start from the same objects
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_in_use"]  # a lock does not pickle; a copy is used on its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._in_use = threading.RLock()

    def acquire(self) -> None:
        """Take this logic for one step or reset of the calling thread, without waiting.

        One env holds one episode state and one random stream: two threads stepping it at
        once would interleave their steps (a front end keeping its snapshot would lose every
        other step; the streams would give neither thread its own trajectory). So a step or
        reset that starts while another thread's runs is refused, with an error naming the
        env; the same thread may nest (a step inside a transaction). Release with
        :meth:`release`."""
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(
                f"{self.owner} (model {type(self.adapter.model).__name__}): step or reset called from another "
                "thread while one is running. One env keeps one episode state and one random stream, so it "
                "cannot be stepped from two threads at once: use one env per thread (each with its own seed), "
                "or torchrl's ParallelEnv / a batched env (batch_size=(N,)) for several envs"
            )

    def release(self) -> None:
        self._in_use.release()

    @property
    def can_reset(self) -> bool:
        """Whether resets have a source: a reset hook, an initial observation or a bank."""
        return self.bank is not None or self.adapter.can_reset

    def no_reset_message(self) -> str:
        return (
            f"{type(self.adapter.model).__name__} has no reset: pass reset_fn=(model, seed, options), "
            f"initial_observation=..., start_states=..., or give the model one of the methods "
            f"{RESET_METHODS}."
        )

    def _max_steps(self, value) -> Optional[torch.Tensor]:
        if value is None:
            return None
        # whole numbers only: 2.5 would become 2, inf/nan/"3" fail deep in torch otherwise
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if isinstance(value, bool) or array.dtype.kind not in "iu":
            raise TypeError(
                f"max_episode_steps: expected a positive int or one per env, got {value!r} "
                f"({type(value).__name__}{'' if array.dtype == object else ', dtype ' + str(array.dtype)})"
            )
        steps = torch.as_tensor(array, dtype=torch.int64, device=self.device)
        if steps.ndim and tuple(steps.shape) != self.batch_size:
            raise ValueError(
                f"max_episode_steps: expected an int or one per env (shape {self.batch_size}), "
                f"got shape {tuple(steps.shape)}"
            )
        if bool((steps <= 0).any()):
            raise ValueError(f"max_episode_steps must be positive, got {value}")
        return steps

    def _bank(self, start_states):
        if start_states is None:
            return None
        if is_replay_buffer(start_states):  # a live bank: read at every reset (torchwm_rl.starts)
            return ReplayStarts(start_states, self.adapter.observation_space, self.device,
                                check_finite=self.adapter.nan_policy != "ignore")
        if isinstance(start_states, (Mapping, TensorDictBase)):
            if "observation" not in start_states.keys():
                raise ValueError("start_states: a mapping bank needs an 'observation' entry (and optionally 'state')")
            observation = start_states["observation"]
            state = start_states["state"] if "state" in start_states.keys() else None
        else:
            observation, state = torch.as_tensor(start_states, device=self.device), None
        size = _leading_dim(observation)
        if size == 0:
            raise ValueError("start_states: the bank is empty")
        if state is not None and _leading_dim(state) != size:
            raise ValueError(
                f"start_states: 'state' has {_leading_dim(state)} rows but 'observation' has {size}; "
                "row i of each is one start state"
            )
        # check the whole bank once, here, rather than each sampled row at every reset
        check_start_observations(observation, self.adapter.observation_space, (size,), _bank_device(observation),
                                 self.adapter.nan_policy != "ignore", lambda bad: f"at bank row(s) "
                                 f"{bad.nonzero().flatten().tolist()}", state)
        return observation, state, size

    # ------------------------------------------------------------------ seeds
    def seed(self, seed: Optional[int]) -> None:
        """Seed the env's generator and hand ``seed`` to the next reset hook call."""
        if seed is None:
            return
        self.generator.manual_seed(int(seed))
        self.hook_generator.manual_seed(int(seed))
        self.rng_state = _seeded_rng_state(int(seed), self.device)
        self.pending_seed = int(seed)

    def transaction(self) -> "_Transaction":
        """Everything inside either happens or leaves no trace in the random streams: the
        env's generators, the model's stream and an unused seed are restored when it raises.
        The exports run a whole step (step + autoreset) in one, so a step that fails after a
        successful reset (or the reverse) can be retried and gives what a run without the
        failure gives. A transaction also holds the logic for the calling thread
        (:meth:`acquire`): a step of another thread meanwhile is refused."""
        return _Transaction(self)

    @contextmanager
    def preserved(self):
        """Everything inside leaves the random streams, an unused seed and the ensemble's
        "fixed" members as they were, whether it succeeds or not: for probes (a TorchRL view
        built over a logic another env owns must not use up its seed or redraw its members).
        Hooks drawing from the global torch RNG draw from a throwaway stream in here, so a probe
        (the reset that builds a TorchRL env's specs) leaves the caller's global RNG alone."""
        saved = self._save()
        if self.rng_state is None:  # a hook drawing from the global RNG draws from a throwaway
            self.rng_state = _seeded_rng_state(0, self.device)  # stream: the caller's is left alone
        try:
            yield
        finally:
            self._restore(saved)

    def _save(self) -> tuple:
        ensemble = self.adapter.ensemble
        members = None if ensemble is None or ensemble.members is None else ensemble.members.clone()
        return (self.generator.get_state(), self.hook_generator.get_state(), self.rng_state, self.pending_seed,
                members)

    def _restore(self, saved: tuple) -> None:
        self.generator.set_state(saved[0])
        self.hook_generator.set_state(saved[1])
        self.rng_state, self.pending_seed = saved[2], saved[3]
        if self.adapter.ensemble is not None:
            self.adapter.ensemble.members = saved[4]

    def start_from_given_states(self, batch: tuple, seed: Optional[int] = None) -> None:
        """A reset from states the caller gives (TorchRL's ``set_state``): no hook runs, but a
        seed (given or pending) seeds the streams as a reset would, and "fixed" ensemble members
        are drawn for the started envs from the env's stream."""
        if seed is None:
            seed, self.pending_seed = self.pending_seed, None
        if seed is not None:
            self.generator.manual_seed(int(seed))
            self.hook_generator.manual_seed(int(seed))
            self.rng_state = _seeded_rng_state(int(seed), self.device)
        ensemble = self.adapter.ensemble
        if ensemble is not None and ensemble.propagation == "fixed":
            if tuple(batch) != tuple(self.batch_size):
                raise ValueError(
                    f"propagation='fixed' keeps one ensemble member per env of the env's batch {self.batch_size}, "
                    f"so it has no meaning for a batch of shape {tuple(batch)}; use 'random' or 'mean', or build "
                    f"the env with batch_size={tuple(batch)}"
                )
            ensemble.on_reset(self.hook_generator, None)

    @contextmanager
    def model_rng(self):
        """Run model hooks on the env's torch RNG stream (see the class docs); the stream
        advances only when the hooks succeed."""
        if self._guard_generator:  # the hooks' generator advances only when they succeed too
            generator_state = self.hook_generator.get_state()
            try:
                with self._global_rng():
                    yield
            except BaseException:
                self.hook_generator.set_state(generator_state)
                raise
            return
        with self._global_rng():
            yield

    @contextmanager
    def _global_rng(self):
        if not self._swap_global:
            yield
            return
        if self.rng_state is None:  # unseeded: the model draws from the global RNG, but never
            with _GLOBAL_RNG_LOCK:  # while another thread's env has its stream installed there
                yield
            return
        # torch.random.fork_rng does the same for every CUDA device at twice the cost; this
        # swaps only the CPU generator and the env device's. The lock makes save/install/
        # call/restore one step for every other env in the process (see the class docs).
        with _GLOBAL_RNG_LOCK:
            saved = _get_rng_state(self.device)
            _set_rng_state(self.device, self.rng_state)
            try:
                yield
                new_state = _get_rng_state(self.device)
            finally:
                _set_rng_state(self.device, saved)
        self.rng_state = new_state

    @contextmanager
    def batch_override(self, batch: tuple):
        """Run resets and steps for ``batch`` instead of the env's batch (a batch-unlocked TorchRL
        env given start states of another batch): hooks asking for ``batch_size`` get it and
        every value is checked against it. Per-env time limits (one per env of the env's own
        batch) cannot be mapped to another batch and are refused."""
        batch = tuple(batch)
        if batch == self.batch_size:
            yield
            return
        if self.max_steps is not None and self.max_steps.ndim:
            raise ValueError(
                f"max_episode_steps was given per env (shape {tuple(self.max_steps.shape)}), so it has no "
                f"meaning for a batch of shape {batch}; pass one int limit to use other batch sizes"
            )
        ensemble = self.adapter.ensemble
        if ensemble is not None and ensemble.propagation == "fixed":
            raise ValueError(
                f"propagation='fixed' keeps one ensemble member per env of the env's batch {self.batch_size}, "
                f"so it has no meaning for a batch of shape {batch}; use 'random' or 'mean', or build the env "
                f"with batch_size={batch}"
            )
        adapter = self.adapter
        saved = self.batch_size, adapter.batch_size, None if ensemble is None else ensemble.batch_size
        self.batch_size = adapter.batch_size = batch
        if ensemble is not None:
            ensemble.batch_size = batch
        try:
            yield
        finally:
            self.batch_size, adapter.batch_size = saved[:2]
            if ensemble is not None:
                ensemble.batch_size = saved[2]

    def move_to(self, device: torch.device) -> None:
        """Follow the model to ``device`` (``WorldModelEnv.to``): tensors and generators this
        logic keeps move with it; a hook generator is re-created there (same seed)."""
        device = torch.device(device)
        if device == self.device:
            return
        self.device = self.adapter.device = device
        if self.max_steps is not None:
            self.max_steps = self.max_steps.to(device)
        seed = self.hook_generator.initial_seed()
        self.hook_generator = torch.Generator(device=device)
        self.hook_generator.manual_seed(seed)
        self.adapter.generator = self.hook_generator
        if self.rng_state is not None:  # the CPU stream goes on; a CUDA one starts from the seed
            seeded = _seeded_rng_state(int(self.generator.initial_seed()), device)
            self.rng_state = (self.rng_state[0], *seeded[1:])

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        seed: Optional[int] = None,
        options: Optional[dict] = None,
        mask: Optional[torch.Tensor] = None,
        previous: Optional[Snapshot] = None,
    ) -> tuple[Snapshot, dict]:
        """Reset all envs, or only the rows in ``mask`` (shape batch).

        The hook always computes a full batch and receives ``options["reset_mask"]``; with
        ``previous`` given, rows outside ``mask`` are copied from it exactly (state,
        observation, step count). Without ``previous`` the caller merges (TorchRL does).
        """
        if not self.can_reset:
            raise TypeError(self.no_reset_message())
        self.acquire()
        try:
            return self._reset_locked(seed, options, mask, previous)
        finally:
            self.release()

    def _reset_locked(self, seed, options, mask, previous) -> tuple[Snapshot, dict]:
        pending_seed = self.pending_seed
        if seed is None:
            seed, self.pending_seed = self.pending_seed, None
        else:
            self.pending_seed = None
        generator_state, rng_state = self.generator.get_state(), self.rng_state
        hook_generator_state = self.hook_generator.get_state()
        try:
            if seed is not None:
                self.generator.manual_seed(int(seed))
                self.hook_generator.manual_seed(int(seed))
                self.rng_state = _seeded_rng_state(int(seed), self.device)
            options = dict(options or {})
            if self.batch_size:
                if mask is None:
                    mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
                mask = mask.to(self.device, torch.bool).reshape(self.batch_size)
                options["reset_mask"] = mask
            with self.model_rng():
                record = self._reset_record(seed, options)
                if self.adapter.ensemble is not None:  # "fixed": the restarted envs draw a member
                    self.adapter.ensemble.on_reset(self.hook_generator, mask)
        except BaseException:
            # a failed reset leaves no trace: the generators and a seed not yet used stay as they were
            self.generator.set_state(generator_state)
            self.hook_generator.set_state(hook_generator_state)
            self.rng_state = rng_state
            self.pending_seed = pending_seed
            raise
        if self.batch_size:
            check_mergeable_state(record.state, self.batch_size)
        elapsed = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        snapshot = Snapshot(record.state, record.observation, elapsed,
                            record.state is record.observation or record.state_is_observation)
        if previous is not None and mask is not None and self.batch_size and not bool(mask.all()):
            snapshot = Snapshot(
                select_rows(mask, record.state, previous.state),
                select_rows(mask, record.observation, previous.observation),
                torch.where(mask, elapsed, previous.elapsed),
            )
        return snapshot, record.info

    def _reset_record(self, seed, options):
        if self.bank is None:
            return self.adapter.reset(seed=seed, options=options)
        shape = self.batch_size or (1,)
        if isinstance(self.bank, ReplayStarts):  # rows drawn from the buffer's contents now
            rows, obs, state = self.bank.sample(shape, self.generator)
            if not self.batch_size:
                first = torch.tensor(0)
                rows, obs = _index_rows(rows, first), _index_rows(obs, first)
                state = None if state is None else _index_rows(state, first)
        else:
            observation, bank_state, size = self.bank
            index = torch.randint(size, shape, generator=self.generator).to(_bank_device(observation))
            if not self.batch_size:
                index = index[0]
            rows = _index_rows(observation, index)
            obs = to_observation(rows, self.adapter.observation_space, self.batch_size, self.device)
            state = None if bank_state is None else _index_rows(bank_state, index)
        if state is not None:
            return Reset(state=state, observation=obs, info={})
        # the bank's observation is the state as the bank holds it (a float64 bank steps a
        # float64 model from its own values), the observation its cast to the space's dtype
        return Reset(state=state_of_observation(rows, obs, self.device), observation=obs, info={},
                     state_is_observation=True)

    # ------------------------------------------------------------------- step
    def step(
        self, snapshot: Snapshot, action: Any, discard: Optional[torch.Tensor] = None,
        previous_observation: Any = None,
    ) -> tuple[Snapshot, Transition]:
        """Advance every env one step; the returned transition's ``truncated`` includes the
        time limit. ``snapshot`` is not modified. ``discard``: see ``ModelAdapter.step``;
        ``previous_observation`` (default ``snapshot.observation``) too."""
        previous = snapshot.observation if previous_observation is None else previous_observation
        if not self._in_use.acquire(blocking=False):
            self.acquire()  # raises the error
        try:
            return self._step_locked(snapshot, action, discard, previous)
        finally:
            self._in_use.release()

    def _step_locked(self, snapshot: Snapshot, action: Any, discard, previous) -> tuple[Snapshot, Transition]:
        if self._guard_generator:  # a hook draws from the env's generator: restore it on failure
            with self.model_rng():
                record = self.adapter.step(snapshot.state, action, discard, previous)
        elif not self._swap_global:
            record = self.adapter.step(snapshot.state, action, discard, previous)
        elif self.rng_state is None:  # see _global_rng
            with _GLOBAL_RNG_LOCK:
                record = self.adapter.step(snapshot.state, action, discard, previous)
        else:  # model_rng() inlined: this runs once per step
            with _GLOBAL_RNG_LOCK:
                saved = _get_rng_state(self.device)
                _set_rng_state(self.device, self.rng_state)
                try:
                    record = self.adapter.step(snapshot.state, action, discard, previous)
                    new_state = _get_rng_state(self.device)
                finally:
                    _set_rng_state(self.device, saved)
            self.rng_state = new_state
        elapsed = snapshot.elapsed + 1
        if self.max_steps is not None:
            record.truncated = record.truncated | (elapsed >= self.max_steps)
        return Snapshot(record.state, record.observation, elapsed), record


class _Transaction:
    """:meth:`EpisodeLogic.transaction`'s context manager (a class rather than a generator:
    the exports enter one every step)."""

    __slots__ = ("logic", "saved")

    def __init__(self, logic: EpisodeLogic):
        self.logic = logic

    def __enter__(self) -> None:
        logic = self.logic
        if not logic._in_use.acquire(blocking=False):
            logic.acquire()  # raises the error
        try:
            self.saved = logic._save()
        except BaseException:
            logic._in_use.release()
            raise

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is not None:  # any exception, KeyboardInterrupt included, as ``except BaseException``
                self.logic._restore(self.saved)
        finally:
            self.logic._in_use.release()
        return False


def _seeded_rng_state(seed: int, device: torch.device) -> tuple:
    """The RNG states ``torch.manual_seed(seed)`` would give the CPU generator (and the CUDA
    generator of ``device``)."""
    cpu = torch.Generator().manual_seed(seed).get_state()
    if device.type != "cuda":
        return (cpu,)
    return cpu, torch.Generator(device=device).manual_seed(seed).get_state()


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _get_rng_state(device: torch.device) -> tuple:
    # torch.get_rng_state() is default_generator.get_state(), called here without its wrapper
    # frames: this runs twice per step of a seeded env
    if device.type != "cuda":
        return (torch.default_generator.get_state(),)
    return torch.default_generator.get_state(), torch.cuda.get_rng_state(_cuda_index(device))


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.default_generator.set_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], _cuda_index(device))


def _leading_dim(value: Any) -> int:
    if isinstance(value, Mapping) and not isinstance(value, TensorDictBase):
        return _leading_dim(next(iter(value.values())))
    return int(value.shape[0])


def _bank_device(value: Any) -> torch.device:
    if isinstance(value, Mapping) and not isinstance(value, TensorDictBase):
        return _bank_device(next(iter(value.values())))
    return value.device
