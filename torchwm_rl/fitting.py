"""Fitting an ensemble dynamics model on real transitions, again and again (MBPO's model side).

The online loop of MBPO (Janner et al., 2019; mbrl-lib's configs) refits an ensemble every K
real steps while a policy learns inside it. This module is that model and its trainer, kept
independent of any one task:

* :class:`Standardizer`: a per-feature mean and std held as buffers, set from data in place;
* :class:`EnsembleDynamics`: ``E`` MLPs evaluated at once (batched matmuls) mapping an
  observation and an action to the next observation and the reward. Inputs are standardized,
  each member predicts the standardized ``(next_obs - obs, reward)``. ``forward`` returns only
  the ``elites`` (``[K, *batch, ...]``), which is what ``WorldModelEnv(..., ensemble_size=K)``
  steps (:meth:`EnsembleDynamics.env_kwargs`);
* :class:`EnsembleTrainer`: fits every member on its own bootstrap of the data, with a held-out
  split for early stopping (each member keeps its best epoch's weights) and picks the elites
  by held-out error (:class:`FitReport` says what happened).

A refit writes into the SAME module, in place (parameters, standardizers, elites): an env
built on it, and every export, collector or transformed env built on that env, steps the new
weights at its next step, with no rebuild. The number of members, elites and the layer sizes
are fixed at construction: a refit never changes the model's structure.

Deterministic given the trainer's seed (one torch thread while fitting, as ``zoo.pendulum``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


class Standardizer(nn.Module):
    """``(x - mean) / std`` per feature (the last dim), with ``mean``/``std`` as buffers.

    :meth:`fit` sets them from data **in place**, so a module that holds this standardizer
    uses the new values at its next call. A feature with (near) zero spread gets std 1."""

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        """Set ``mean``/``std`` from ``data`` ``[n, features]`` (in place)."""
        if data.ndim != 2 or data.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer.fit: expected data of shape (n, {self.mean.shape[0]}), "
                             f"got {tuple(data.shape)}")
        if data.shape[0] < 2:
            raise ValueError(f"Standardizer.fit: needs at least 2 rows, got {data.shape[0]}")
        std = data.std(0)
        self.mean.copy_(data.mean(0))
        self.std.copy_(torch.where(std > self.eps, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied at once: ``[E, B, in] -> [E, B, out]``
    (``nn.Linear``'s default initialisation, per member); with ``members`` (an index of ``M``
    members), only those: ``[M, B, in] -> [M, B, out]``, the same values as those rows of the
    full call (each member's matmul is its own)."""

    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class EnsembleDynamics(nn.Module):
    """``forward(obs [*B, D], action [*B, A]) -> {"observation": [K, *B, D], "reward": [K, *B]}``
    for the ``K`` elite members (all members until a :class:`EnsembleTrainer` picked elites).

    Args:
        obs_dim, action_dim: sizes of one (flat, float) observation and action.
        members: ensemble size ``E`` (MBPO: 7).
        elites: how many members the env steps with (MBPO: 5); ``None``: all.
        hidden, layers: the MLP's width and number of hidden layers (MBPO uses 200 x 4).
        predict_reward: also predict the reward (else the model gives only the observation and
            the env needs a ``reward_fn``).
    """

    def __init__(self, obs_dim: int, action_dim: int, members: int = 7, elites: Optional[int] = 5,
                 hidden: int = 200, layers: int = 4, predict_reward: bool = True):
        super().__init__()
        elites = members if elites is None else elites
        if not 1 <= elites <= members:
            raise ValueError(f"elites must be between 1 and members={members}, got {elites}")
        self.obs_dim, self.action_dim, self.members = obs_dim, action_dim, members
        self.predict_reward = predict_reward
        out = obs_dim + (1 if predict_reward else 0)
        sizes = [obs_dim + action_dim] + [hidden] * layers
        self.hidden = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = EnsembleLinear(members, sizes[-1], out)
        self.inputs = Standardizer(obs_dim + action_dim)
        self.targets = Standardizer(out)
        # the members forward() returns, in order; a buffer, so state_dict and .to() carry it
        self.register_buffer("elites", torch.arange(elites))

    @property
    def num_elites(self) -> int:
        return int(self.elites.shape[0])

    def members_forward(self, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Standardized inputs ``[E, B, in]`` -> every member's standardized prediction ``[E, B, out]``
        (with ``members``, an index of ``M`` members: ``[M, B, in] -> [M, B, out]``, those only)."""
        for layer in self.hidden:
            x = nn.functional.silu(layer(x, members))
        return self.head(x, members)

    def _inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.inputs(torch.cat([obs.to(self.inputs.mean.dtype), action.to(self.inputs.mean.dtype)], -1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> dict:
        batch = obs.shape[:-1]
        x = self._inputs(obs.reshape(-1, self.obs_dim), action.reshape(-1, self.action_dim))
        # only the elites are evaluated (the same values as the full ensemble's elite rows, for
        # K/E of the cost: imagined rollouts spend most of their time here)
        x = x.expand(self.num_elites, *x.shape)
        pred = self.targets.inverse(self.members_forward(x, self.elites))  # [K, B, out]
        flat_obs = obs.reshape(-1, self.obs_dim).to(pred.dtype)
        out = {"observation": (flat_obs + pred[..., : self.obs_dim]).reshape(self.num_elites, *batch, self.obs_dim)}
        if self.predict_reward:
            out["reward"] = pred[..., self.obs_dim].reshape(self.num_elites, *batch)
        return out

    def env_kwargs(self) -> dict:
        """The ``WorldModelEnv`` keywords that step this model: ``ensemble_size`` (the elites)
        and a transition that calls it on the observation (this model's state is its
        observation)."""
        return {"ensemble_size": self.num_elites, "transition_fn": _transition}


def _transition(model: EnsembleDynamics, state: torch.Tensor, action: torch.Tensor) -> dict:
    return model(state, action)


@dataclass
class FitReport:
    """What one :meth:`EnsembleTrainer.fit` did: epochs run, each member's best held-out MSE
    (standardized targets) and the elites picked (best first)."""

    epochs: int
    holdout_mse: list
    elites: list
    train_rows: int
    holdout_rows: int
    history: list = field(default_factory=list)  # mean held-out MSE after each epoch

    def summary(self) -> str:
        best = ", ".join(f"{self.holdout_mse[i]:.2e}" for i in self.elites)
        return (f"{self.epochs} epochs on {self.train_rows} rows ({self.holdout_rows} held out); "
                f"elites {self.elites} with held-out mse {best}")


class EnsembleTrainer:
    """Fits an :class:`EnsembleDynamics` in place, again at every call (MBPO's refit).

    Each member trains on its own bootstrap resample of the training split; after every epoch
    each member's held-out MSE is measured and a member's best weights so far are kept. Training
    stops when no member improved its best by more than ``improvement`` (relative) for
    ``patience`` epochs, or after ``max_epochs``. Then each member gets its best weights back,
    and the ``num_elites`` members with the lowest held-out MSE become the elites. The
    standardizers are refit on all the data given, every time (they move with the data).

    The optimizer lives as long as the trainer (its moments carry over between refits, as in
    mbrl-lib). Deterministic given ``seed`` and the sequence of calls.
    """

    def __init__(self, model: EnsembleDynamics, lr: float = 1e-3, weight_decay: float = 5e-5,
                 batch_size: int = 256, holdout: float = 0.2, max_holdout: int = 5000, patience: int = 5,
                 improvement: float = 0.01, max_epochs: Optional[int] = None, seed: int = 0):
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
        self.model = model
        self.batch_size, self.holdout, self.max_holdout = batch_size, holdout, max_holdout
        self.patience, self.improvement, self.max_epochs = patience, improvement, max_epochs
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def fit(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor,
            reward: Optional[torch.Tensor] = None) -> FitReport:
        """Refit on transitions ``obs [n, D]``, ``action [n, A]``, ``next_obs [n, D]``,
        ``reward [n]`` (needed when the model predicts the reward)."""
        model = self.model
        obs, action, next_obs = (torch.as_tensor(v).float().reshape(len(obs), -1) for v in (obs, action, next_obs))
        n = len(obs)
        for name, value, width in (("obs", obs, model.obs_dim), ("action", action, model.action_dim),
                                   ("next_obs", next_obs, model.obs_dim)):
            if value.shape != (n, width):
                raise ValueError(f"EnsembleTrainer.fit: {name}: expected shape ({n}, {width}), got {tuple(value.shape)}")
        targets = next_obs - obs
        if model.predict_reward:
            if reward is None:
                raise ValueError("EnsembleTrainer.fit: the model predicts the reward: pass reward [n]")
            reward = torch.as_tensor(reward).float().reshape(-1)
            if reward.shape != (n,):
                raise ValueError(f"EnsembleTrainer.fit: reward: expected shape ({n},), got {tuple(reward.shape)}")
            targets = torch.cat([targets, reward[:, None]], -1)
        n_hold = min(max(1, int(n * self.holdout)), self.max_holdout)
        if n - n_hold < 2:
            raise ValueError(f"EnsembleTrainer.fit: {n} transitions leave fewer than 2 to train on")
        g = self.generator
        perm = torch.randperm(n, generator=g)
        hold, train = perm[:n_hold], perm[n_hold:]
        inputs = torch.cat([obs, action], -1)
        model.inputs.fit(inputs)
        model.targets.fit(targets)
        x, y = model.inputs(inputs), model.targets(targets)
        E = model.members
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        was_training = model.training
        model.train()
        try:
            best = self._holdout_mse(x[hold], y[hold])
            best_params = [p.detach().clone() for p in self._member_params()]
            stale, epoch, history = 0, 0, []
            boot = train[torch.randint(len(train), (E, len(train)), generator=g)]  # [E, n_train]
            steps = math.ceil(len(train) / self.batch_size)
            while self.max_epochs is None or epoch < self.max_epochs:
                order = boot[:, torch.randperm(len(train), generator=g)]
                for i in range(steps):
                    idx = order[:, i * self.batch_size:(i + 1) * self.batch_size]  # each member its own rows
                    loss = nn.functional.mse_loss(model.members_forward(x[idx]), y[idx])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                epoch += 1
                mse = self._holdout_mse(x[hold], y[hold])
                history.append(float(mse.mean()))
                improved = (best - mse) / best.clamp_min(1e-12) > self.improvement
                if bool(improved.any()):
                    self._keep_best(best_params, improved)
                    best = torch.where(improved, mse, best)
                    stale = 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
            self._restore(best_params)
        finally:
            torch.set_num_threads(threads)
            model.train(was_training)
        model.eval()
        order = torch.argsort(best)
        model.elites.copy_(order[: model.num_elites])
        return FitReport(epochs=epoch, holdout_mse=best.tolist(), elites=order[: model.num_elites].tolist(),
                         train_rows=len(train), holdout_rows=n_hold, history=history)

    def _member_params(self) -> list:
        # every parameter of EnsembleDynamics leads with the member dim (EnsembleLinear)
        return list(self.model.parameters())

    @torch.no_grad()
    def _holdout_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = self.model.members_forward(x.expand(self.model.members, *x.shape))
        return ((pred - y) ** 2).mean(dim=(1, 2))  # [E]

    @torch.no_grad()
    def _keep_best(self, best_params: list, improved: torch.Tensor) -> None:
        for kept, param in zip(best_params, self._member_params()):
            kept[improved] = param[improved]

    @torch.no_grad()
    def _restore(self, best_params: list) -> None:
        for kept, param in zip(best_params, self._member_params()):
            param.copy_(kept)


def rollout_length(epoch: int, start: int = 20, end: int = 100, min_length: int = 1, max_length: int = 15) -> int:
    """MBPO's rollout-length schedule: ``min_length`` until ``epoch`` reaches ``start``, then
    linearly up to ``max_length`` at ``end``, and ``max_length`` after (mbrl-lib's
    ``rollout_schedule = [start, end, min_length, max_length]``; ``epoch`` in whatever unit
    the caller counts, e.g. thousands of real steps)."""
    if end <= start:
        raise ValueError(f"rollout_length: end ({end}) must be after start ({start})")
    frac = min(max((epoch - start) / (end - start), 0.0), 1.0)
    return int(min_length + frac * (max_length - min_length))
