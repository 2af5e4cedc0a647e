"""Reality check: how well does a policy trained in a world model do in the real environment?

``reality_check(policy, world_model_env, real_env, episodes=20, horizon=None)`` runs ``policy``
(deterministically) in the model and in the real Gymnasium env **from the same start states**:
the start states come from the model env's own reset distribution, and the real env is put in each
one (``real_env.unwrapped.state = s`` by default; pass ``set_real_state`` for other envs). It
returns a :class:`RealityReport` with imagined and real returns (mean, std, gap), episode lengths,
and the model's *open-loop* prediction error by horizon step: the model is driven with the real
trajectory's actions from the real start state, and its observation is compared with the real one
at every step, which shows how model error compounds (an episode stops counting once the model
itself signals done).

Policies: a TorchRL/tensordict module reading ``"observation"`` and writing ``"action"``, a
Stable-Baselines3 model or its ``.policy`` (scored with ``predict(observation, deterministic=True)``),
or any callable ``policy(observation_tensor[B, *obs_shape]) -> action_tensor[B, ...]``. Observations
must be a single tensor (key ``"observation"``); Dict observation spaces are not supported here.
The model env is the TorchRL :class:`~torchwm_rl.WorldModelEnv`; its bare exports
(``to_sb3()``, ``to_gymnasium()``) are accepted too and read through the TorchRL env over (a fork
of) their episode logic; anything else, wrapped exports included, is refused with a ``TypeError``.

:meth:`RealityReport.plot` draws the open-loop error of a report (matplotlib, imported lazily).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["RealityReport", "reality_check", "set_state_attribute", "plot_prediction_error"]


class ReturnSummary:
    """Mean and spread of the ``imagined_returns`` / ``real_returns`` lists of a report (shared by
    :class:`RealityReport` and :class:`~torchwm_rl.pixel_reality.PixelRealityReport`)."""

    @property
    def imagined_mean_return(self) -> float:
        return float(np.mean(self.imagined_returns))

    @property
    def imagined_std_return(self) -> float:
        return float(np.std(self.imagined_returns))

    @property
    def real_mean_return(self) -> float:
        return float(np.mean(self.real_returns))

    @property
    def real_std_return(self) -> float:
        return float(np.std(self.real_returns))

    @property
    def return_gap(self) -> float:
        """Imagined minus real mean return (positive: the model flatters the policy)."""
        return self.imagined_mean_return - self.real_mean_return


@dataclass
class RealityReport(ReturnSummary):
    """Result of :func:`reality_check`; ``to_dict()`` gives a JSON-ready dict."""

    episodes: int
    horizon: int
    imagined_returns: list[float]
    real_returns: list[float]
    imagined_lengths: list[int]
    real_lengths: list[int]
    # mean L2 open-loop error at steps 1..K, over episodes where the real episode is still
    # running and the model (driven by the real actions) has not yet signalled done
    prediction_error: list[float]
    prediction_error_count: list[int]  # how many episodes contribute at each step
    start_states: list[list[float]] = field(repr=False, default_factory=list)
    # episode 0 from the same start state: observations s_0..s_T, imagined and real
    imagined_trajectory: list[list[float]] = field(repr=False, default_factory=list)
    real_trajectory: list[list[float]] = field(repr=False, default_factory=list)

    def error_at(self, step: int) -> float:
        """Mean open-loop prediction error after ``step`` model steps (nan if never reached)."""
        if 1 <= step <= len(self.prediction_error):
            return self.prediction_error[step - 1]
        return math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            imagined_mean_return=self.imagined_mean_return,
            imagined_std_return=self.imagined_std_return,
            real_mean_return=self.real_mean_return,
            real_std_return=self.real_std_return,
            return_gap=self.return_gap,
        )
        return d

    def count_at(self, step: int) -> int:
        """How many episodes :meth:`error_at` ``(step)`` is the mean over (0 if never reached)."""
        if 1 <= step <= len(self.prediction_error_count):
            return int(self.prediction_error_count[step - 1])
        return 0

    def plot(self, path=None, ax=None):
        """The open-loop model error against the horizon (:func:`plot_prediction_error`), with the
        returns in the title. Draws on ``ax`` if given, else on a new figure; writes the figure to
        ``path`` if given. Returns the axes. Needs matplotlib (imported here, not by the
        library: ``pip install matplotlib`` or ``torchwm-rl[plot]``)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("RealityReport.plot needs matplotlib: pip install matplotlib") from exc
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(7, 4.5))
        plot_prediction_error(ax, self, dict(fontsize=8))
        ax.set_title(f"Open-loop model error | return imagined {self.imagined_mean_return:.1f}, "
                     f"real {self.real_mean_return:.1f} ({self.episodes} episodes)", fontsize=9)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=110)
        if own and path is not None:
            plt.close(ax.figure)
        return ax

    def summary(self) -> str:
        """A few human-readable lines; each open-loop error says how many episodes it is the mean
        over (episodes stop counting when they end, in reality or in the model)."""
        steps = [s for s in (1, 10, 50, 100, 200, 500) if s <= len(self.prediction_error)]
        err = ", ".join(f"step {s}: {self.error_at(s):.3g} ({self.count_at(s)} of {self.episodes} episodes)"
                        for s in steps)
        return (
            f"imagined return {self.imagined_mean_return:.1f} +/- {self.imagined_std_return:.1f} | "
            f"real return {self.real_mean_return:.1f} +/- {self.real_std_return:.1f} | "
            f"gap {self.return_gap:+.1f} ({self.episodes} episodes, horizon {self.horizon})\n"
            f"open-loop prediction error (L2, real actions): {err}"
        )


def set_state_attribute(real_env, observation: np.ndarray, model_state: Any) -> None:
    """Default ``set_real_state``: ``real_env.unwrapped.state = observation`` (classic control)."""
    target = real_env.unwrapped
    if not hasattr(target, "state"):
        raise TypeError(
            f"cannot put {type(target).__name__} in a given start state: it has no `state` "
            "attribute. Pass set_real_state=fn(real_env, observation, model_state) to reality_check."
        )
    old = getattr(target, "state", None)
    if old is not None and np.shape(old) != np.shape(observation):
        # e.g. Acrobot-v1: state (4,) = two angles and velocities, observation (6,) = cos/sin of
        # the angles and the velocities. Setting one as the other fails deep in the env's step
        # (or, worse, gives a different start state): refuse here, naming the fix.
        raise ValueError(
            f"cannot put {type(target).__name__} in the model's start state with the default "
            f"set_real_state: its internal state has shape {tuple(np.shape(old))} but the observation "
            f"has shape {tuple(np.shape(observation))}, so its state is not its observation. Pass "
            "set_real_state=fn(real_env, observation, model_state) to reality_check, setting "
            "real_env.unwrapped's state from the observation (or from the model state)."
        )
    dtype = old.dtype if isinstance(old, np.ndarray) else np.float64
    target.state = np.array(observation, dtype=dtype)
    if hasattr(target, "steps_beyond_terminated"):
        target.steps_beyond_terminated = None


def _as_module(policy, env):
    """``policy`` as a tensordict module writing ``"action"`` for ``env`` (see the module doc)."""
    from tensordict.nn import TensorDictModule, TensorDictModuleBase

    if isinstance(policy, TensorDictModuleBase):
        return policy
    if _is_sb3(policy):
        policy = _SB3Predict(policy, env.full_action_spec["action"].dtype, env.device)
    elif not callable(policy):
        raise TypeError(
            f"policy must be a tensordict module (observation -> action), a Stable-Baselines3 model or "
            f"policy, or a callable observation_tensor -> action_tensor; got {type(policy)!r}"
        )
    return TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])


def _is_sb3(policy) -> bool:
    """Whether ``policy`` is a Stable-Baselines3 algorithm or policy (SB3 is only looked at when
    something already imported it: an SB3 object cannot exist otherwise)."""
    import sys

    if "stable_baselines3" not in sys.modules:
        return False
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.policies import BasePolicy

    return isinstance(policy, (BaseAlgorithm, BasePolicy))


class _SB3Predict:
    """An SB3 model or policy as ``observation tensor -> action tensor``: SB3's own
    ``predict(observation, deterministic=True)`` (its preprocessing, image transposition and
    action clipping included), on the host as SB3 does, cast to the env's action dtype and
    device. Calling the policy module itself gives ``(actions, values, log_prob)``."""

    def __init__(self, model, dtype: torch.dtype, device):
        self.model, self.dtype, self.device = model, dtype, device

    def __call__(self, observation: torch.Tensor) -> torch.Tensor:
        action, _ = self.model.predict(observation.detach().cpu().numpy(), deterministic=True)
        return torch.as_tensor(np.asarray(action)).to(device=self.device, dtype=self.dtype)


def _torchrl_env(world_model_env):
    """The TorchRL env ``reality_check`` steps: a TorchRL env as is; a bare export of a
    ``WorldModelEnv`` (``to_sb3()``, ``to_gymnasium()``, batched or not) as the TorchRL env over
    a fork of its episode logic (so the export's own episodes and streams stay untouched);
    anything else refused. A wrapped export is refused too: a wrapper may change what the
    policy sees (``VecNormalize``), which the TorchRL env would silently bypass."""
    from torchrl.envs import EnvBase

    from .episode import EpisodeLogic

    if isinstance(world_model_env, EnvBase):
        return world_model_env
    # the instance's own attribute, never one a wrapper forwards (SB3's VecEnvWrapper does)
    logic = vars(world_model_env).get("logic") if hasattr(world_model_env, "__dict__") else None
    if logic is None and _is_dummy_vec_env(world_model_env) and len(world_model_env.envs) == 1:
        logic = vars(world_model_env.envs[0]).get("logic")  # to_sb3() of an unbatched env
    if isinstance(logic, EpisodeLogic):
        from .env import WorldModelEnv

        return WorldModelEnv.from_logic(logic.fork())
    raise TypeError(
        f"world_model_env must be the TorchRL torchwm_rl.WorldModelEnv (or another TorchRL env whose state travels "
        f"in the TensorDict), got {type(world_model_env).__name__}. Pass the WorldModelEnv you exported from "
        "(the env you called .to_sb3() / .to_gymnasium() on), or WorldModelEnv.from_logic(export.logic) for a "
        "bare export; a wrapped export (VecNormalize, Gymnasium wrappers) cannot be read through."
    )


def _check_observation_shapes(env, real_env) -> None:
    """Refuse a real env whose observations have another shape than the model env's: the two
    could not be compared (and the real observations could not feed the policy)."""
    model_shape = tuple(env.observation_spec["observation"].shape[len(env.batch_size):])
    real_shape = getattr(getattr(real_env, "observation_space", None), "shape", None)
    if real_shape is not None and tuple(real_shape) != model_shape:
        raise ValueError(
            f"real_env's observations have shape {tuple(real_shape)} but the world model env's have shape "
            f"{model_shape}: reality_check compares them step by step, so they must be the same kind of "
            "observation (is real_env the environment the model was trained on?)"
        )


def _is_dummy_vec_env(env) -> bool:
    import sys

    if "stable_baselines3" not in sys.modules:
        return False
    from stable_baselines3.common.vec_env import DummyVecEnv

    return type(env) is DummyVecEnv


def _to_real_action(action: torch.Tensor, space) -> Any:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        a = action.reshape(-1)
        idx = int(a.argmax()) if a.numel() == space.n and a.numel() > 1 else int(a[0])
        return idx + int(space.start)
    return action.detach().cpu().numpy().astype(space.dtype).reshape(space.shape)


def env_time_limit(env) -> int | None:
    """The time limit of a ``WorldModelEnv`` (largest per-env value), or None."""
    limit = getattr(env, "max_episode_steps", None)
    if limit is None:
        limit = getattr(getattr(env, "logic", None), "max_steps", None)
    if limit is None:
        return None
    return int(torch.as_tensor(limit).max())


def _default_horizon(world_model_env, real_env) -> int:
    for h in (env_time_limit(world_model_env),
              getattr(getattr(real_env, "spec", None), "max_episode_steps", None)):
        if h:
            return int(h)
    return 1000


def returns_until_done(reward: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reward``/``done`` ``[B, T]``: return and length of each row's first episode."""
    done_i = done.long()
    before = (done_i.cumsum(-1) - done_i) == 0  # steps up to and including the first done
    return (reward * before).sum(-1), before.sum(-1)


@torch.no_grad()
def reality_check(
    policy,
    world_model_env,
    real_env,
    episodes: int = 20,
    horizon: int | None = None,
    seed: int | None = 0,
    set_real_state: Callable[[Any, np.ndarray, Any], None] | None = None,
) -> RealityReport:
    """Compare ``policy`` in the model and in reality from matching start states.

    Args:
        policy: a tensordict module (``"observation"`` -> ``"action"``; run under
            ``ExplorationType.DETERMINISTIC``), a Stable-Baselines3 model or its ``.policy``
            (``predict(obs, deterministic=True)``), or a callable ``observation [B, ...] -> action``.
        world_model_env: a :class:`torchwm_rl.WorldModelEnv` (or any TorchRL env whose state
            travels in the TensorDict, with an ``"observation"`` key), batch ``()`` or ``(N,)``;
            episodes run N at a time, starting from its own (seeded) resets. A bare export of
            one (``to_sb3()``, ``to_gymnasium()``) is read through the TorchRL env over a fork
            of its logic; other objects, wrapped exports included, raise ``TypeError``.
        real_env: a Gymnasium env whose state can be set (see ``set_real_state``).
        episodes: number of episodes compared.
        horizon: steps per episode at most (default: the model env's time limit, else the real
            env's ``spec.max_episode_steps``, else 1000).
        seed: seeds the model env (``set_seed``) and the real env's resets (``seed + episode``).
        set_real_state: ``fn(real_env, observation, model_state)`` putting the real env in the
            model's start state; default :func:`set_state_attribute`, which refuses (``ValueError``)
            an env whose internal state has another shape than its observation (Acrobot).

    Returns:
        a :class:`RealityReport`. Grad is disabled throughout.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = _torchrl_env(world_model_env)
    horizon = int(horizon) if horizon is not None else _default_horizon(env, real_env)
    set_real_state = set_real_state or set_state_attribute
    module = _as_module(policy, env)
    _check_observation_shapes(env, real_env)
    unbatched = len(env.batch_size) == 0
    n_env = 1 if unbatched else int(env.batch_size[0])
    if len(env.batch_size) > 1:
        raise ValueError(f"reality_check needs a 0- or 1-dim batch, got {tuple(env.batch_size)}")
    if seed is not None:
        env.set_seed(int(seed))

    imag_ret, imag_len, real_ret, real_len, starts = [], [], [], [], []
    err_sum = np.zeros(horizon)
    err_cnt = np.zeros(horizon, dtype=np.int64)
    episode = 0
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while episode < episodes:
            td0 = env.reset()
            if unbatched:
                td0 = td0.unsqueeze(0)
            take = min(n_env, episodes - episode)
            r, ln, imagined = _imagined_episodes(env, module, td0, horizon, unbatched, n_env)
            if episode == 0:
                example_imagined = imagined
            imag_ret += r[:take].tolist()
            imag_len += ln[:take].tolist()
            real = _real_episodes(env, module, real_env, td0, horizon, take, n_env, set_real_state,
                                  None if seed is None else int(seed) + episode)
            if episode == 0:
                example_real = real.example
            real_ret += real.returns
            real_len += real.lengths
            starts += real.starts
            _open_loop_errors(env, td0, real.observations, real.actions, horizon, take, unbatched, n_env,
                              err_sum, err_cnt)
            episode += take

    k = int(np.max(np.nonzero(err_cnt)[0]) + 1) if err_cnt.any() else 0
    return RealityReport(
        episodes=episodes,
        horizon=horizon,
        imagined_returns=[float(x) for x in imag_ret],
        real_returns=real_ret,
        imagined_lengths=[int(x) for x in imag_len],
        real_lengths=real_len,
        prediction_error=(err_sum[:k] / np.maximum(err_cnt[:k], 1)).tolist(),
        prediction_error_count=err_cnt[:k].tolist(),
        start_states=starts,
        imagined_trajectory=example_imagined,
        real_trajectory=example_real,
    )


def _imagined_episodes(env, module, td0, horizon: int, unbatched: bool, n_env: int) -> tuple:
    """Phase 1, the imagined closed loop from the model env's own start states ``td0``: each
    env's return and length (up to its first done) and the first env's observations."""
    roll = env.rollout(horizon, module, tensordict=_un(td0, unbatched).clone(),
                       auto_reset=False, break_when_any_done=False)
    if unbatched:
        roll = roll.unsqueeze(0)
    returns, lengths = returns_until_done(roll["next", "reward"].reshape(n_env, -1).float(),
                                           roll["next", "done"].reshape(n_env, -1))
    first = int(lengths[0])
    nxt = roll["next", "observation"][0, :first].reshape(first, -1)
    trajectory = torch.cat([td0["observation"][:1].reshape(1, -1), nxt]).tolist()
    return returns, lengths, trajectory


@dataclass
class _RealEpisodes:
    """Phase 2's result: per episode its return, length and start; the observations
    ``[N, horizon + 1, ...]`` (NaN after the end) and actions ``[N, horizon, ...]`` for phase
    3; the first episode's observations."""

    returns: list
    lengths: list
    starts: list
    observations: torch.Tensor
    actions: torch.Tensor
    example: list


def _real_episodes(env, module, real_env, td0, horizon: int, take: int, n_env: int, set_real_state,
                   first_seed: int | None) -> _RealEpisodes:
    """Phase 2, the real closed loop: episode ``i`` (of ``take``) starts ``real_env`` in the
    model's start state ``i`` (reset with ``first_seed + i``, then ``set_real_state``)."""
    from tensordict import TensorDict

    obs0 = td0["observation"]
    state0 = td0.get(getattr(env, "state_key", "model_state"), None)
    real_obs = torch.full((n_env, horizon + 1, *obs0.shape[1:]), math.nan)
    real_act = torch.zeros((n_env, horizon, *_action_shape(env)), dtype=env.full_action_spec["action"].dtype)
    returns, lengths, starts, example = [], [], [], None
    for i in range(take):
        s0 = obs0[i].cpu().numpy()
        real_env.reset(seed=None if first_seed is None else first_seed + i)
        set_real_state(real_env, s0, None if state0 is None else state0[i])
        obs = torch.as_tensor(s0, dtype=torch.float32)
        real_obs[i, 0] = obs
        total, t = 0.0, 0
        while t < horizon:
            a = module(TensorDict(observation=obs[None].to(obs0.device), batch_size=[1]))["action"][0]
            real_act[i, t] = a.cpu()
            obs_np, rew, term, trunc, _ = real_env.step(_to_real_action(a, real_env.action_space))
            obs = torch.as_tensor(np.asarray(obs_np), dtype=torch.float32)
            total += float(rew)
            t += 1
            real_obs[i, t] = obs
            if term or trunc:
                break
        if i == 0:
            example = real_obs[0, : t + 1].reshape(t + 1, -1).tolist()
        returns.append(total)
        lengths.append(t)
        starts.append(s0.tolist())
    return _RealEpisodes(returns, lengths, starts, real_obs, real_act, example)


def _open_loop_errors(env, td0, real_obs: torch.Tensor, real_act: torch.Tensor, horizon: int, take: int,
                      unbatched: bool, n_env: int, err_sum: np.ndarray, err_cnt: np.ndarray) -> None:
    """Phase 3, open loop: the model driven by the real actions from the real start states;
    adds each step's L2 error between predicted and real observations to ``err_sum`` /
    ``err_cnt``. An episode stops counting once the model itself says done: past that point
    the model is outside its domain and its error says nothing useful."""
    from torchrl.envs.utils import step_mdp

    td = _un(td0, unbatched).clone()
    model_alive = torch.ones(n_env, dtype=torch.bool)
    for t in range(horizon):
        td["action"] = _un(real_act[:, t].to(td0.device), unbatched)
        td = env.step(td)
        pred = td["next", "observation"]
        if unbatched:
            pred = pred.unsqueeze(0)
        diff = (pred.cpu().float() - real_obs[:, t + 1]).reshape(n_env, -1).norm(dim=-1)
        ok = (torch.isfinite(diff) & model_alive)[:take]
        diff = diff[:take]
        model_alive &= ~td["next", "done"].reshape(n_env).cpu()
        if not ok.any():
            break
        err_sum[t] += float(diff[ok].sum())
        err_cnt[t] += int(ok.sum())
        td = step_mdp(td)


def _action_shape(env) -> tuple:
    """Per-env action shape (without batch dims) of a TorchRL env."""
    spec = env.full_action_spec["action"]
    return tuple(spec.shape[len(env.batch_size):])


def _un(td, unbatched: bool):
    return td.squeeze(0) if unbatched else td


def plot_prediction_error(ax, report: RealityReport, legend: dict | None = None) -> None:
    """Draw ``report``'s open-loop model error on the matplotlib axes ``ax``:
    ``report.prediction_error`` (mean L2 error of the model driven by the real actions from the
    real start) against the horizon, faded where fewer than half the episodes are still counted,
    with that count on a right axis and the steps no episode reached shaded. ``legend``: keyword
    arguments of the legend. :meth:`RealityReport.plot` makes the figure around it."""
    legend = {} if legend is None else legend
    counts = list(report.prediction_error_count)
    k = len(counts)
    half = max(1, report.episodes // 2)
    if k:
        steps = range(1, k + 1)
        full = [e if c >= half else math.nan for e, c in zip(report.prediction_error, counts)]
        few = [e if c < half else math.nan for e, c in zip(report.prediction_error, counts)]
        ax.semilogy(steps, full, color="C0", label=f"mean over >= {half} of {report.episodes} episodes")
        if any(not math.isnan(x) for x in few):
            ax.semilogy(steps, few, color="C0", alpha=0.35, label=f"fewer than {half} episodes (noisy)")
        ax.set_xlim(0, report.horizon)
        count_ax = ax.twinx()
        count_ax.plot(steps, counts, color="0.5", lw=0.8, ls="--")
        count_ax.set_ylim(0, report.episodes * 1.05)
        count_ax.set_ylabel("episodes still counted", color="0.4")
        if k < report.horizon:
            ax.axvspan(k, report.horizon, color="0.92")
            ax.text((k + report.horizon) / 2, 0.5, f"steps {k + 1}-{report.horizon}:\nno episode left\n(each had ended, "
                    "in the real env\nor in the model driven open\nloop by the real actions)",
                    transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=7, color="0.3")
        handles = ax.get_legend_handles_labels()
        count_line, = count_ax.get_lines()
        ax.legend(handles[0] + [count_line], handles[1] + ["episodes still counted (right axis)"], **legend)
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel("mean L2 error vs real")
    ax.set_title("Open-loop model error (real actions, real start)")
