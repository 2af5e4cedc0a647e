"""A learned world model of Gymnasium ``CartPole-v1`` (MBPO-style).

The network predicts only the dynamics: ``next_state = state + delta(state, one_hot(action))``,
a small MLP on normalized inputs/outputs (the normalization statistics are buffers, so they live
in the same safetensors file as the weights). Reward (1 per step, including the terminating step)
and termination (``|x| > 2.4`` or ``|theta| > 12 degrees``) are the real rules, given analytically.

``train(seed)`` collects real transitions from Gymnasium's CartPole (random, perturbed-controller
and uniformly-scattered start states, so balanced trajectories are well covered), fits the MLP and
returns the trained model; ``torchwm-rl train-model cartpole`` writes it to
``./cartpole.safetensors`` (the bundled file is ``torchwm_rl/zoo/cartpole.safetensors``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OBS_DIM = 4
N_ACTIONS = 2
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360  # 0.2094 rad, as gymnasium's CartPoleEnv
RESET_LOW, RESET_HIGH = -0.05, 0.05  # gymnasium's CartPole reset distribution (uniform, per dim)
DEFAULT_HIDDEN = 64
WEIGHTS_PATH = Path(__file__).with_name("cartpole.safetensors")

# Box that the uniformly-scattered training states are drawn from (covers the non-terminal region).
_SCATTER_HIGH = np.array([2.4, 3.0, 0.21, 3.5])


class CartPoleModel(nn.Module):
    """Dynamics MLP: ``forward(state [..., 4], action [...] int or [..., 2] one-hot) -> next_state``.

    Inputs are normalized with the stored ``state_mean``/``state_std`` buffers; the network outputs
    the normalized state delta, un-normalized with ``delta_mean``/``delta_std``. Inference is cheap:
    a batch of N states costs one small matmul chain.
    """

    def __init__(self, hidden: int = DEFAULT_HIDDEN):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.Linear(OBS_DIM + N_ACTIONS, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, OBS_DIM),
        )
        self.register_buffer("state_mean", torch.zeros(OBS_DIM))
        self.register_buffer("state_std", torch.ones(OBS_DIM))
        self.register_buffer("delta_mean", torch.zeros(OBS_DIM))
        self.register_buffer("delta_std", torch.ones(OBS_DIM))

    @staticmethod
    def one_hot(action: torch.Tensor, state_ndim: int | None = None) -> torch.Tensor:
        """Actions -> float one-hot ``[..., 2]``.

        Accepts integer indices ``[...]`` or ``[..., 1]`` and one-hot ``[..., 2]``. With
        ``state_ndim`` given, an action with one dim fewer than the state is an index batch
        (so a batch of one, ``[1]``, is not mistaken for a column).
        """
        trailing = action.ndim > 0 and (state_ndim is None or action.ndim == state_ndim)
        if trailing and action.shape[-1] == N_ACTIONS and action.is_floating_point():
            return action
        action = action.long()
        if trailing and action.shape[-1] == 1:
            action = action.squeeze(-1)
        return nn.functional.one_hot(action, N_ACTIONS).float()

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        state = state.float()
        a = self.one_hot(action, state.ndim).to(state.device)
        z = torch.cat([(state - self.state_mean) / self.state_std, a], dim=-1)
        delta = self.net(z) * self.delta_std + self.delta_mean
        return state + delta


def reward(next_state: torch.Tensor) -> torch.Tensor:
    """1.0 per step (gymnasium's CartPole also pays 1 on the terminating step)."""
    return torch.ones(next_state.shape[:-1], dtype=torch.float32, device=next_state.device)


def terminated(next_state: torch.Tensor) -> torch.Tensor:
    """The real CartPole rule: ``|x| > 2.4`` or ``|theta| > 12 deg``; bool of shape ``[...]``."""
    x = next_state[..., 0]
    theta = next_state[..., 2]
    return (x.abs() > X_THRESHOLD) | (theta.abs() > THETA_THRESHOLD)


def start_states(n: int, seed: int | None) -> torch.Tensor:
    """``n`` states from the real reset distribution ``uniform(-0.05, 0.05)^4`` (float32)."""
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return torch.rand(n, OBS_DIM, generator=g) * (RESET_HIGH - RESET_LOW) + RESET_LOW


# --------------------------------------------------------------------------------------------
# data collection and fitting (train-model)
# --------------------------------------------------------------------------------------------


def _real_env():
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return CartPoleEnv()


def _step_from(env, state: np.ndarray, action: int) -> np.ndarray:
    env.state = np.asarray(state, dtype=np.float64).copy()
    env.steps_beyond_terminated = None
    obs, *_ = env.step(int(action))
    return np.asarray(env.state, dtype=np.float64)


def collect_transitions(n: int = 60_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real ``(state, action, next_state)`` arrays (float64 states) from three sources.

    * 25% random-policy episodes (short, falling trajectories);
    * 45% episodes of a linear balancing controller with random gains and epsilon-random actions
      (long, balanced trajectories that drift towards the track edges);
    * 30% single steps from states scattered uniformly over the non-terminal box, random action.
    """
    rng = np.random.default_rng(seed)
    env = _real_env()
    env.reset(seed=seed)
    S, A, S2 = [], [], []

    def run_episodes(budget: int, controller: bool) -> None:
        count = 0
        while count < budget:
            state = rng.uniform(RESET_LOW, RESET_HIGH, OBS_DIM)
            if controller:
                gains = np.array([rng.uniform(-0.5, 1.0), rng.uniform(-0.5, 1.5),
                                  rng.uniform(5.0, 20.0), rng.uniform(0.5, 4.0)])
                eps = rng.uniform(0.0, 0.4)
            for _ in range(500):
                if controller and rng.random() > eps:
                    a = int(gains @ state > 0)
                else:
                    a = int(rng.integers(2))
                nxt = _step_from(env, state, a)
                S.append(state)
                A.append(a)
                S2.append(nxt)
                count += 1
                state = nxt
                if abs(state[0]) > X_THRESHOLD or abs(state[2]) > THETA_THRESHOLD or count >= budget:
                    break

    run_episodes(int(0.25 * n), controller=False)
    run_episodes(int(0.45 * n), controller=True)
    for _ in range(n - len(S)):
        state = rng.uniform(-_SCATTER_HIGH, _SCATTER_HIGH)
        a = int(rng.integers(2))
        S.append(state)
        A.append(a)
        S2.append(_step_from(env, state, a))
    env.close()
    return np.array(S), np.array(A, dtype=np.int64), np.array(S2)


def train(
    seed: int = 0,
    n_transitions: int = 60_000,
    epochs: int = 80,
    batch_size: int = 512,
    lr: float = 3e-3,
    hidden: int = DEFAULT_HIDDEN,
    verbose: bool = True,
) -> tuple[CartPoleModel, dict[str, Any]]:
    """Collect real transitions and fit a :class:`CartPoleModel`; returns ``(model, metadata)``.

    Deterministic for a given ``seed`` on a given machine (numpy + torch generators are seeded;
    the thread count is pinned to 1 during fitting).
    """
    t0 = time.perf_counter()
    S, A, S2 = collect_transitions(n_transitions, seed)
    t_collect = time.perf_counter() - t0
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(S, dtype=torch.float32)
    a = torch.tensor(A)
    d = torch.tensor(S2 - S, dtype=torch.float32)  # deltas in float64 then cast: exact targets
    perm = torch.randperm(len(s), generator=g)
    n_val = len(s) // 10
    val, tr = perm[:n_val], perm[n_val:]

    model = CartPoleModel(hidden)
    model.state_mean.copy_(s[tr].mean(0))
    model.state_std.copy_(s[tr].std(0) + 1e-6)
    model.delta_mean.copy_(d[tr].mean(0))
    model.delta_std.copy_(d[tr].std(0) + 1e-6)
    dn = (d - model.delta_mean) / model.delta_std

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = math.ceil(len(tr) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)

        def pred_norm(idx):
            z = torch.cat([(s[idx] - model.state_mean) / model.state_std, model.one_hot(a[idx], 2)], -1)
            return model.net(z)

        for epoch in range(epochs):
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(steps_per_epoch):
                idx = order[i * batch_size:(i + 1) * batch_size]
                loss = nn.functional.mse_loss(pred_norm(idx), dn[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if verbose and (epoch + 1) % 10 == 0:
                with torch.no_grad():
                    vl = nn.functional.mse_loss(pred_norm(val), dn[val]).item()
                print(f"  epoch {epoch + 1:3d}/{epochs}  train mse {loss.item():.2e}  val mse {vl:.2e}")
    finally:
        torch.set_num_threads(threads)

    model.eval()
    with torch.no_grad():
        val_mse = nn.functional.mse_loss(pred_norm(val), dn[val]).item()
        abs_err = (model(s[val], a[val]) - (s[val] + d[val])).abs().max(0).values
    meta = {
        "task": "CartPole-v1",
        "format": "torchwm_rl.zoo.cartpole/1",
        "hidden": hidden,
        "seed": seed,
        "n_transitions": len(s),
        "epochs": epochs,
        "val_mse_normalized": f"{val_mse:.3e}",
        "val_max_abs_error": ",".join(f"{v:.2e}" for v in abs_err.tolist()),
    }
    if verbose:
        print(f"  collected {len(s)} real transitions in {t_collect:.1f}s, "
              f"fitted in {time.perf_counter() - t0 - t_collect:.1f}s; "
              f"val max |error| per state dim: {meta['val_max_abs_error']}")
    return model, meta


# --------------------------------------------------------------------------------------------
# loading and env construction
# --------------------------------------------------------------------------------------------


def load(path: str | Path | None = None, device: str | torch.device | None = None) -> CartPoleModel:
    """Load the bundled (or a given) CartPole model file; returns an eval-mode, grad-free module."""
    from ..serialization import WeightsFormatError, load_weights, read_metadata

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"CartPole model file not found: {path}. Create it with `torchwm-rl train-model cartpole`."
        )
    sd = load_weights(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    if "hidden" not in meta and "net.0.weight" not in sd:
        raise WeightsFormatError(
            f"{path}: not a CartPole model: no 'net.0.weight' tensor (found {sorted(sd)[:5]})"
        )
    hidden = int(meta.get("hidden", sd["net.0.weight"].shape[0]))
    model = CartPoleModel(hidden)
    model.load_state_dict(sd)
    model.metadata = meta
    model.requires_grad_(False)
    return model.eval().to(device) if device is not None else model.eval()


def reset(model, seed=None, options=None, batch_size=(), *, generator: torch.Generator) -> torch.Tensor:
    """Adapter reset: states from the real reset distribution, drawn from the env's own random
    stream (``generator``: seeded by the env's seed, so resets are reproducible under it)."""
    n = batch_size[0] if batch_size else 1
    out = torch.rand(n, OBS_DIM, generator=generator, device=generator.device)
    out = out * (RESET_HIGH - RESET_LOW) + RESET_LOW
    return out if batch_size else out[0]


def transition(model: CartPoleModel, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Adapter transition: the model's next state (state == observation for CartPole)."""
    with torch.no_grad():
        return model(state, action)


def make_env(
    model: CartPoleModel | None = None,
    batch_size: int | tuple = (),
    seed: int | None = 0,
    max_episode_steps: int = 500,
    device: str | torch.device | None = None,
):
    """A :class:`torchwm_rl.WorldModelEnv` on the CartPole model (``batch_size`` ``()`` or ``N``).

    Start states come from the real reset distribution, uniform(-0.05, 0.05)^4, drawn by a
    generator seeded with the env's seed (``seed`` here, or ``env.set_seed``).
    """
    import gymnasium as gym

    from .. import WorldModelEnv

    if model is None:
        model = load(device=device)
    if isinstance(batch_size, int):
        batch_size = (batch_size,)
    batch_size = tuple(batch_size)
    return WorldModelEnv(
        model,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Discrete(N_ACTIONS),
        reset_fn=reset,
        transition_fn=transition,
        reward_fn=reward,
        terminal_fn=terminated,
        max_episode_steps=max_episode_steps,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
