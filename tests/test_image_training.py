"""Training on a batched IMAGE world model (channel-first uint8, 3 x 36 x 36) in TorchRL and in
Stable-Baselines3, with tiny budgets: the image path works end to end, not just stepping."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import Compose, DTypeCastTransform, ObservationNorm, TransformedEnv
from torchrl.modules import ConvNet, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchwm_rl import WorldModelEnv
from models import ImageModel, image_reset, image_spaces, image_transition

pytestmark = pytest.mark.slow

NUM_ENVS, HORIZON, T = 4, 3, 4


def image_env(**kwargs) -> WorldModelEnv:
    obs_space, act_space = image_spaces()
    return WorldModelEnv(
        ImageModel().requires_grad_(False), obs_space, act_space, reset_fn=image_reset,
        transition_fn=image_transition, max_episode_steps=HORIZON, batch_size=(NUM_ENVS,), seed=0, **kwargs,
    )


def cnn_trunk() -> nn.Module:
    # ConvNet flattens any leading batch dims ([envs, time, C, H, W]), which GAE needs
    return nn.Sequential(ConvNet(in_features=3, num_cells=[8], kernel_sizes=[6], strides=[6]), nn.Linear(8 * 6 * 6, 16))


def test_torchrl_clip_ppo_with_gae_on_batched_images():
    torch.manual_seed(0)
    base = image_env()
    assert base.observation_spec["observation"].dtype == torch.uint8
    env = TransformedEnv(
        base,
        Compose(
            DTypeCastTransform(torch.uint8, torch.float32, in_keys=["observation"]),
            ObservationNorm(loc=0.0, scale=1 / 255, in_keys=["observation"], standard_normal=False),
        ),
    )
    actor = ProbabilisticActor(
        TensorDictModule(nn.Sequential(cnn_trunk(), nn.Linear(16, 4), NormalParamExtractor()),
                         in_keys=["observation"], out_keys=["loc", "scale"]),
        spec=env.action_spec, in_keys=["loc", "scale"], distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0}, return_log_prob=True,
    )
    critic = ValueOperator(nn.Sequential(cnn_trunk(), nn.Linear(16, 1)), in_keys=["observation"])
    advantage = GAE(gamma=0.9, lmbda=0.9, value_network=critic)
    loss_fn = ClipPPOLoss(actor, critic)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    buffer = ReplayBuffer(storage=LazyTensorStorage(NUM_ENVS * T), sampler=SamplerWithoutReplacement())
    before = {k: p.detach().clone() for k, p in loss_fn.named_parameters()}
    collector = Collector(env, actor, frames_per_batch=NUM_ENVS * T, total_frames=2 * NUM_ENVS * T,
                          auto_register_policy_transforms=False)
    batches = 0
    for batch in collector:
        batches += 1
        assert batch.batch_size == torch.Size([NUM_ENVS, T])
        obs = batch["observation"]
        assert obs.shape == (NUM_ENVS, T, 3, 36, 36) and obs.dtype == torch.float32
        assert 0.0 <= obs.min() and obs.max() <= 1.0 and obs.max() > 0.0
        # the time limit ends each env's episode on its own step count; the next one restarts
        assert torch.equal(batch["next", "truncated"], batch["next", "elapsed_steps"] == HORIZON)
        assert batch["next", "truncated"].any()
        with torch.no_grad():
            advantage(batch)
        assert batch["advantage"].shape == (NUM_ENVS, T, 1) and batch["advantage"].isfinite().all()
        buffer.extend(batch.reshape(-1))
        losses = loss_fn(buffer.sample(NUM_ENVS * T))
        loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
        assert loss.isfinite()
        optim.zero_grad()
        loss.backward()
        optim.step()
    collector.shutdown()
    assert batches == 2
    after = dict(loss_fn.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("actor" in k for k in changed) and any("critic" in k for k in changed)


def test_sb3_cnn_policy_ppo_on_batched_images():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.torch_layers import NatureCNN
    from stable_baselines3.common.vec_env import VecTransposeImage

    venv = image_env().to_sb3()
    model = PPO("CnnPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0)
    # SB3 saw a channel-first uint8 image: a CNN extractor and no transpose wrapper
    assert isinstance(model.policy.features_extractor, NatureCNN)
    assert not isinstance(model.get_env(), VecTransposeImage)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=2 * 8 * NUM_ENVS)
    assert model.num_timesteps == 2 * 8 * NUM_ENVS
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (NUM_ENVS, 2)
