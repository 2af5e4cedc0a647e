"""A learned ensemble world model of Gymnasium ``Pendulum-v1`` (continuous control).

``PendulumEnsemble`` holds ``E`` (default 5) independently initialised MLPs, evaluated together
with batched matmuls. Each member maps an observation ``(cos th, sin th, th_dot)`` and a torque
``u`` to the change of angle and angular velocity; the next observation is built from them, so
every member's prediction is a valid observation. ``forward`` returns ALL members' predictions,
``[E, *batch, 3]``, which is what ``WorldModelEnv(..., ensemble_size=E)`` expects. The reward is
Pendulum's known cost, ``-(angle_normalize(th)^2 + 0.1 th_dot^2 + 0.001 u^2)`` of the state the
step starts from (as Gymnasium computes it), given analytically like CartPole's reward.

``train(seed)`` collects real transitions from Gymnasium's ``Pendulum-v1`` (random-torque
episodes from the real reset distribution, plus single random-torque steps from states scattered
uniformly over the whole state space) and fits each member on its own bootstrap of them;
``torchwm-rl train-model pendulum`` writes ``./pendulum.safetensors`` (the bundled file is
``torchwm_rl/zoo/pendulum.safetensors``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OBS_DIM = 3
ACT_DIM = 1
MAX_TORQUE = 2.0
MAX_SPEED = 8.0
DT = 0.05
DEFAULT_MEMBERS = 5
DEFAULT_HIDDEN = 64
WEIGHTS_PATH = Path(__file__).with_name("pendulum.safetensors")


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied at once: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PendulumEnsemble(nn.Module):
    """``forward(obs [..., 3], action [..., 1]) -> next observations [E, ..., 3]`` (every member).

    Inputs are scaled to about unit range (``th_dot / 8``, ``u / 2``); each member outputs the
    normalised ``(delta th, delta th_dot)``, un-normalised with the stored ``delta_std``.
    """

    def __init__(self, members: int = DEFAULT_MEMBERS, hidden: int = DEFAULT_HIDDEN):
        super().__init__()
        self.members, self.hidden = members, hidden
        self.l1 = EnsembleLinear(members, OBS_DIM + ACT_DIM, hidden)
        self.l2 = EnsembleLinear(members, hidden, hidden)
        self.l3 = EnsembleLinear(members, hidden, 2)
        self.register_buffer("delta_std", torch.ones(2))

    def deltas(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Normalised ``(delta th, delta th_dot)`` of every member: ``[E, B, 2]`` for ``[B, ...]``."""
        u = action.float().clamp(-MAX_TORQUE, MAX_TORQUE) / MAX_TORQUE
        x = torch.cat([obs[..., :2].float(), obs[..., 2:].float() / MAX_SPEED, u], dim=-1)
        x = x.expand(self.members, *x.shape)
        h = nn.functional.silu(self.l1(x))
        h = nn.functional.silu(self.l2(h))
        return self.l3(h)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        batch = obs.shape[:-1]
        flat_obs, flat_act = obs.reshape(-1, OBS_DIM), action.reshape(-1, ACT_DIM)
        d = self.deltas(flat_obs, flat_act) * self.delta_std  # [E, B, 2]
        theta = torch.atan2(flat_obs[:, 1], flat_obs[:, 0]) + d[..., 0]
        theta_dot = (flat_obs[:, 2] + d[..., 1]).clamp(-MAX_SPEED, MAX_SPEED)
        nxt = torch.stack([torch.cos(theta), torch.sin(theta), theta_dot], dim=-1)
        return nxt.reshape(self.members, *batch, OBS_DIM)


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    return ((x + math.pi) % (2 * math.pi)) - math.pi


def cost(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Pendulum's cost of being in ``obs`` and applying ``action`` (shape ``[...]``)."""
    theta = torch.atan2(obs[..., 1], obs[..., 0])
    u = action.reshape(*obs.shape[:-1]).float().clamp(-MAX_TORQUE, MAX_TORQUE)
    return angle_normalize(theta) ** 2 + 0.1 * obs[..., 2] ** 2 + 0.001 * u**2


def reward(model, next_state, obs, action, *, prev_state) -> torch.Tensor:
    """Adapter reward: ``-cost`` of the state the step started from (Gymnasium's order)."""
    return -cost(prev_state, action)


def observation(theta_and_dot: np.ndarray) -> np.ndarray:
    """Real state ``(th, th_dot)`` -> observation ``(cos th, sin th, th_dot)``."""
    th, thdot = theta_and_dot[..., 0], theta_and_dot[..., 1]
    return np.stack([np.cos(th), np.sin(th), thdot], axis=-1)


def set_real_state(real_env, obs, model_state=None) -> None:
    """``reality_check``'s hook: put the real Pendulum in the state of observation ``obs``."""
    obs = np.asarray(obs, dtype=np.float64)
    real_env.unwrapped.state = np.array([math.atan2(obs[1], obs[0]), obs[2]])


# --------------------------------------------------------------------------------------------
# data collection and fitting (train-model)
# --------------------------------------------------------------------------------------------


def collect_transitions(n: int = 40_000, seed: int = 0, scatter: float = 0.5, policy=None):
    """Real ``(obs, action, next_obs, theta, next_theta)`` arrays from ``Pendulum-v1``.

    ``1 - scatter`` of them from 200-step episodes started by the real reset, with uniformly
    random torques (or ``policy(obs) -> torque`` when given); ``scatter`` of them single steps
    from states drawn uniformly over ``th in [-pi, pi], th_dot in [-8, 8]``.
    """
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    rng = np.random.default_rng(seed)
    env = PendulumEnv()
    env.reset(seed=seed)
    S, A, S2 = [], [], []
    n_episodes = int(round((1 - scatter) * n))
    while len(S) < n_episodes:
        env.reset(seed=int(rng.integers(2**31)))
        for _ in range(200):
            state = np.array(env.state, dtype=np.float64)
            obs = observation(state)
            a = rng.uniform(-MAX_TORQUE, MAX_TORQUE) if policy is None else float(policy(obs))
            env.step(np.array([a], dtype=np.float32))
            S.append(state)
            A.append(a)
            S2.append(np.array(env.state, dtype=np.float64))
            if len(S) >= n_episodes:
                break
    while len(S) < n:
        state = np.array([rng.uniform(-math.pi, math.pi), rng.uniform(-MAX_SPEED, MAX_SPEED)])
        env.state = state.copy()
        a = rng.uniform(-MAX_TORQUE, MAX_TORQUE)
        env.step(np.array([a], dtype=np.float32))
        S.append(state)
        A.append(a)
        S2.append(np.array(env.state, dtype=np.float64))
    env.close()
    S, A, S2 = np.array(S), np.array(A, dtype=np.float64)[:, None], np.array(S2)
    return S, A, S2


def fit(
    S: np.ndarray,
    A: np.ndarray,
    S2: np.ndarray,
    seed: int = 0,
    members: int = DEFAULT_MEMBERS,
    hidden: int = DEFAULT_HIDDEN,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 3e-3,
    verbose: bool = True,
) -> tuple[PendulumEnsemble, dict]:
    """Fit a :class:`PendulumEnsemble` on real states ``S``/``S2`` (``(th, th_dot)``) and
    torques ``A``; each member on its own bootstrap resample. Deterministic for a given seed
    (one torch thread while fitting)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs = torch.tensor(observation(S), dtype=torch.float32)
    act = torch.tensor(A, dtype=torch.float32)
    target = torch.tensor(np.stack([S2[:, 0] - S[:, 0], S2[:, 1] - S[:, 1]], -1), dtype=torch.float32)
    n = len(obs)
    perm = torch.randperm(n, generator=g)
    n_val = n // 10
    val, tr = perm[:n_val], perm[n_val:]
    model = PendulumEnsemble(members, hidden)
    model.delta_std.copy_(target[tr].std(0) + 1e-6)
    tn = target / model.delta_std
    boot = tr[torch.randint(len(tr), (members, len(tr)), generator=g)]  # [E, n_train]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
        steps = math.ceil(len(tr) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
        for epoch in range(epochs):
            order = boot[:, torch.randperm(len(tr), generator=g)]
            for i in range(steps):
                idx = order[:, i * batch_size:(i + 1) * batch_size]  # [E, b]: each member its own rows
                pred = _member_deltas(model, obs[idx], act[idx])
                loss = nn.functional.mse_loss(pred, tn[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if verbose and (epoch + 1) % 10 == 0:
                print(f"  epoch {epoch + 1:3d}/{epochs}  train mse {loss.item():.2e}  "
                      f"val mse {_val_mse(model, obs[val], act[val], tn[val]):.2e}")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    val_mse = _val_mse(model, obs[val], act[val], tn[val])
    meta = {
        "task": "Pendulum-v1",
        "format": "torchwm_rl.zoo.pendulum/1",
        "members": members,
        "hidden": hidden,
        "seed": seed,
        "n_transitions": n,
        "epochs": epochs,
        "val_mse_normalized": f"{val_mse:.3e}",
    }
    return model, meta


def _member_deltas(model: PendulumEnsemble, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``obs [E, b, 3]``, ``act [E, b, 1]``: member ``e`` on its own rows -> ``[E, b, 2]``."""
    u = act.clamp(-MAX_TORQUE, MAX_TORQUE) / MAX_TORQUE
    x = torch.cat([obs[..., :2], obs[..., 2:] / MAX_SPEED, u], dim=-1)
    h = nn.functional.silu(model.l1(x))
    h = nn.functional.silu(model.l2(h))
    return model.l3(h)


@torch.no_grad()
def _val_mse(model, obs, act, tn) -> float:
    pred = model.deltas(obs, act)  # every member on every validation row
    return float(((pred - tn) ** 2).mean())


def train(seed: int = 0, n_transitions: int = 40_000, verbose: bool = True, **kwargs: Any):
    """Collect real transitions and fit the ensemble; returns ``(model, metadata)``."""
    t0 = time.perf_counter()
    S, A, S2 = collect_transitions(n_transitions, seed)
    t_collect = time.perf_counter() - t0
    model, meta = fit(S, A, S2, seed=seed, verbose=verbose, **kwargs)
    if verbose:
        print(f"  collected {len(S)} real transitions in {t_collect:.1f}s, fitted "
              f"{meta['members']} members in {time.perf_counter() - t0 - t_collect:.1f}s; "
              f"val mse (normalised) {meta['val_mse_normalized']}")
    return model, meta


# --------------------------------------------------------------------------------------------
# loading and env construction
# --------------------------------------------------------------------------------------------


def load(path: str | Path | None = None, device: str | torch.device | None = None) -> PendulumEnsemble:
    """Load the bundled (or a given) Pendulum ensemble; an eval-mode, grad-free module."""
    from ..serialization import load_weights, read_metadata

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"Pendulum model file not found: {path}. Create it with `torchwm-rl train-model pendulum`."
        )
    sd = load_weights(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    members, _, hidden = sd["l1.weight"].shape
    model = PendulumEnsemble(int(members), int(hidden))
    model.load_state_dict(sd)
    model.metadata = meta
    model.requires_grad_(False)
    return model.eval().to(device) if device is not None else model.eval()


def reset(model, seed=None, options=None, batch_size=(), *, generator: torch.Generator) -> torch.Tensor:
    """Adapter reset: Pendulum's real reset distribution, ``th ~ U(-pi, pi)``,
    ``th_dot ~ U(-1, 1)``, from the env's own random stream."""
    n = batch_size[0] if batch_size else 1
    u = torch.rand(n, 2, generator=generator, device=generator.device) * 2 - 1
    theta, theta_dot = u[:, 0] * math.pi, u[:, 1]
    out = torch.stack([torch.cos(theta), torch.sin(theta), theta_dot], -1)
    return out if batch_size else out[0]


def transition(model: PendulumEnsemble, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Adapter transition: every member's next observation, ``[E, *batch, 3]``."""
    return model(state, action)


def make_env(
    model: PendulumEnsemble | None = None,
    batch_size: int | tuple = (),
    seed: int | None = 0,
    max_episode_steps: int = 200,
    device: str | torch.device | None = None,
    **ensemble: Any,
):
    """A :class:`torchwm_rl.WorldModelEnv` on the Pendulum ensemble.

    ``ensemble`` keywords (``propagation`` (default ``"random"``), ``uncertainty_penalty``,
    ``uncertainty_threshold``, ``halt_reward``, ``uncertainty_fn``) go to the env.
    """
    import gymnasium as gym

    from .. import WorldModelEnv

    if model is None:
        model = load(device=device)
    if isinstance(batch_size, int):
        batch_size = (batch_size,)
    ensemble.setdefault("propagation", "random")
    return WorldModelEnv(
        model,
        observation_space=gym.spaces.Box(
            np.array([-1.0, -1.0, -MAX_SPEED], np.float32), np.array([1.0, 1.0, MAX_SPEED], np.float32)
        ),
        action_space=gym.spaces.Box(-MAX_TORQUE, MAX_TORQUE, (ACT_DIM,), np.float32),
        reset_fn=reset,
        transition_fn=transition,
        reward_fn=reward,
        max_episode_steps=max_episode_steps,
        batch_size=tuple(batch_size),
        device=device,
        seed=seed,
        ensemble_size=model.members,
        **ensemble,
    )
