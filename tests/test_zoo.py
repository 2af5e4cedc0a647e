"""The bundled CartPole world model: loading, accuracy against the real dynamics, the env helper,
and reproducible rebuilding (small data budget)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchwm_rl import WorldModelEnv, zoo
from torchwm_rl.serialization import UnsafeWeightsError, WeightsFormatError
from torchwm_rl.zoo import cartpole


def test_bundled_model_loads_as_small_eval_module():
    model = zoo.load("cartpole")
    assert isinstance(model, torch.nn.Module) and not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000 < n_params < 50_000  # tens of KB of float32
    assert not any(p.requires_grad for p in model.parameters())
    assert model.metadata["task"] == "CartPole-v1"
    assert zoo.weights_path("cartpole").stat().st_size < 200_000
    assert "cartpole" in zoo.available() and zoo.real_env_id("CartPole-v1") == "CartPole-v1"


def test_unknown_model_name():
    with pytest.raises(KeyError, match="available"):
        zoo.load("pendulum-xl")


def test_model_matches_real_cartpole_one_step():
    model = zoo.load("cartpole")
    real = gym.make("CartPole-v1").unwrapped
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(200):
        s = rng.uniform([-2, -1.5, -0.18, -2], [2, 1.5, 0.18, 2])
        a = int(rng.integers(2))
        real.reset(seed=0)
        real.state = s.copy()
        nxt, *_ = real.step(a)
        with torch.no_grad():
            pred = model(torch.tensor(s, dtype=torch.float32)[None], torch.tensor([a]))[0]
        errs.append(np.abs(pred.numpy() - nxt).max())
    assert np.mean(errs) < 5e-3


def test_model_accepts_index_and_one_hot_actions():
    model = zoo.load("cartpole")
    s = cartpole.start_states(5, seed=1)
    a = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        by_index = model(s, a)
        by_one_hot = model(s, torch.nn.functional.one_hot(a, 2).float())
        by_column = model(s, a[:, None])
    torch.testing.assert_close(by_index, by_one_hot)
    torch.testing.assert_close(by_index, by_column)


def test_reward_and_termination_are_the_real_rules():
    s = torch.tensor([[0.0, 0, 0, 0], [2.41, 0, 0, 0], [0, 0, -0.21, 0], [-2.39, 0, 0.2, 0]])
    assert cartpole.terminated(s).tolist() == [False, True, True, False]
    assert cartpole.reward(s).tolist() == [1.0] * 4


@pytest.mark.parametrize("batch", [(), (8,)])
def test_make_env_is_a_seeded_world_model_env(batch):
    env = zoo.make_env("cartpole", batch_size=batch, seed=3)
    assert isinstance(env, WorldModelEnv)
    check_env_specs(env)
    env.set_seed(3)
    first = env.reset()["observation"]
    env.set_seed(3)
    again = env.reset()["observation"]
    torch.testing.assert_close(first, again)
    assert first.shape == (*batch, 4)
    assert bool((first.abs() <= 0.05).all())  # the real reset distribution
    td = env.rollout(600, break_when_any_done=False)
    assert td["next", "reward"].shape == (*batch, 600, 1)
    assert int(td["next", "elapsed_steps"].max()) <= 500  # time limit


def test_batched_env_start_states_differ_per_env():
    env = zoo.make_env("cartpole", batch_size=16, seed=0)
    obs = env.reset()["observation"]
    assert len({tuple(row.tolist()) for row in obs}) == 16


def test_loader_refuses_a_non_weights_file(tmp_path):
    torch.save(torch.nn.Linear(6, 4), tmp_path / "pickled_module.pt")
    with pytest.raises(UnsafeWeightsError, match="trust_code"):
        zoo.load("cartpole", path=tmp_path / "pickled_module.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{junk")
    with pytest.raises(WeightsFormatError):
        zoo.load("cartpole", path=tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="train-model"):
        zoo.load("cartpole", path=tmp_path / "missing.safetensors")


def test_train_model_is_reproducible_and_loadable(tmp_path):
    kwargs = dict(seed=5, n_transitions=3_000, epochs=2, verbose=False)
    a = zoo.train_model("cartpole", path=tmp_path / "a.safetensors", **kwargs)
    b = zoo.train_model("cartpole", path=tmp_path / "b.safetensors", **kwargs)
    ma, mb = zoo.load("cartpole", path=a), zoo.load("cartpole", path=b)
    for key, value in ma.state_dict().items():
        assert torch.equal(value, mb.state_dict()[key]), key
    model = ma
    assert model.metadata["seed"] == "5" and model.metadata["n_transitions"] == "3000"


def test_collected_data_covers_balanced_and_scattered_states():
    s, a, s2 = cartpole.collect_transitions(4_000, seed=0)
    assert s.shape == s2.shape == (4_000, 4) and set(np.unique(a)) == {0, 1}
    assert np.abs(s[:, 0]).max() > 1.5  # far along the track, not only near the reset
    assert (np.abs(s[:, 2]) < 0.05).mean() > 0.2  # plenty of near-balanced states
