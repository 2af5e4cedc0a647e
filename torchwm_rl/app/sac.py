"""SAC in imagination with the stock TorchRL stack (continuous actions; the Pendulum demo and
``benchmarks/uncertainty.py``).

``train_sac(env, cfg)`` runs TorchRL's ``Collector`` on a batched imagined env, stores the frames
in a ``ReplayBuffer`` (``LazyTensorStorage``, seeded sampler) and optimises ``SACLoss`` (two Q
networks, learned temperature, ``SoftUpdate`` targets). Nothing here touches a real env.
Deterministic given ``cfg.seed`` on a given machine with one torch thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .runs import whole_batches


@dataclass
class SACConfig:
    seed: int = 0
    frames: int = 60_000  # imagined frames collected (upper bound)
    seconds: Optional[float] = None  # stop once training took this long (None: no limit)
    num_envs: int = 32
    steps_per_batch: int = 2  # frames per collector batch = num_envs * steps_per_batch
    updates_per_batch: int = 16
    init_random_frames: int = 2_000
    batch_size: int = 256
    hidden: int = 128
    lr: float = 3e-3
    gamma: float = 0.98
    tau: float = 0.01
    buffer_size: int = 200_000

    @property
    def frames_per_batch(self) -> int:
        return self.num_envs * self.steps_per_batch


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def build_sac_actor(obs_dim: int, act_dim: int, action_spec, hidden: int = 128):
    """A ``TanhNormal`` actor (``observation -> loc, scale -> action`` in the spec's bounds);
    returns ``(actor, net)`` where ``net`` maps observations to ``2 * act_dim`` outputs."""
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.modules import ProbabilisticActor, TanhNormal

    net = _mlp(obs_dim, 2 * act_dim, hidden)
    module = TensorDictModule(nn.Sequential(net, NormalParamExtractor()), in_keys=["observation"],
                              out_keys=["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        return_log_prob=False,
    )
    return actor, net


class _Q(nn.Module):
    """A Q network: ``(observation, action) -> value`` through one MLP."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = _mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1))


def build_sac_loss(actor, obs_dim: int, act_dim: int, action_spec, hidden: int, gamma: float, tau: float):
    """TorchRL's ``SACLoss`` for ``actor`` (twin Q networks of ``hidden`` units, learned
    temperature from 1.0, the default TD(0) value estimator with ``gamma``) and its
    ``SoftUpdate`` targets (``tau``): returns ``(loss, target_updater)``."""
    from torchrl.modules import ValueOperator
    from torchrl.objectives import SACLoss, SoftUpdate

    qvalue = ValueOperator(_Q(obs_dim, act_dim, hidden), in_keys=["observation", "action"],
                           out_keys=["state_action_value"])
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, loss_function="l2", action_spec=action_spec, alpha_init=1.0)
    loss.make_value_estimator(gamma=gamma)
    return loss, SoftUpdate(loss, tau=tau)


def train_sac(env, cfg: SACConfig, on_batch: Optional[Callable[[dict], None]] = None):
    """SAC on a batched TorchRL env (``observation`` key, Box actions). Returns
    ``(actor, net, history)``; ``history`` has one dict per window of 25 batches (and the last) with
    ``frames``, ``imagined_return`` (mean return of the episodes that ended in the window, or
    ``nan``), ``running_return`` (mean return so far of the episodes still running at its end,
    or ``nan``) and ``seconds``. ``cfg.init_random_frames`` counts in whole batches (rounded up,
    as TorchRL's collector does)."""
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers.samplers import RandomSampler
    from torchrl.envs import RewardSum, TransformedEnv

    torch.manual_seed(cfg.seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec_unbatched
    act_dim = action_spec.shape[-1]
    actor, net = build_sac_actor(obs_dim, act_dim, action_spec, cfg.hidden)

    loss_fn, target = build_sac_loss(actor, obs_dim, act_dim, action_spec, cfg.hidden, cfg.gamma, cfg.tau)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=cfg.lr)

    train_env = TransformedEnv(env, RewardSum())
    total = whole_batches(cfg.frames, cfg.frames_per_batch)
    init_random = whole_batches(cfg.init_random_frames, cfg.frames_per_batch)
    collector = Collector(train_env, actor, frames_per_batch=cfg.frames_per_batch, total_frames=total,
                          init_random_frames=init_random, auto_register_policy_transforms=False)
    g = torch.Generator().manual_seed(cfg.seed)
    buffer = ReplayBuffer(storage=LazyTensorStorage(cfg.buffer_size), sampler=RandomSampler(),
                          batch_size=cfg.batch_size, generator=g)
    history: list[dict] = []
    frames, t0 = 0, time.perf_counter()
    ended: list[torch.Tensor] = []
    try:
        for i, batch in enumerate(collector):
            frames += batch.numel()
            done = batch["next", "done"].squeeze(-1)
            ended.append(batch["next", "episode_reward"].squeeze(-1)[done])
            buffer.extend(batch.reshape(-1).select("observation", "action", ("next", "observation"),
                                                   ("next", "reward"), ("next", "done"), ("next", "terminated")))
            if frames >= init_random:
                for _ in range(cfg.updates_per_batch):
                    losses = loss_fn(buffer.sample())
                    loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    target.step()
            seconds = time.perf_counter() - t0
            last = frames >= total or (cfg.seconds is not None and seconds >= cfg.seconds)
            if (i + 1) % 25 == 0 or last:  # the last batch too: history[-1]["frames"] is the total
                done_returns = torch.cat(ended)
                ended = []
                running = batch["next", "episode_reward"][..., -1, :].squeeze(-1)[~done[..., -1]]
                record = {"frames": frames, "seconds": seconds,
                          "imagined_return": float(done_returns.mean()) if done_returns.numel() else math.nan,
                          "running_return": float(running.mean()) if running.numel() else math.nan}
                history.append(record)
                if on_batch is not None:
                    on_batch(record)
            if last:
                break
    finally:
        collector.shutdown()
    return actor, net, history
