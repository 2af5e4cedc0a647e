"""TorchRL-native training on imagined rollouts: PPO (GAE + ClipPPOLoss) and SAC.

The world model is a TorchRL env (``WorldModelEnv`` is an ``EnvBase``): it goes straight into a
``TransformedEnv``, a ``Collector``, the advantage module and the loss, with no Gymnasium
round trip. The env is batched: N imagined envs are stepped by ONE model call per step.

    python tutorials/torchrl_ppo.py                 # full budget (a few minutes on a laptop CPU)
    python tutorials/torchrl_ppo.py --budget tiny   # smoke run (seconds; used by the test suite)

``--algo ppo`` trains on vector observations and on channel-first uint8 images; ``--algo sac``
trains an off-policy SAC agent from a replay buffer on the vector model.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
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


# --------------------------------------------------------------------------- the world model
class PointMassWorldModel(nn.Module):
    """A point pushed around the square [-1, 1]^2; the goal is the centre.

    Latent state ``(x, y, vx, vy)``. ``residual`` is a small MLP playing the part of learned
    dynamics error; the decoders turn the latent into the three observation kinds.
    """

    IMAGE_SIZE = 36  # SB3's NatureCNN needs at least 36 x 36

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.residual = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        grid = torch.linspace(-1.0, 1.0, self.IMAGE_SIZE)
        self.register_buffer("grid_y", grid.view(-1, 1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.register_buffer("grid_x", grid.view(1, -1).expand(self.IMAGE_SIZE, self.IMAGE_SIZE).clone())
        self.generator = torch.Generator().manual_seed(seed)

    def sample_initial_state(self, seed=None, n=None):
        if seed is not None:
            self.generator.manual_seed(int(seed))
        shape = (4,) if n is None else (n, 4)
        position = torch.rand(shape[:-1] + (2,), generator=self.generator) * 1.6 - 0.8
        return torch.cat([position, torch.zeros_like(position)], -1)

    def predict_next_state(self, state, action):
        position, velocity = state[..., :2], state[..., 2:]
        action = action.to(state.dtype).clamp(-1.0, 1.0)
        velocity = 0.8 * velocity + 0.2 * action
        drift = 0.02 * self.residual(torch.cat([state, action], -1))
        position = (position + 0.1 * velocity + drift).clamp(-1.0, 1.0)
        return torch.cat([position, velocity], -1)

    def predict_reward(self, state):
        return -state[..., :2].norm(dim=-1)

    def predict_terminal(self, state):
        return state[..., :2].norm(dim=-1) < 0.1

    def decode_dict(self, state):
        return {"position": state[..., :2], "velocity": state[..., 2:]}

    def decode_image(self, state):
        """Channel-first uint8 image: the point as a blob in channel 0, the goal in channel 1."""
        x, y = state[..., 0, None, None], state[..., 1, None, None]
        blob = torch.exp(-((self.grid_x - x) ** 2 + (self.grid_y - y) ** 2) / 0.02)
        goal = torch.exp(-(self.grid_x**2 + self.grid_y**2) / 0.01).expand_as(blob)
        image = torch.stack([blob, goal, torch.zeros_like(blob)], -3)
        return (image * 255).to(torch.uint8)


# ------------------------------------------------------------------------------ the adapters
def batch_of(options):
    """N for a batched env (the reset mask has one row per env), None for an unbatched one."""
    mask = (options or {}).get("reset_mask")
    return None if mask is None else mask.shape[0]


def reset_vector(model, seed=None, options=None):
    state = model.sample_initial_state(seed, batch_of(options))
    return {"state": state, "observation": state}


def transition_vector(model, state, action):
    next_state = model.predict_next_state(state, action)
    return {
        "state": next_state,
        "observation": next_state,
        "reward": model.predict_reward(next_state),
        "terminated": model.predict_terminal(next_state),
    }


def reset_image(model, seed=None, options=None):
    state = model.sample_initial_state(seed, batch_of(options))
    return {"state": state, "observation": model.decode_image(state)}


def transition_image(model, state, action):
    out = transition_vector(model, state, action)
    out["observation"] = model.decode_image(out["state"])
    return out


ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
VECTOR_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
IMAGE_SPACE = gym.spaces.Box(0, 255, shape=(3, 36, 36), dtype=np.uint8)

BUDGETS = {  # name -> (num_envs, frames per batch, total frames, PPO epochs / SAC updates per batch)
    "tiny": (8, 64, 256, 2),
    "full": (64, 2048, 200_000, 8),
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

    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=total_frames)
    advantage = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=1e-3)
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(frames_per_batch), sampler=SamplerWithoutReplacement()
    )
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-4)
    minibatch = max(frames_per_batch // 4, 1)

    for batch in collector:  # batch: [num_envs, frames_per_batch // num_envs]
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
def train_sac(budget: str, seed: int = 0) -> tuple[float, float]:
    num_envs, frames_per_batch, total_frames, updates = BUDGETS[budget]
    torch.manual_seed(seed)
    env = make_env("vector", num_envs, seed)
    actor = make_actor(env, "vector")
    qvalue = ValueOperator(
        MLP(in_features=4 + 2, out_features=1, num_cells=[64, 64]), in_keys=["observation", "action"]
    )
    before = evaluate(env, actor)
    loss_fn = SACLoss(actor, qvalue, num_qvalue_nets=2)
    loss_fn.make_value_estimator(gamma=0.99)
    target_update = SoftUpdate(loss_fn, tau=0.005)
    buffer = ReplayBuffer(storage=LazyTensorStorage(100_000))
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-4)
    collector = Collector(
        env, actor, frames_per_batch=frames_per_batch, total_frames=total_frames,
        init_random_frames=frames_per_batch,
    )
    for batch in collector:
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
    parser.add_argument("--kinds", nargs="+", choices=["vector", "image"], default=["vector", "image"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
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
