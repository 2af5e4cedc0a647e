"""reality_check: the same policy from the same start states in the model and in reality."""

import json

import gymnasium as gym
import pytest
import torch
from tensordict.nn import TensorDictModule

from torchwm_rl import zoo
from torchwm_rl.reality import RealityReport, reality_check

GAINS = torch.tensor([0.1, 0.5, 10.0, 2.0])  # a linear controller that balances CartPole


def balance(observation: torch.Tensor) -> torch.Tensor:
    return (observation @ GAINS > 0).long()


def always_left(observation: torch.Tensor) -> torch.Tensor:
    return torch.zeros(observation.shape[:-1], dtype=torch.long)


@pytest.fixture(scope="module")
def model():
    return zoo.load("cartpole")


def test_good_policy_agrees_between_model_and_reality(model):
    env = zoo.make_env("cartpole", model=model, batch_size=4, seed=0)
    real = gym.make("CartPole-v1")
    report = reality_check(balance, env, real, episodes=6, horizon=120, seed=0)  # 2 rounds of 4
    assert isinstance(report, RealityReport)
    assert len(report.imagined_returns) == len(report.real_returns) == 6
    assert report.real_mean_return == pytest.approx(120.0)
    assert report.imagined_mean_return == pytest.approx(120.0)
    assert report.return_gap == pytest.approx(0.0)
    # open-loop error: tiny after one step, and it grows with the horizon
    assert len(report.prediction_error) == 120
    assert report.error_at(1) < 1e-2
    assert report.error_at(100) > report.error_at(1)
    assert max(report.prediction_error_count) <= 6
    # the example trajectories start from the same state
    assert report.imagined_trajectory[0] == pytest.approx(report.real_trajectory[0])
    assert len(report.real_trajectory) == 121
    assert all(abs(v) <= 0.05 for v in report.start_states[0])
    json.dumps(report.to_dict())
    assert "real return" in report.summary()


def test_bad_policy_fails_in_both(model):
    env = zoo.make_env("cartpole", model=model, batch_size=8, seed=1)
    report = reality_check(always_left, env, gym.make("CartPole-v1"), episodes=8, seed=1)
    assert report.horizon == 500  # the env's time limit by default
    assert report.real_mean_return < 15 and report.imagined_mean_return < 15
    assert abs(report.return_gap) < 2
    assert report.real_lengths == [int(r) for r in report.real_returns]


def test_unbatched_env_and_tensordict_policy(model):
    env = zoo.make_env("cartpole", model=model, seed=2)
    policy = TensorDictModule(balance, in_keys=["observation"], out_keys=["action"])
    report = reality_check(policy, env, gym.make("CartPole-v1"), episodes=2, horizon=30, seed=2)
    assert report.real_returns == [30.0, 30.0] and report.imagined_returns == [30.0, 30.0]


def test_reproducible_under_seed(model):
    def run():
        env = zoo.make_env("cartpole", model=model, batch_size=4, seed=0)
        return reality_check(balance, env, gym.make("CartPole-v1"), episodes=4, horizon=40, seed=5)

    a, b = run(), run()
    assert a.start_states == b.start_states and a.prediction_error == b.prediction_error


def test_real_env_without_state_attribute_needs_a_setter(model):
    env = zoo.make_env("cartpole", model=model, batch_size=2, seed=0)

    class NoState(gym.Wrapper):
        @property
        def unwrapped(self):
            return self

    real = NoState(gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="set_real_state"):
        reality_check(balance, env, real, episodes=1, horizon=5)
    calls = []

    def setter(real_env, observation, state):
        calls.append(observation)
        real_env.env.unwrapped.state = observation.astype("float64")

    reality_check(balance, env, real, episodes=1, horizon=5, set_real_state=setter)
    assert len(calls) == 1
