"""``torchwm-rl check MODULE:FACTORY``: validate a user's world-model environment.

``check_factory("pkg.mod:make_env")`` (or ``"path/to/file.py:make_env"``) imports the factory,
calls it with no arguments, and expects a :class:`torchwm_rl.WorldModelEnv` (batched or not). It
then runs, each as one named check that passes, fails (with the reason) or is skipped:

* ``torchrl-specs``: TorchRL's own ``check_env_specs`` (specs vs real reset/step data);
* ``rollout``: a ``steps``-long rollout: finite floats, reward ``[*B, T, 1]`` float, bool flags;
* ``gymnasium-checker``: Gymnasium's ``check_env`` on the ``to_gymnasium()`` export (unbatched),
  or a reset/step contract check of the Gymnasium vector export (batched);
* ``sb3-checker``: Stable-Baselines3's ``check_env`` on the export (unbatched; its warnings are
  reported as notes), or a contract check of ``to_sb3()`` (batched); skipped without SB3;
* ``parity``: the TorchRL path and the Gymnasium export, built fresh from the factory with the
  same seed and fed the same actions, produce the same observations, rewards and flags
  (across resets).

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

__all__ = ["CheckResult", "CheckReport", "check_factory", "check_env", "load_factory"]

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


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
        lines.append("OK: all checks passed" if self.ok else f"FAILED: {n_fail} check(s) failed")
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


def _error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:400]


def _run(name: str, fn: Callable[[], Optional[CheckResult]]) -> CheckResult:
    try:
        out = fn()
    except Exception as exc:  # a check failing is data, not a crash
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        return CheckResult(name, FAIL, _error(exc) + where)
    return out if out is not None else CheckResult(name, PASS)


# ------------------------------------------------------------------------------------- checks


def _check_specs(env, seed: int) -> CheckResult:
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env, seed=seed)
    return CheckResult("torchrl-specs", PASS, "check_env_specs: specs match reset/step data")


def _float_leaves(td):
    for key, value in td.items(include_nested=True, leaves_only=True):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            yield key, value


def _check_rollout(env, steps: int, seed: int) -> CheckResult:
    env.set_seed(seed)
    with torch.no_grad():
        td = env.rollout(steps, break_when_any_done=False)
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
    return CheckResult("rollout", PASS, f"{steps} random-action steps, finite, {ends} episode end(s)", notes)


def _check_gymnasium(env, seed: int) -> CheckResult:
    gym_env = env.to_gymnasium()
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
            actions = np.stack([venv.action_space.sample() for _ in range(n)])
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
    if batch:
        return [np.stack([np.asarray(space.sample()) for _ in range(batch[0])]) for _ in range(n_steps)]
    return [space.sample() for _ in range(n_steps)]


def _obs_np(td, keys):
    if keys is None:
        return td["observation"].detach().cpu().numpy()
    return {k: td[k].detach().cpu().numpy() for k in keys}


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a.astype(np.float64), b.astype(np.float64),
                                              rtol=1e-5, atol=1e-6, equal_nan=True)


def _check_parity(factory: Callable[[], Any], steps: int, seed: int) -> CheckResult:
    from gymnasium.spaces import Dict as DictSpace
    from gymnasium.vector import AutoresetMode

    trl = factory()
    gym_src = factory()
    batch = tuple(trl.batch_size)
    space = trl.adapter.observation_space
    keys = list(space.spaces) if isinstance(space, DictSpace) else None
    actions = _sample_actions(trl.adapter.action_space, steps, batch, seed)

    trl.set_seed(seed)
    it = iter(actions)

    def policy(tensordict):  # TorchRL passes the whole tensordict to a param named `tensordict`
        return tensordict.set("action", torch.as_tensor(np.asarray(next(it))))

    with torch.no_grad():
        td = trl.rollout(steps, policy, break_when_any_done=False)
    if batch:
        genv = gym_src.to_gymnasium(autoreset_mode=AutoresetMode.SAME_STEP)
        td_t = lambda t: td[:, t]  # noqa: E731
    else:
        genv = gym_src.to_gymnasium()
        td_t = lambda t: td[t]  # noqa: E731
    obs, _ = genv.reset(seed=seed)
    ends = 0
    for t, action in enumerate(actions):
        step_td = td_t(t)
        if not _close(obs, _obs_np(step_td, keys)):
            return CheckResult("parity", FAIL, f"step {t}: observation differs between the TorchRL "
                               "env and its Gymnasium export (stochastic model not seeded from the env?)")
        obs, reward, terminated, truncated, info = genv.step(action)
        nxt = step_td["next"]
        want = {
            "reward": nxt["reward"].squeeze(-1).detach().cpu().numpy(),
            "terminated": nxt["terminated"].squeeze(-1).cpu().numpy(),
            "truncated": nxt["truncated"].squeeze(-1).cpu().numpy(),
        }
        got = {"reward": reward, "terminated": terminated, "truncated": truncated}
        for k in want:
            if not _close(got[k], want[k]):
                return CheckResult("parity", FAIL, f"step {t}: {k} differs: gymnasium {got[k]} vs torchrl {want[k]}")
        done = np.asarray(terminated) | np.asarray(truncated)
        ends += int(done.sum())
        final = _obs_np(nxt, keys)
        if batch:
            for i in np.flatnonzero(done):
                fo = info["final_obs"][i]
                fi = {k: v[i] for k, v in final.items()} if keys else final[i]
                if not _close(fo, fi):
                    return CheckResult("parity", FAIL, f"step {t}, env {i}: final observation differs")
            live = ~done
            if keys is None and not _close(np.asarray(obs)[live], final[live]):
                return CheckResult("parity", FAIL, f"step {t}: next observation differs")
        else:
            if not _close(obs, final):
                return CheckResult("parity", FAIL, f"step {t}: next observation differs")
            if done:
                obs, _ = genv.reset()
    return CheckResult("parity", PASS, f"TorchRL env == Gymnasium export over {steps} steps with the same "
                       f"seed and actions ({ends} episode end(s))")


# ---------------------------------------------------------------------------------- drivers


def check_env(factory: Callable[[], Any], target: str = "<factory>", seed: int = 0,
              steps: int = 50) -> CheckReport:
    """Run every check on the envs ``factory()`` builds (see module docstring)."""
    from torchrl.envs import EnvBase

    report = CheckReport(target)
    try:
        env = factory()
    except Exception as exc:
        report.results.append(CheckResult("factory", FAIL, f"calling the factory raised {_error(exc)}"))
        return report
    if not isinstance(env, EnvBase) or not hasattr(env, "to_gymnasium") or not hasattr(env, "adapter"):
        report.results.append(CheckResult(
            "factory", FAIL, f"expected a torchwm_rl.WorldModelEnv, got {type(env).__name__}"))
        return report
    report.results.append(CheckResult(
        "factory", PASS, f"{type(env).__name__}, batch_size={tuple(env.batch_size)}, "
        f"observation_space={env.adapter.observation_space}, action_space={env.adapter.action_space}"))
    report.results.append(_run("torchrl-specs", lambda: _check_specs(env, seed)))
    report.results.append(_run("rollout", lambda: _check_rollout(factory(), steps, seed)))
    report.results.append(_run("gymnasium-checker", lambda: _check_gymnasium(factory(), seed)))
    report.results.append(_run("sb3-checker", lambda: _check_sb3(factory(), seed)))
    report.results.append(_run("parity", lambda: _check_parity(factory, steps, seed)))
    return report


def check_factory(target: str, seed: int = 0, steps: int = 50) -> CheckReport:
    """Import ``MODULE:FACTORY`` and :func:`check_env` it; import errors become a failed check."""
    try:
        factory = load_factory(target)
    except Exception as exc:
        report = CheckReport(target)
        report.results.append(CheckResult("import", FAIL, _error(exc)))
        return report
    return check_env(factory, target=target, seed=seed, steps=steps)
