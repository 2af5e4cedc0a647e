"""``torchwm-rl check MODULE:FACTORY``: validate a user's world-model environment.

``check_factory("pkg.mod:make_env")`` (or ``"path/to/file.py:make_env"``) imports the factory,
calls it ONCE with no arguments, and expects a :class:`torchwm_rl.WorldModelEnv` (batched or
not) or a Gymnasium env of this package (``torchwm_rl.gym.WorldModelEnv`` /
``GymWorldModelEnv``, or the vector export of a batched env). Every check runs on that one
built env (a Gymnasium env is checked through a TorchRL env over the same adapter and model), so
a factory that builds a model with fresh random weights is checked as it is. The checks, each
of which passes, fails (with the reason) or is skipped:

* ``model-mode``: WARN when the model holds BatchNorm / Dropout modules in training mode
  (envs stepped together then influence each other through batch statistics; see
  :mod:`torchwm_rl.train_mode`), naming them; a warning does not fail the report;
* ``torchrl-specs``: TorchRL's own ``check_env_specs`` (specs vs real reset/step data);
* ``rollout``: a ``steps``-long rollout: finite floats, reward ``[*B, T, 1]`` float, bool flags
  (by default ``steps`` runs past ``max_episode_steps``, see :func:`default_steps`, so episode
  ends and resets are exercised; a rollout with no episode end says they were not);
* ``gymnasium-checker``: Gymnasium's ``check_env`` on the Gymnasium env (unbatched), or a
  reset/step contract check of the Gymnasium vector export (batched);
* ``sb3-checker``: Stable-Baselines3's ``check_env`` on the export (unbatched; its warnings are
  reported as notes), or a contract check of ``to_sb3()`` (batched); skipped without SB3;
* ``parity``: the TorchRL path and the Gymnasium path, on the same model, seeded alike and fed
  the same actions, produce the same observations, rewards and flags (across resets). A
  mismatch is reported as the first differing step and env, with both values.

An error that stops one check usually stops the later ones too: it is reported once, at the
first check it stopped, naming the hook whose output (or call) raised it; later checks it
stopped are skipped with a pointer to that one.

:class:`CheckReport` ``.ok`` is True when no check failed; ``.format()`` prints the report.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tensordict import TensorDict

from ..convert import detach_tree, observation_row
from .progress import quiet_torchrl_info

__all__ = ["CheckResult", "CheckReport", "check_factory", "check_env", "check_parity", "default_steps",
           "load_factory"]

PASS, FAIL, SKIP, WARN = "PASS", "FAIL", "SKIP", "WARN"  # WARN: reported, does not fail the report


@dataclass
class CheckResult:
    name: str
    status: str  # PASS / FAIL / SKIP
    detail: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    target: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status != FAIL for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "results": [asdict(r) for r in self.results]}

    def format(self) -> str:
        lines = [f"torchwm-rl check {self.target}"]
        for r in self.results:
            lines.append(f"  [{r.status}] {r.name}" + (f": {r.detail}" if r.detail else ""))
            lines += [f"         note: {n}" for n in r.notes]
        n_fail = sum(r.status == FAIL for r in self.results)
        n_stopped = sum(r.status == SKIP and r.detail.startswith(_SAME) for r in self.results)
        stopped = f" ({n_stopped} more stopped by the same error)" if n_stopped else ""
        n_warn = sum(r.status == WARN for r in self.results)
        warned = f" ({n_warn} warning(s))" if n_warn else ""
        lines.append(f"OK: all checks passed{warned}" if self.ok else f"FAILED: {n_fail} check(s) failed{stopped}")
        return "\n".join(lines)


def load_factory(target: str) -> Callable[[], Any]:
    """``"pkg.module:factory"`` or ``"path/to/file.py:factory"`` -> the callable.

    The current directory is put on ``sys.path`` so local modules import as they would in a
    script. Raises ``ValueError``/``ImportError``/``AttributeError`` with a clear message.
    """
    if ":" not in target:
        raise ValueError(f"expected MODULE:FACTORY (e.g. my_envs:make_env), got {target!r}")
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:FACTORY (e.g. my_envs:make_env), got {target!r}")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ImportError(f"no such file: {path}")
        spec = importlib.util.spec_from_file_location(f"_torchwm_check_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise TypeError(f"{target} is a {type(factory).__name__}, not a callable factory")
    return factory


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _note(message: Any) -> str:
    return _ANSI.sub("", str(message)).strip().splitlines()[0][:200] if str(message).strip() else ""


# What the user's code may raise that must become a FAIL, never a pass or an escape: a module
# that calls sys.exit(0) at import (or argparse's parse_args() failing) would otherwise end the
# check with exit code 0 having checked nothing.
_USER_FAILURES = (Exception, SystemExit, KeyboardInterrupt)


def _error(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (f"SystemExit({exc.code!r}): the code called sys.exit() (argparse's parse_args() does too); "
                "keep script code under `if __name__ == '__main__':`")
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the code under check"
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:400]


_SAME = "stopped by the same error as"
_PACKAGE_DIR = Path(__file__).resolve().parent
_HOOK_ATTRS = ("reset_hook", "transition_hook", "reward_hook", "terminal_hook", "render_hook", "action_hook")


class _HookTracker:
    """Records which of the adapter's hooks ran last, so that an error raised while checking
    its output names that hook (``reward_fn``, ``transition_fn``, ...) instead of the line of
    torchwm-rl that detected it. Installed for the duration of the checks, then removed."""

    def __init__(self, adapter: Any):
        self.adapter, self.saved, self.last = adapter, {}, None

    def __enter__(self) -> "_HookTracker":
        for attr in _HOOK_ATTRS:
            hook = getattr(self.adapter, attr, None)
            if hook is not None and callable(hook):
                self.saved[attr] = hook
                setattr(self.adapter, attr, self._wrap(hook))
        # a new reset or step call: no hook has run yet. A subclass rather than instance
        # attributes, so that the adapters of exports forked during the checks (copies of this
        # one, EpisodeLogic.fork) run their own reset/step, tracked as well
        tracker, cls = self, type(self.adapter)

        class Tracked(cls):
            def reset(self, *args, **kwargs):
                tracker.last = None
                return super().reset(*args, **kwargs)

            def step(self, *args, **kwargs):
                tracker.last = None
                return super().step(*args, **kwargs)

        self.saved_class = cls
        self.adapter.__class__ = Tracked
        return self

    def _wrap(self, hook: Any) -> Callable:
        tracker, name = self, str(getattr(hook, "name", "hook"))

        class Tracked:
            def __getattr__(self, item):  # the hook's own attributes (name, plan, ...)
                return getattr(hook, item)

            def __call__(self, *args, **kwargs):
                tracker.last = name
                return hook(*args, **kwargs)

        return Tracked()

    def __exit__(self, *exc) -> None:
        for attr, hook in self.saved.items():
            setattr(self.adapter, attr, hook)
        self.adapter.__class__ = self.saved_class


def _user_frame(exc: BaseException) -> Optional[str]:
    """``file.py:line in func`` of the innermost traceback frame in the user's own code."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if (_PACKAGE_DIR in path.parents or "site-packages" in path.parts or "dist-packages" in path.parts
                or path.is_relative_to(Path(traceback.__file__).resolve().parent)):
            continue
        found = f"{path.name}:{frame.lineno} in {frame.name}"
    return found


def _run(name: str, fn: Callable[[], Optional[CheckResult]], tracker: Optional[_HookTracker] = None,
         seen: Optional[dict] = None) -> CheckResult:
    """Run one check; an exception becomes a FAIL naming the hook that raised it (or whose
    output was refused), or, when an earlier check already failed with the same error, a SKIP
    pointing to it."""
    if tracker is not None:
        tracker.last = None
    try:
        out = fn()
    except _USER_FAILURES as exc:  # a check failing is data, not a crash
        message = _error(exc)
        if seen is not None and message in seen:
            return CheckResult(name, SKIP, f"{_SAME} {seen[message]} (above)")
        if seen is not None:
            seen[message] = name
        where = []
        hook = tracker.last if tracker is not None else None
        if hook and hook not in message:
            where.append(f"hook: {hook}")
        user = _user_frame(exc)
        if user:
            where.append(f"raised at {user}")
        return CheckResult(name, FAIL, message + (f" [{'; '.join(where)}]" if where else ""))
    return out if out is not None else CheckResult(name, PASS)


# ------------------------------------------------------------------------------------- checks


def _check_model_mode(env) -> CheckResult:
    from ..train_mode import modules_in_training, train_mode_message

    found = modules_in_training(env.adapter.model)
    if found:
        return CheckResult("model-mode", WARN, train_mode_message(found))
    return CheckResult("model-mode", PASS, "no BatchNorm/Dropout module in training mode")


def _check_specs(env, seed: int) -> CheckResult:
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env, seed=seed)
    return CheckResult("torchrl-specs", PASS, "check_env_specs: specs match reset/step data")


def _float_leaves(td):
    for key, value in td.items(include_nested=True, leaves_only=True):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            yield key, value


def _check_rollout(env, steps: int, seed: int) -> CheckResult:
    # the random actions come from the action space seeded with ``seed`` (as the parity check's),
    # not from the global torch RNG: the same seed gives the same report
    env.set_seed(seed)
    policy = _replaying(_sample_actions(env.adapter.action_space, steps, tuple(env.batch_size), seed))
    with torch.no_grad():
        td = env.rollout(steps, policy, break_when_any_done=False)
    batch = tuple(env.batch_size)
    bad = [str(k) for k, v in _float_leaves(td) if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"non-finite values (NaN/inf) in {bad} during a random-action rollout")
    reward = td["next", "reward"]
    if tuple(reward.shape) != (*batch, steps, 1) or not reward.is_floating_point():
        raise ValueError(f"reward: expected float [*batch, T, 1] = {(*batch, steps, 1)}, "
                         f"got {reward.dtype} {tuple(reward.shape)}")
    for flag in ("done", "terminated", "truncated"):
        value = td["next", flag]
        if value.dtype != torch.bool or tuple(value.shape) != (*batch, steps, 1):
            raise ValueError(f"{flag}: expected bool {(*batch, steps, 1)}, got {value.dtype} {tuple(value.shape)}")
    ends = int(td["next", "done"].sum())
    grad = [str(k) for k, v in _float_leaves(td) if v.requires_grad]
    notes = [f"tensors carry autograd graphs under no_grad: {grad}"] if grad else []
    detail = f"{steps} random-action steps, finite, {ends} episode end(s)"
    if not ends:
        detail += f"; {_no_ends(env, steps)}"
    return CheckResult("rollout", PASS, detail, notes)


MIN_STEPS, MAX_STEPS = 50, 1000  # bounds of the default rollout length (default_steps)


def default_steps(env) -> int:
    """The rollout / parity length when none is given: past the env's time limit (its largest
    ``max_episode_steps`` + 10, so that the checks see episode ends, the resets after them and
    a few steps of the new episodes), at least ``MIN_STEPS`` and at most ``MAX_STEPS``;
    ``MIN_STEPS`` for an env without a time limit."""
    limit = env.logic.max_steps
    if limit is None:
        return MIN_STEPS
    return max(MIN_STEPS, min(int(limit.max()) + 10, MAX_STEPS))


def _no_ends(env, steps: int) -> str:
    """What a rollout with no episode end did not check, and the --steps that would."""
    limit = env.logic.max_steps
    if limit is None:
        return ("resets and autoreset were NOT exercised (no episode terminated and the env has no "
                "max_episode_steps); run with more --steps, or a time limit, to check them")
    return (f"resets and autoreset were NOT exercised (max_episode_steps={int(limit.max())}); "
            f"run with --steps {int(limit.max()) + 10} to check them")


def _check_gymnasium(env, seed: int, built: Any = None) -> CheckResult:
    from ..gym import GymWorldModelEnv

    # the user's own Gymnasium env when the factory returned one, else the export
    gym_env = built if isinstance(built, GymWorldModelEnv) else env.to_gymnasium()
    if env.batch_size:
        return _vector_contract("gymnasium-checker", gym_env, seed)
    from gymnasium.utils.env_checker import check_env as gym_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(gym_env, skip_render_check=True)
    notes = sorted({_note(w.message) for w in caught} - {""})
    return CheckResult("gymnasium-checker", PASS, "gymnasium.utils.env_checker.check_env", notes)


def _vector_contract(name: str, venv, seed: int) -> CheckResult:
    n = venv.num_envs
    obs, info = venv.reset(seed=seed)
    if not venv.observation_space.contains(obs):
        raise ValueError(f"vector reset observation not in {venv.observation_space}")
    if not isinstance(info, dict):
        raise TypeError(f"vector reset info must be a dict, got {type(info).__name__}")
    venv.action_space.seed(seed)
    for _ in range(5):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        if not venv.observation_space.contains(obs):
            raise ValueError(f"vector step observation not in {venv.observation_space}")
        for label, arr, kind in (("reward", reward, "f"), ("terminated", terminated, "b"),
                                 ("truncated", truncated, "b")):
            arr = np.asarray(arr)
            if arr.shape != (n,) or arr.dtype.kind != kind:
                raise ValueError(f"vector step {label}: expected shape ({n},) kind {kind!r}, "
                                 f"got {arr.dtype} {arr.shape}")
        if not np.isfinite(reward).all():
            raise ValueError("vector step reward is not finite")
    return CheckResult(name, PASS, f"Gymnasium vector env contract (num_envs={n}): reset/step types, "
                       "shapes and spaces (Gymnasium has no vector-env checker)")


def _check_sb3(env, seed: int) -> CheckResult:
    if importlib.util.find_spec("stable_baselines3") is None:
        return CheckResult("sb3-checker", SKIP, "stable-baselines3 not installed (pip install 'torchwm-rl[sb3]')")
    if env.batch_size:
        venv = env.to_sb3()
        venv.seed(seed)
        obs = venv.reset()
        n = venv.num_envs
        for _ in range(5):
            actions = _stack_rows([venv.action_space.sample() for _ in range(n)])  # a Dict space key by key
            obs, rewards, dones, infos = venv.step(actions)
            if np.asarray(rewards).shape != (n,) or np.asarray(dones).shape != (n,) or len(infos) != n:
                raise ValueError("SB3 VecEnv step must return rewards/dones of shape (num_envs,) "
                                 "and num_envs infos")
        return CheckResult("sb3-checker", PASS, f"SB3 VecEnv contract of to_sb3() (num_envs={n})")
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.to_gymnasium(), warn=True)
    notes = sorted({_note(w.message) for w in caught} - {""})
    return CheckResult("sb3-checker", PASS, "stable_baselines3.common.env_checker.check_env", notes)


def _sample_actions(space, n_steps: int, batch: tuple, seed: int) -> list:
    space.seed(seed)
    if batch:  # a Dict space's samples stacked key by key
        return [_stack_rows([space.sample() for _ in range(batch[0])]) for _ in range(n_steps)]
    return [space.sample() for _ in range(n_steps)]


def _replaying(actions: list) -> Callable:
    """A TorchRL policy that writes ``actions`` (numpy, one per step) in turn as ``"action"``."""
    it = iter(actions)

    def policy(tensordict):  # TorchRL passes the whole tensordict to a param named `tensordict`
        return tensordict.set("action", _as_torch(next(it), tensordict.batch_size))

    return policy


def _as_torch(action: Any, batch) -> Any:
    """A sampled action as the TorchRL env takes it (a Dict space's as a TensorDict)."""
    if isinstance(action, dict):
        return TensorDict({k: _as_torch(v, batch) for k, v in action.items()}, batch_size=batch)
    return torch.as_tensor(np.asarray(action))


def _obs_np(td, keys):
    if keys is None:
        return td["observation"].detach().cpu().numpy()
    return {k: detach_tree(td[k]) for k in keys}  # a nested Dict space's TensorDict: a dict


def _stack_rows(rows: list) -> Any:
    """Per-env observations (nested dicts for Dict spaces) stacked into one batched one."""
    if isinstance(rows[0], dict):
        return {k: _stack_rows([r[k] for r in rows]) for k in rows[0]}
    return np.stack(rows)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a.astype(np.float64), b.astype(np.float64),
                                              rtol=1e-5, atol=1e-6, equal_nan=True)


def _show(value: Any) -> str:
    return np.array2string(np.asarray(value), precision=6, threshold=8, edgeitems=3, separator=", ")


def _diff(what: str, t: int, gym_value: Any, trl_value: Any, batched: bool,
          rows: Optional[np.ndarray] = None) -> Optional[str]:
    """None when the two paths agree; else one short line: the first differing env (batched),
    the two values, and how many envs differ at this step. ``rows`` limits the comparison to
    some envs (a bool mask)."""
    if isinstance(gym_value, dict):
        for k in gym_value:
            found = _diff(f"{what}[{k!r}]", t, gym_value[k], trl_value[k], batched, rows)
            if found:
                return found
        return None
    a, b = np.asarray(gym_value), np.asarray(trl_value)
    if a.shape != b.shape:
        return f"step {t}: {what} shapes differ: Gymnasium {a.shape} vs TorchRL {b.shape}"
    if not batched:
        return None if _close(a, b) else f"step {t}: {what} differs: Gymnasium {_show(a)} vs TorchRL {_show(b)}"
    n = a.shape[0]
    rows = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    bad = [i for i in np.flatnonzero(rows) if not _close(a[i], b[i])]
    if not bad:
        return None
    i = bad[0]
    return (f"step {t}, env {i}: {what} differs: Gymnasium {_show(a[i])} vs TorchRL {_show(b[i])} "
            f"({len(bad)} of {n} envs differ at this step)")


def _check_parity(trl, steps: int, seed: int) -> CheckResult:
    """The TorchRL env and its Gymnasium export (one adapter, one model), seeded alike and fed
    the same actions, must produce the same numbers."""
    from gymnasium.spaces import Dict as DictSpace
    from gymnasium.vector import AutoresetMode

    batch = tuple(trl.batch_size)
    space = trl.adapter.observation_space
    keys = list(space.spaces) if isinstance(space, DictSpace) else None
    actions = _sample_actions(trl.adapter.action_space, steps, batch, seed)

    trl.set_seed(seed)
    with torch.no_grad():
        td = trl.rollout(steps, _replaying(actions), break_when_any_done=False)
    if batch:
        genv = trl.to_gymnasium(autoreset_mode=AutoresetMode.SAME_STEP)
        td_t = lambda t: td[:, t]  # noqa: E731
    else:
        genv = trl.to_gymnasium()
        td_t = lambda t: td[t]  # noqa: E731
    hint = " (a stochastic model that does not draw from the env's seeded torch RNG gives this)"
    obs, _ = genv.reset(seed=seed)
    ends = 0
    for t, action in enumerate(actions):
        step_td = td_t(t)
        found = _diff("observation", t, obs, _obs_np(step_td, keys), bool(batch))
        if found:
            return CheckResult("parity", FAIL, found + hint)
        obs, reward, terminated, truncated, info = genv.step(action)
        nxt = step_td["next"]
        for name, got in (("reward", reward), ("terminated", terminated), ("truncated", truncated)):
            want = nxt[name].squeeze(-1).detach().cpu().numpy()
            found = _diff(name, t, got, want, bool(batch))
            if found:
                return CheckResult("parity", FAIL, found + hint)
        done = np.asarray(terminated) | np.asarray(truncated)
        ends += int(done.sum())
        final = _obs_np(nxt, keys)
        if batch:
            if done.any():
                final_obs = info["final_obs"]
                stacked = _stack_rows([final_obs[i] if done[i] else observation_row(final, i) for i in range(len(done))])
                found = _diff("final observation", t, stacked, final, True, rows=done)
                if found:
                    return CheckResult("parity", FAIL, found + hint)
            found = _diff("next observation", t, obs, final, True, rows=~done)
        else:
            found = _diff("next observation", t, obs, final, False)
            if done and not found:
                obs, _ = genv.reset()
        if found:
            return CheckResult("parity", FAIL, found + hint)
    no_ends = "" if ends else f"; {_no_ends(trl, steps)}"
    return CheckResult("parity", PASS, f"TorchRL env == Gymnasium export over {steps} steps with the same "
                       f"seed and actions ({ends} episode end(s)){no_ends}")


def check_parity(env, steps: int = 50, seed: int = 0) -> CheckResult:
    """The ``parity`` check of :func:`check_env` on its own: roll the TorchRL env ``env`` (a
    ``torchwm_rl.WorldModelEnv``, batched or not) out for ``steps`` steps of actions sampled from
    its action space with ``seed``, step its Gymnasium export (the vector export, SAME_STEP
    autoreset, when batched) with the same seed and actions, and compare observations, rewards
    and flags (across resets). Returns the :class:`CheckResult` (``status`` "PASS", or "FAIL"
    with the first differing step and env); an error raised by the env propagates."""
    return _check_parity(env, steps, seed)


# ---------------------------------------------------------------------------------- drivers


def _torchrl_env(built: Any):
    """The TorchRL env to check for what a factory returned: a ``torchwm_rl.WorldModelEnv`` as
    is; a Gymnasium env of this package (single or vector) through a TorchRL env over the same
    episode logic (same adapter, same model). Anything else: ``TypeError``."""
    from ..env import WorldModelEnv
    from ..gym import GymVectorWorldModelEnv, GymWorldModelEnv

    if isinstance(built, WorldModelEnv):
        return built
    if isinstance(built, (GymWorldModelEnv, GymVectorWorldModelEnv)):
        return WorldModelEnv.from_logic(built.logic)
    raise TypeError(f"expected a torchwm_rl.WorldModelEnv or a torchwm_rl.gym env (WorldModelEnv / "
                    f"GymWorldModelEnv, or the vector export of a batched env), got {type(built).__name__}")


def check_env(factory: Callable[[], Any], target: str = "<factory>", seed: int = 0,
              steps: Optional[int] = None) -> CheckReport:
    """Build ``factory()`` once and run every check on it (see module docstring); ``steps``:
    the rollout / parity length, by default :func:`default_steps` (past the time limit)."""
    report = CheckReport(target)
    try:
        built = factory()
    except _USER_FAILURES as exc:
        report.results.append(CheckResult("factory", FAIL, f"calling the factory raised {_error(exc)}"))
        return report
    try:
        env = _torchrl_env(built)
    except TypeError as exc:
        report.results.append(CheckResult("factory", FAIL, str(exc)))
        return report
    kind = type(built).__name__ if built is env else f"{type(built).__module__}.{type(built).__name__}"
    report.results.append(CheckResult(
        "factory", PASS, f"{kind}, batch_size={tuple(env.batch_size)}, "
        f"observation_space={env.adapter.observation_space}, action_space={env.adapter.action_space}"))
    # how each hook was bound at construction (which argument each parameter receives)
    hooks = CheckResult("hooks", PASS, "bound as below", notes=env.adapter.describe_bindings())
    report.results.append(hooks)
    report.results.append(_check_model_mode(env))
    steps = default_steps(env) if steps is None else steps
    checks = [
        ("torchrl-specs", lambda: _check_specs(env, seed)),
        ("rollout", lambda: _check_rollout(env, steps, seed)),
        ("gymnasium-checker", lambda: _check_gymnasium(env, seed, built)),
        ("sb3-checker", lambda: _check_sb3(env, seed)),
        ("parity", lambda: _check_parity(env, steps, seed)),
    ]
    seen: dict = {}
    with quiet_torchrl_info(), _HookTracker(env.adapter) as tracker:
        for name, fn in checks:
            report.results.append(_run(name, fn, tracker, seen))
    # after the steps: whether an explicit reward_fn / terminal_fn is in effect or overridden
    # by the transition's own value (never called)
    hooks.notes = env.adapter.describe_bindings()
    return report


def check_factory(target: str, seed: int = 0, steps: Optional[int] = None) -> CheckReport:
    """Import ``MODULE:FACTORY`` and :func:`check_env` it; import errors become a failed check."""
    try:
        factory = load_factory(target)
    except _USER_FAILURES as exc:
        report = CheckReport(target)
        report.results.append(CheckResult("import", FAIL, _error(exc)))
        return report
    return check_env(factory, target=target, seed=seed, steps=steps)


def command(args, started: float) -> int:
    """``torchwm-rl check`` with the parsed ``args``: prints the report (one JSON line with
    ``--json``); exit code 1 when a check failed. ``started`` (the command's start) is not used."""
    import json

    report = check_factory(args.target, seed=args.seed, steps=args.steps)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0 if report.ok else 1
