"""TorchRL-native training on imagined rollouts: PPO (GAE + ClipPPOLoss) and SAC.

The world model is a TorchRL env (``WorldModelEnv`` is an ``EnvBase``): it goes straight into a
``TransformedEnv``, a ``Collector``, the advantage module and the loss, with no Gymnasium
round trip. The env is batched: N imagined envs are stepped by ONE model call per step.

    python tutorials/torchrl_ppo.py                       # PPO and SAC on vectors (timings: tutorials/README.md)
    python tutorials/torchrl_ppo.py --kinds vector image  # PPO on images too (7 to 8 min more on 2 CPU cores)
    python tutorials/torchrl_ppo.py --budget tiny         # smoke run (seconds; used by the test suite)

``--algo ppo`` trains on vector observations (and, with ``--kinds image``, on channel-first
uint8 images); ``--algo sac`` trains an off-policy SAC agent from a replay buffer on the vector
model. Each training run prints a progress line about every 10% of its frames. The world model
and its adapter functions come from ``point_mass.py`` next to this script (a stand-in for yours).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import Compose, DTypeCastTransform, ObservationNorm, RewardSum, TransformedEnv
from torchrl.envs.utils import ExplorationType, check_env_specs, set_exploration_type
from torchrl.modules import MLP, ConvNet, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss, SACLoss, SoftUpdate
from torchrl.objectives.value import GAE

from torchwm_rl import WorldModelEnv

# the stand-in for your trained world model, its adapters and spaces (tutorials/point_mass.py)
from point_mass import (
    ACTION_SPACE, IMAGE_SPACE, VECTOR_SPACE, PointMassWorldModel,
    reset_image, reset_vector, transition_image, transition_vector,
)

BUDGETS = {  # name -> (num_envs, frames per batch, total frames, PPO epochs / SAC updates per batch)
    "tiny": (8, 64, 256, 2),
    "full": (64, 2048, 100 * 2048, 8),  # total frames: whole batches, as the collector delivers them
}


# ------------------------------------------------------------------------------- environment
def make_env(kind: str = "vector", num_envs: int = 8, seed: int = 0) -> TransformedEnv:
    """A batched world-model env with TorchRL transforms on top."""
    obs_space, reset_fn, transition_fn = {
        "vector": (VECTOR_SPACE, reset_vector, transition_vector),
        "image": (IMAGE_SPACE, reset_image, transition_image),
    }[kind]
    base = WorldModelEnv(
        PointMassWorldModel(seed=0),
        observation_space=obs_space,
        action_space=ACTION_SPACE,
        reset_fn=reset_fn,
        transition_fn=transition_fn,
        max_episode_steps=50,
        batch_size=(num_envs,),
        seed=seed,
    )
    transforms = [RewardSum()]  # ("next", "episode_reward"): the running return of each env
    if kind == "image":  # uint8 [0, 255] -> float [0, 1]; the env itself keeps uint8
        transforms += [
            DTypeCastTransform(torch.uint8, torch.float32, in_keys=["observation"]),
            ObservationNorm(loc=0.0, scale=1 / 255, in_keys=["observation"], standard_normal=False),
        ]
    return TransformedEnv(base, Compose(*transforms))


def gym_wrapper_route() -> None:
    """For comparison, the Gymnasium-first route: TorchRL's GymWrapper around the Gymnasium
    export. It works, but every step crosses torch -> numpy -> torch and the env is unbatched;
    ``make_env`` above skips both."""
    from torchrl.envs import GymWrapper, StepCounter

    env = WorldModelEnv(
        PointMassWorldModel(seed=0),
        observation_space=VECTOR_SPACE,
        action_space=ACTION_SPACE,
        reset_fn=reset_vector,
        transition_fn=transition_vector,
    )
    wrapped = TransformedEnv(GymWrapper(env.to_gymnasium()), StepCounter(max_steps=50))
    check_env_specs(wrapped)
    td = wrapped.rand_step(wrapped.reset())
    print(f"GymWrapper route: observation {tuple(td['next', 'observation'].shape)}")


# ---------------------------------------------------------------------------------- networks
def encoder(kind: str) -> nn.Module:
    """Observation -> 64 features (an MLP for vectors, a small CNN for 3 x 36 x 36 images)."""
    if kind == "vector":
        return MLP(in_features=4, out_features=64, num_cells=[64], activation_class=nn.Tanh)
    # ConvNet (unlike a bare nn.Conv2d) accepts any number of leading batch dims: [envs, time, C, H, W]
    cnn = ConvNet(in_features=3, num_cells=[16, 16], kernel_sizes=[6, 3], strides=[3, 2])  # 36 -> 11 -> 5
    return nn.Sequential(cnn, nn.Linear(16 * 5 * 5, 64), nn.Tanh())


def make_actor(env, kind: str) -> ProbabilisticActor:
    net = nn.Sequential(encoder(kind), nn.Linear(64, 4), NormalParamExtractor())
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        spec=env.action_spec,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        return_log_prob=True,
    )


class Progress:
    """One line about every 10% of a run's frames: frames so far, the mean return of the
    training episodes that ended in the latest batch, and the seconds since the start."""

    def __init__(self, label: str, total_frames: int):
        self.label, self.total, self.frames, self.next = label, total_frames, 0, total_frames / 10
        self.t0 = time.perf_counter()

    def update(self, batch) -> None:
        self.frames += batch.numel()
        if self.frames < self.next and self.frames < self.total:
            return
        self.next += self.total / 10
        done = batch["next", "done"]
        ended = batch["next", "episode_reward"][done]
        ret = f"{ended.mean().item():7.2f}" if ended.numel() else "    n/a"
        print(f"  {self.label}: {self.frames:7,d}/{self.total:,} frames  training return {ret}  "
              f"{time.perf_counter() - self.t0:5.0f} s", flush=True)


def evaluate(env, actor, steps: int = 50) -> float:
    """Mean return of the episodes that end within ``steps`` deterministic steps."""
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        rollout = env.rollout(steps, actor, break_when_any_done=False)
    done = rollout["next", "done"]
    return rollout["next", "episode_reward"][done].mean().item()


# ------------------------------------------------------------------------------------- PPO
def train_ppo(kind: str, budget: str, seed: int = 0) -> tuple[float, float]:
    num_envs, frames_per_batch, total_frames, epochs = BUDGETS[budget]
    torch.manual_seed(seed)
    env = make_env(kind, num_envs, seed)
    check_env_specs(env)
    actor = make_actor(env, kind)
    critic = ValueOperator(nn.Sequential(encoder(kind), nn.Linear(64, 1)), in_keys=["observation"])
    before = evaluate(env, actor)

    collector = Collector(
        env, actor, frames_per_batch=frames_per_batch, total_frames=total_frames,
        auto_register_policy_transforms=False,  # a feed-forward policy: it needs no InitTracker
    )
    progress = Progress(f"PPO {kind}", total_frames)
    advantage = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=1e-3)
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(frames_per_batch), sampler=SamplerWithoutReplacement()
    )
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-4)
    minibatch = max(frames_per_batch // 4, 1)

    for batch in collector:  # batch: [num_envs, frames_per_batch // num_envs]
        progress.update(batch)
        for _ in range(epochs):
            with torch.no_grad():
                advantage(batch)  # writes "advantage" and "value_target"
            buffer.extend(batch.reshape(-1))
            for _ in range(frames_per_batch // minibatch):
                losses = loss_fn(buffer.sample(minibatch))
                loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optim.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
                optim.step()
        collector.update_policy_weights_()
    collector.shutdown()
    return before, evaluate(env, actor)


# ------------------------------------------------------------------------------------- SAC
def make_sac_loss(env, actor, qvalue) -> SACLoss:
    """SAC's automatic target entropy is -(action dims of ONE env): give it the unbatched action
    spec (the batched one, (num_envs, 2), would give -2 * num_envs)."""
    return SACLoss(actor, qvalue, num_qvalue_nets=2, action_spec=env.action_spec_unbatched)


def train_sac(budget: str, seed: int = 0) -> tuple[float, float]:
    num_envs, frames_per_batch, total_frames, updates = BUDGETS[budget]
    torch.manual_seed(seed)
    env = make_env("vector", num_envs, seed)
    actor = make_actor(env, "vector")
    qvalue = ValueOperator(
        MLP(in_features=4 + 2, out_features=1, num_cells=[64, 64]), in_keys=["observation", "action"]
    )
    before = evaluate(env, actor)
    loss_fn = make_sac_loss(env, actor, qvalue)
    loss_fn.make_value_estimator(gamma=0.99)
    target_update = SoftUpdate(loss_fn, tau=0.005)
    buffer = ReplayBuffer(storage=LazyTensorStorage(100_000))
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-4)
    collector = Collector(
        env, actor, frames_per_batch=frames_per_batch, total_frames=total_frames,
        init_random_frames=frames_per_batch,
        auto_register_policy_transforms=False,  # a feed-forward policy: it needs no InitTracker
    )
    progress = Progress("SAC vector", total_frames)
    for batch in collector:
        progress.update(batch)
        buffer.extend(batch.reshape(-1))
        for _ in range(updates * 4):
            losses = loss_fn(buffer.sample(128))
            loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
            optim.zero_grad()
            loss.backward()
            optim.step()
            target_update.step()
        collector.update_policy_weights_()
    collector.shutdown()
    return before, evaluate(env, actor)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--algo", nargs="+", choices=["ppo", "sac"], default=["ppo", "sac"])
    parser.add_argument("--kinds", nargs="+", choices=["vector", "image"], default=["vector"],
                        help="observations PPO trains on (default: vector; image PPO takes 7 to 8 min more on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # TorchRL logs "check_env_specs succeeded!" and "Initialized LazyTensorStorage" at INFO:
    # nothing to act on here (its warnings still show)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    gym_wrapper_route()
    if "ppo" in args.algo:
        for kind in args.kinds:
            before, after = train_ppo(kind, args.budget, args.seed)
            print(f"PPO {kind:6s} mean return before {before:8.2f} after {after:8.2f}")
    if "sac" in args.algo:
        before, after = train_sac(args.budget, args.seed)
        print(f"SAC vector mean return before {before:8.2f} after {after:8.2f}")


if __name__ == "__main__":
    main()
