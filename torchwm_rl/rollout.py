"""The fast path of :meth:`torchwm_rl.WorldModelEnv.rollout`.

TorchRL's ``EnvBase.rollout`` builds, checks and copies TensorDicts around every step (``step``,
``step_mdp``, ``maybe_reset``) and calls a ``TensorDictModule`` policy through its TensorDict
machinery. For an imagined env that bookkeeping costs more than a small world model's call. This
module runs the same rollout on plain ``{key: tensor}`` dicts, copies each step into ``[*B, T]``
buffers allocated at the first step (:class:`~torchwm_rl.trajectory.Trajectory`) and builds ONE
TensorDict at the end around them, computing every entry with the env's own code (``WorldModelEnv._step_entries`` /
``_reset_entries``), so the output is what ``EnvBase.rollout`` returns: same keys, shapes,
dtypes, strides, values, names and autograd graph (values that require grad are stacked as
before).

What it reproduces of TorchRL 0.14, step by step:

* start: ``env.reset(tensordict, set_state=...)`` (``auto_reset=True``) or
  ``env.maybe_reset(tensordict)``, both TorchRL's own calls;
* each step: ``td.update(policy(td))``; ``("next", ...)`` entries from the model; the next root
  is ``step_mdp`` (root minus the done keys and the reward, plus the ``"next"`` observation,
  state and done entries); then ``maybe_reset`` when any env is done: a reset of the done rows
  merged as ``_update_during_reset`` does (a full reset updates the reset keys and keeps the
  others; a partial one takes the reset rows from the reset and pads every other key's reset
  rows with zeros), without a reset after the last step;
* ``break_when_any_done=True``: no resets, stop after the first step where any env is done.

:func:`fast_rollout_applies` says when this path is taken; every other case (callbacks,
``out=``, ``break_when_all_done``, storing devices, device casting, ``set_truncated``, opaque
model states, input tensordicts with keys the env does not produce, subclasses that override
the step) goes to TorchRL's ``EnvBase.rollout``.

A plain ``TensorDictModule`` policy (no hooks, keys in and out, no method/kwargs mapping) is
called on its tensors directly, as ``TensorDictModule.forward`` would; any other policy is
called on a TensorDict built for it each step, holding what TorchRL's would hold. With a plain
module that neither reads nor writes them, the per-env scalars (reward, done flags, step
counts: ``[*B, 1]`` in the tensordict) are kept as ``[*B]`` during the loop and given their
trailing dim once, on the whole trajectory: the same values, shapes and strides.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from gymnasium import spaces as gym_spaces
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, skip_existing
from torch.nn.modules import module as _nn_module
from torchrl.envs.utils import _make_compatible_policy, _StepMDP, _update_during_reset

from .deferred import DeferredChecks, RecheckEagerly, repeats
from .env_specs import OBSERVATION_KEY
from .episode import _get_rng_state, _set_rng_state
from .trajectory import Trajectory, unsqueezed

# EnvBase.rollout's keyword defaults; the fast path takes a call only if these are unchanged
_MUST_BE_DEFAULT = {
    "callback": None,
    "actions": None,
    "auto_cast_to_device": False,
    "set_truncated": False,
    "out": None,
    "storing_device": None,
}


def env_rollout(env, max_steps: int, policy, callback, kwargs: dict, base_rollout: Callable) -> TensorDictBase:
    """:meth:`WorldModelEnv.rollout`'s body (``kwargs``: its keyword arguments; ``base_rollout``:
    ``EnvBase.rollout`` bound to ``env``). Start states given with ``auto_reset=False`` are
    completed (observation, step count, done flags they imply); the fast path runs when
    :func:`fast_rollout_applies`, with ``EnvBase.rollout``'s argument defaults, else
    ``base_rollout``. Atomic as a step: a rollout that raises leaves the streams, a pending seed
    and a held state as they were, so a retry gives the trajectory a run without the failure
    gives. Afterwards the env remembers where its envs stand (the last step's entries)."""
    held = env._held_state
    try:
        with env.logic.transaction():
            out = _front(env, max_steps, policy, callback, kwargs, base_rollout)
    except BaseException:
        env._held_state = held
        raise
    if out.batch_size[:-1] == env.batch_size and out.batch_size[-1:] != (0,):
        env._current = dict(out.get("next")[..., -1].items())  # where the envs stand now
    return out


def _front(env, max_steps: int, policy, callback, kwargs: dict, base_rollout: Callable) -> TensorDictBase:
    tensordict, auto_reset = kwargs["tensordict"], kwargs["auto_reset"]
    if tensordict is not None and not auto_reset and env._state_kind != "opaque":
        # start states from a replay buffer or an encoder: fill in the observation, step
        # count and done flags they imply (both rollout paths then see a full tensordict)
        tensordict = env._complete_start(tensordict)
        kwargs["tensordict"] = tensordict
    if not fast_rollout_applies(env, dict(kwargs, max_steps=max_steps, callback=callback)):
        return base_rollout(max_steps, policy, callback, **kwargs)
    break_when_any_done, return_contiguous = kwargs["break_when_any_done"], kwargs["return_contiguous"]
    # the argument handling of EnvBase.rollout, for the cases the fast path takes
    if break_when_any_done is None:
        break_when_any_done = True
    if return_contiguous is None:
        return_contiguous = not env._has_dynamic_specs
    if policy is not None:
        policy = _make_compatible_policy(
            policy, env.observation_spec, env=env, fast_wrap=True, trust_policy=kwargs["trust_policy"]
        )
    else:
        policy = env.rand_action
    return checked_rollout(
        env, max_steps, policy, auto_reset=auto_reset, break_when_any_done=break_when_any_done,
        return_contiguous=return_contiguous, tensordict=tensordict, set_state=kwargs["set_state"],
    )


def fast_rollout_applies(env, kwargs: dict) -> bool:
    """Whether ``env.rollout(**kwargs)`` can take the fast path (else ``EnvBase.rollout``)."""
    for key, default in _MUST_BE_DEFAULT.items():
        if kwargs.get(key, default) is not default:
            return False
    if kwargs.get("break_when_all_done"):
        return False
    if kwargs["max_steps"] < 1 or env._state_kind == "opaque" or step_mdp_keys(env)[0] is None:
        return False
    # TorchRL features that change what a step does
    if env.run_type_checks or env._post_step_mdp_hooks is not None:
        return False
    if "_compiled_step_and_maybe_reset" in env.__dict__ or env.__dict__.get("_torchrl_native_autoreset", False):
        return False
    # a subclass that changes any of the steps TorchRL's rollout goes through
    cls = type(env)
    for name in _STEP_METHODS:
        if getattr(cls, name) is not _ORIGINALS[name]:
            return False
    tensordict = kwargs.get("tensordict")
    if tensordict is not None:
        if type(tensordict) is not TensorDict or tensordict.is_shared() or tensordict.is_memmap():
            return False
        # keys the env does not produce would need step_mdp's general handling
        carried, _ = step_mdp_keys(env)
        if carried is None or not set(tensordict.keys()) <= set(carried) | {"action"}:
            return False
    if not kwargs.get("auto_reset", True) and tensordict is None:
        return False  # EnvBase.rollout raises the error
    return True


def step_mdp_keys(env) -> tuple:
    """(``{key: subtree}`` that ``step_mdp`` copies from ``"next"`` to the root, root keys it
    drops), read from the env's own ``_StepMDP``; (None, None) for a layout not handled here."""
    mdp = env._step_mdp
    if not mdp.keep_other or any(v is not None for v in mdp.exclude_from_root.values()):
        return None, None
    return dict(mdp.keys_from_next), frozenset(mdp.exclude_from_root)


def _carry(root: dict, nxt: dict, carried: dict, dropped) -> dict:
    """``step_mdp``: the next root from this step's root and ``"next"`` entries."""
    out = {k: v for k, v in root.items() if k not in dropped}
    for key, subtree in carried.items():
        value = nxt.get(key)
        if value is None:
            continue
        if subtree is not None:  # a nested model state: TorchRL's own placement of its leaves
            old = out.get(key)
            target = old.copy() if isinstance(old, TensorDictBase) and old.batch_size == value.batch_size else None
            value = _StepMDP._grab_and_place(
                subtree, value, target if target is not None else value.empty(batch_size=value.batch_size), True
            )
        out[key] = value
    return out


_STEP_METHODS = (
    "_step", "_reset", "step", "reset", "maybe_reset", "step_and_maybe_reset", "_step_and_maybe_reset",
    "_step_proc_data", "_reset_proc_data", "any_done", "_reset_entries", "_step_entries", "_pack",
    "_read_state", "_step_entries_now", "_complete_kept_rows", "_complete_start", "_assert_tensordict_shape",
    "rand_action", "_scalar_keys",
)
_ORIGINALS: dict = {}


def _register_originals(cls) -> None:
    for name in _STEP_METHODS:
        _ORIGINALS[name] = getattr(cls, name)


def fast_rollout(
    env,
    max_steps: int,
    policy: Callable,
    *,
    auto_reset: bool,
    break_when_any_done: bool,
    return_contiguous: bool,
    tensordict: Optional[TensorDictBase],
    set_state,
    checks: Optional[DeferredChecks] = None,
    record: Optional[list] = None,
) -> TensorDictBase:
    """``EnvBase.rollout`` for the cases :func:`fast_rollout_applies` accepts. ``policy`` is
    already made compatible (``_make_compatible_policy``) or is ``env.rand_action``.

    ``checks``: the steps' checks are handed to it (the adapter's ``_deferred``) and read there
    (every ``checks.every`` steps and at the end), raising
    :class:`~torchwm_rl.deferred.RecheckEagerly` when one may have failed; None: every check is
    read at its step. ``record``: the rollout's :class:`~torchwm_rl.trajectory.Trajectory` is appended to it (its
    actions and steps, for :class:`ReplayActions` and the check that a replay repeats the run,
    made only on that failure path). With ``reset_schedule="every_step"`` (a batched rollout without
    ``break_when_any_done``) the finished envs restart by a masked write (:func:`_restart_masked`),
    not after a host read of ``done.any()``.

    With a plain ``TensorDictModule`` policy that neither reads nor writes them, the per-env
    scalars (reward, done flags, step counts: ``env._scalar_keys()``) travel through the loop
    as ``[*B]`` tensors and get their trailing dim of 1 once, on the stacked trajectory (the
    same values and layout as stacking ``[*B, 1]`` steps, without five view ops per step)."""
    device = env.device
    if auto_reset:
        start = env.reset(tensordict, set_state=set_state)
    else:
        start = env.maybe_reset(tensordict)
    batch = start.batch_size
    root = dict(start.items())
    direct = _direct_call(policy, device, batch)
    scalars = env._scalar_keys()
    compact = direct is not None and not (direct.keys & scalars) and all(
        type(value) is torch.Tensor and value.shape == (*batch, 1) for key, value in root.items() if key in scalars
    )
    if compact:
        root = _squeezed(root, scalars)
    trajectory = Trajectory(batch, max_steps, direct.written if direct is not None else ("action",),
                             grow=break_when_any_done)
    masked = env.adapter.reset_schedule == "every_step" and len(batch) > 0
    adapter = env.adapter
    adapter._deferred = checks
    swept = _swept_keys(env) if checks is not None else None
    if swept is not None:
        checks.sweep_recorded(lambda start: trajectory.nonfinite_since(start, swept))
    try:
        _loop(env, max_steps, policy, direct, root, trajectory, batch, device, compact, scalars,
              break_when_any_done, masked, checks)
    except RecheckEagerly:
        trajectory.verify()  # the recorded actions are replayed: refuse any the policy wrote into afterwards
        raise
    finally:
        adapter._deferred = None
        if record is not None:
            record.append(trajectory)  # what a replay after a failed flag steps and must repeat
    trajectory.verify()
    return trajectory.stacked(device, return_contiguous, scalars if compact else frozenset())


def _swept_keys(env) -> Optional[frozenset]:
    """The ``"next"`` keys holding all that ``nan_policy="raise"`` checks in a step (the
    observation's keys, the reward and the model state), when the trajectory records all of it:
    those checks are then swept from the trajectory at each read instead of computed per step.
    None otherwise: an ensemble (its member values are not recorded), a state the env holds
    (``"opaque"``), an observation made by ``decode_fn``, another NaN policy."""
    adapter = env.adapter
    if adapter.nan_policy != "raise" or adapter.ensemble is not None or env._state_kind == "opaque" \
            or env._decode is not None:
        return None
    if not env._dict_observation:
        return frozenset((OBSERVATION_KEY, "reward", env._state_key))
    space = adapter.observation_space
    if not isinstance(space, gym_spaces.Dict):
        return None
    return frozenset((*space.spaces, "reward", env._state_key))


def _loop(env, max_steps, policy, direct, root, trajectory, batch, device, compact, scalars,
          break_when_any_done, masked, checks) -> None:
    """:func:`fast_rollout`'s steps: each step's root and ``"next"`` entries go to ``trajectory``."""
    state_kind, state_key = env._state_kind, env._state_key
    carried, dropped = step_mdp_keys(env)
    for i in range(max_steps):
        if direct is not None:
            direct(root)
        else:
            td = TensorDict(root, batch_size=batch, device=device)
            td.update(policy(td))
            root = dict(td.items())
        trajectory.own(root, i)
        state = root.get(state_key)
        if state_kind == "dict":
            state = state.to_dict()
        nxt = env._step_entries(state, root.get("elapsed_steps"), root.get("action"), batch, root, compact)
        _to_tensordict_layout(nxt, batch, device)
        trajectory.append(root, nxt, i)
        if checks is not None:
            if checks.sweep is not None and trajectory.buffers is None:  # kept as lists: no sweep of them
                checks.stop_sweeping()
            checks.step_done()
        if i == max_steps - 1:
            if checks is not None:
                checks.read()
            break
        done = nxt["done"]  # terminated | truncated (WorldModelEnv._step_entries_now)
        # The two reads of done.any() left per step, kept on purpose: (1) break_when_any_done
        # stops at the first done step; running ahead and cutting the trajectory there would call
        # the policy (and the hooks) for steps that never happened, so a policy with a state of
        # its own (an iterator of actions, a recurrent cell, a counter) would not be where a stop
        # leaves it. (2) reset_schedule="when_done" calls the reset hook only at steps where an
        # env finished: a hook drawing random numbers gives today's numbers for a seed only if
        # it is called exactly then (reset_schedule="every_step" is the read-free opt-in).
        if break_when_any_done:
            if bool(done.any()):
                if checks is not None:
                    checks.read()
                break
            root = _carry(root, nxt, carried, dropped)
            continue
        root = _carry(root, nxt, carried, dropped)
        restart = _restart_masked if masked else (_restart if bool(done.any()) else None)
        if restart is not None:
            trajectory.restarts.append(i + 1)  # the next step's root entries hold the starts
            if compact:
                root = _squeezed(restart(env, unsqueezed(root, scalars), done.unsqueeze(-1), batch, device), scalars)
            else:
                root = restart(env, root, done, batch, device)


def checked_rollout(env, max_steps: int, policy: Callable, *, auto_reset: bool, break_when_any_done: bool,
                    return_contiguous: bool, tensordict: Optional[TensorDictBase], set_state) -> TensorDictBase:
    """:func:`fast_rollout` with the env's ``check_every``: 1 reads every check at its step; otherwise
    the steps' checks are read once (every K steps, or at the end; :mod:`torchwm_rl.deferred`), and
    when one may have failed the env goes back to where the rollout started and steps the SAME
    recorded actions again (:class:`ReplayActions`), reading every check at its step, without
    calling the policy again: the same error, step and env state as a per-step check gives. A
    replay that raises nothing must repeat the first run (else a ``RuntimeError`` naming
    ``check_every=1``); one that does means the flag was a false positive, and only then is the
    rollout run once more, policy included, checking every step."""
    run = functools.partial(
        fast_rollout, env, max_steps, policy, auto_reset=auto_reset, break_when_any_done=break_when_any_done,
        return_contiguous=return_contiguous, tensordict=tensordict, set_state=set_state,
    )
    if env.adapter.check_every == 1:
        return run()
    saved, global_rng = env.logic._save(), _get_rng_state(env.device)
    # a run replaces entries of the given tensordict (maybe_reset of its done rows): the
    # replay must start from it as given (its values copied once per rollout)
    given = None if tensordict is None else tensordict.clone()
    checks, record = DeferredChecks(env.adapter.check_every), []
    try:
        return run(checks=checks, record=record)
    except Exception as err:
        if not isinstance(err, RecheckEagerly) and not checks.failed():
            raise  # an error of its own, not one a skipped check let through
        first_error = None if isinstance(err, RecheckEagerly) else err

    def back_to_the_start() -> None:
        env.logic._restore(saved)
        if given is not None:
            for key in set(tensordict.keys()) - set(given.keys()):
                del tensordict[key]
            tensordict.update(given)

    after_policy = _get_rng_state(env.device)  # the policy's own draws did happen
    back_to_the_start()
    try:
        # the actions as recorded (copies, where the steps were written in place)
        actions = record[0].actions() if record else []
        replayed = fast_rollout(env, len(actions), ReplayActions(actions), auto_reset=auto_reset,
                                break_when_any_done=break_when_any_done, return_contiguous=return_contiguous,
                                tensordict=tensordict, set_state=set_state)
    finally:
        _set_rng_state(env.device, after_policy)
    # the replay checked every step and passed: the flag was a false positive (a sum of finite
    # values that overflowed) only if the replay repeated the first run; otherwise what failed
    # there is gone (a hook drawing from a stream the env cannot put back), and returning
    # another trajectory would hide the failure
    if first_error is not None or not repeats(record[0].steps() if record else [], replayed):
        raise RuntimeError(
            f"rollout: a check read once per rollout (check_every={env.adapter.check_every}) found that a "
            "step may have failed (NaN/inf with nan_policy='raise', an action outside the space, a "
            "start with NaN/inf), but the same actions stepped again from the rollout's start, checking at "
            "every step, did not repeat the first run and raised nothing: a hook or the model draws from a "
            "random stream or keeps a state the env does not put back (its own torch.Generator, numpy's or "
            "Python's RNG, a call counter), so the failing step cannot be found again. Pass check_every=1 to "
            "check each step as it runs (or draw from the env's generator: a hook parameter `generator`)"
        ) from first_error
    # a false positive: the first run was right but not kept (its policy outputs beyond the
    # action are gone); run it once more, policy included, checking every step
    back_to_the_start()
    _set_rng_state(env.device, global_rng)
    return run()


class ReplayActions:
    """A policy that gives the recorded ``actions`` again, one per call: a rollout whose deferred
    check read True is stepped again on the same actions WITHOUT calling the user's policy a
    second time (a policy with state of its own, an iterator of actions, a counter, a recurrent
    cell, must see each step once)."""

    def __init__(self, actions: list):
        self.actions = iter(actions)

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        action = next(self.actions, None)
        if action is None:  # the replay is never longer than the run it repeats
            raise RuntimeError("rollout replay: more steps than recorded actions (a torchwm_rl bug; please report)")
        return td.set("action", action)


def _squeezed(entries: dict, scalars: frozenset) -> dict:
    """``entries`` with the per-env scalars ``[*B, 1]`` as ``[*B]`` (views)."""
    return {k: v.squeeze(-1) if k in scalars else v for k, v in entries.items()}


def _restart(env, root: dict, done: torch.Tensor, batch, device) -> dict:
    """``maybe_reset``: reset the done rows and merge them into ``root`` with TorchRL's own
    ``_update_during_reset`` (a full reset replaces the reset keys and keeps the others; a
    partial one takes the reset rows from the reset and zero-pads the other keys' rows)."""
    mask = done.reshape(batch)
    fresh = env._reset_entries(mask, batch=batch)
    fresh = TensorDict(fresh, batch_size=batch, device=device).detach()  # as WorldModelEnv._reset
    node = TensorDict(root, batch_size=batch, device=device)
    node.set("_reset", done.clone())
    return dict(_update_during_reset(fresh, node, env.reset_keys).items())


def _restart_masked(env, root: dict, done: torch.Tensor, batch, device) -> dict:
    """:func:`_restart` without reading ``done`` on the host (``reset_schedule="every_step"``):
    the reset hook computes the full batch at every step (``options["reset_mask"]`` says which
    rows are used) and the done rows are merged in with one masked write, TorchRL's partial
    rule (the reset rows from the reset, the other keys' reset rows zero-padded), also when
    every row is done."""
    mask = done.reshape(batch)
    fresh = env._reset_entries(mask, batch=batch)
    _to_tensordict_layout(fresh, batch, device)
    # TensorDict(root).where(~mask, other=TensorDict(fresh).detach(), pad=0), entry by entry on
    # the plain dicts (two TensorDicts per step cost more than the reset itself)
    out = {}
    for key, value in root.items():
        new = fresh.get(key)
        out[key] = _masked_row_write(mask, None if new is None else new.detach(), value)
    for key, new in fresh.items():
        if key not in out:
            out[key] = _masked_row_write(mask, new.detach(), None)
    return out


def _masked_row_write(mask: torch.Tensor, new: Any, old: Any) -> Any:
    """``new`` in the rows of ``mask`` (shape batch), ``old`` elsewhere; a missing side (None)
    reads 0 there (TensorDict.where's ``pad=0``)."""
    if not isinstance(new if new is not None else old, torch.Tensor):  # a nested state: a TensorDict
        if old is None:
            return new.where(mask, other=new.apply(torch.zeros_like))
        return old.where(~mask, other=new, pad=0) if new is not None else old.where(~mask, other=old.apply(
            torch.zeros_like))
    ref = new if new is not None else old
    view = mask.reshape(*mask.shape, *([1] * (ref.ndim - mask.ndim)))
    if new is None:
        return old.masked_fill(view, 0)
    if old is None:
        return new.masked_fill(~view, 0)
    return torch.where(view, new, old)


def _to_tensordict_layout(entries: dict, batch, device) -> None:
    """What ``TensorDict(entries, batch_size=batch, device=device)`` would hold, in place:
    tensors on ``device``, a dict/TensorDict model state as a TensorDict."""
    for key, value in entries.items():
        if type(value) is torch.Tensor and value.device == device:
            continue
        if isinstance(value, torch.Tensor):
            if value.device != device:
                entries[key] = value.to(device)
        else:
            entries[key] = TensorDict({key: value}, batch_size=batch, device=device).get(key)


# ------------------------------------------------------------------------------- policy
def _direct_call(policy: Any, device, batch) -> Optional[Callable[[dict], None]]:
    """A function that does what ``policy(td)`` does to a TensorDict, on a ``{key: tensor}``
    dict, for a plain ``TensorDictModule``; None for any other policy."""
    if type(policy) is not TensorDictModule:
        return None
    if policy._kwargs is not None or policy.method is not None or policy.method_kwargs or policy._get_kwargs:
        return None
    if policy.inplace is not True or skip_existing():
        return None
    if policy._forward_hooks or policy._forward_pre_hooks or policy._backward_hooks or policy._backward_pre_hooks:
        return None
    if (
        _nn_module._global_forward_hooks
        or _nn_module._global_forward_pre_hooks
        or _nn_module._global_backward_hooks
        or _nn_module._global_backward_pre_hooks
    ):
        return None
    out_keys = list(policy.out_keys_source)
    if list(policy.out_keys) != out_keys or not all(isinstance(k, str) for k in out_keys):
        return None
    in_keys = list(policy.in_keys)
    module, strict = policy.module, policy.strict
    nbatch = len(batch)

    def read(root: dict, key):
        if isinstance(key, str):
            value = root.get(key)
        else:
            value = root.get(key[0])
            for part in key[1:]:
                value = value.get(part, None) if isinstance(value, TensorDictBase) else None
        if value is None and strict:
            raise KeyError(f"key {key!r} not found in the rollout's tensordict")
        return value

    def store(root: dict, key, value) -> None:
        if not (isinstance(value, torch.Tensor) and value.device == device and value.shape[:nbatch] == batch):
            # what TensorDict.set does to anything else (conversion, device move, checks)
            holder = TensorDict(batch_size=batch, device=device)
            holder.set(key, TensorDict.from_any(value))
            value = holder.get(key)
        root[key] = value

    def call(root: dict) -> None:
        out = module(*[read(root, key) for key in in_keys])
        if out is None:
            out = ()
        if isinstance(out, (dict, TensorDictBase)) and all(key in out for key in out_keys):
            out = tuple(out.get(key) for key in out_keys)
        if not isinstance(out, tuple):
            out = (out,)
        if len(out) > len(out_keys):
            raise RuntimeError(f"There are more tensors ({len(out)=}) than out_keys ({out_keys=}).")
        if len(out_keys) > len(out):
            raise RuntimeError("There are more out_keys than tensors.")
        for key, value in zip(out_keys, out):
            if key != "_":
                store(root, key, value)

    if len(in_keys) == 1 and isinstance(in_keys[0], str) and len(out_keys) == 1 and out_keys[0] != "_":
        in_key, out_key = in_keys[0], out_keys[0]

        def call_one(root: dict) -> None:  # ``call`` for one key in, one out: the usual actor
            value = root.get(in_key)
            if value is None and strict:
                raise KeyError(f"key {in_key!r} not found in the rollout's tensordict")
            out = module(value)
            if type(out) is torch.Tensor and out.device == device and out.shape[:nbatch] == batch:
                root[out_key] = out
                return
            if isinstance(out, (dict, TensorDictBase)) and out_key in out:
                out = out.get(out_key)
            elif isinstance(out, tuple):
                if len(out) > 1:
                    raise RuntimeError(f"There are more tensors ({len(out)=}) than out_keys ({out_keys=}).")
                if not out:
                    raise RuntimeError("There are more out_keys than tensors.")
                out = out[0]
            elif out is None:
                raise RuntimeError("There are more out_keys than tensors.")
            store(root, out_key, out)

        chosen = call_one
    else:
        chosen = call
    # the top-level keys the policy reads or writes
    chosen.keys = frozenset(k if isinstance(k, str) else k[0] for k in (*in_keys, *out_keys))
    chosen.written = tuple(k for k in out_keys if k != "_")  # (out_keys are str here)
    return chosen
