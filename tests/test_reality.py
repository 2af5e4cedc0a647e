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


# ------------------------------------------------------------ SB3 agents and exports (issue 27)
def _sb3_model(env):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", env.to_sb3(), n_steps=16, seed=0, device="cpu")  # untrained: short episodes


def _predict(model):
    """What reality_check must do with an SB3 model: its deterministic predict, as a callable."""
    return lambda obs: torch.as_tensor(model.predict(obs.numpy(), deterministic=True)[0])


def _same(a: RealityReport, b: RealityReport) -> None:
    assert a.start_states == b.start_states
    assert a.real_returns == b.real_returns and a.imagined_returns == b.imagined_returns
    assert a.prediction_error == b.prediction_error


@pytest.mark.parametrize("which", ["model", "policy"])
def test_an_sb3_model_and_its_policy_are_scored_with_deterministic_predict(model, which):
    """Failed before: the model raised "policy must be a tensordict module or a callable", its
    .policy "There are more tensors (len(out)=3) than out_keys"."""
    env = zoo.make_env("cartpole", model=model, batch_size=4, seed=0)
    agent = _sb3_model(env)
    report = reality_check(agent if which == "model" else agent.policy, env, gym.make("CartPole-v1"),
                           episodes=4, horizon=200, seed=0)
    _same(report, reality_check(_predict(agent), env, gym.make("CartPole-v1"), episodes=4, horizon=200, seed=0))
    assert min(report.real_returns) < 200  # the untrained agent falls: the returns say something


@pytest.mark.parametrize("export", ["to_sb3", "to_gymnasium"])
@pytest.mark.parametrize("batched", [True, False])
def test_a_bare_export_is_read_through_its_torchrl_env(model, export, batched):
    """Failed before: AttributeError '_VecEnvOverLogic' object has no attribute 'batch_size'.
    Now the export gives the same report as the WorldModelEnv it came from, and is left as it was."""
    env = zoo.make_env("cartpole", model=model, seed=0, **({"batch_size": 4} if batched else {}))
    agent = _sb3_model(zoo.make_env("cartpole", model=model, batch_size=4, seed=0))
    exported = getattr(env, export)()
    logic = exported.envs[0].logic if export == "to_sb3" and not batched else exported.logic
    streams = logic.generator.get_state().clone()
    got = reality_check(agent, exported, gym.make("CartPole-v1"), episodes=4, horizon=100, seed=0)
    assert torch.equal(logic.generator.get_state(), streams)  # the export's own streams: untouched
    _same(got, reality_check(agent, env, gym.make("CartPole-v1"), episodes=4, horizon=100, seed=0))


def test_a_wrapped_export_or_another_object_is_refused_naming_the_torchrl_env(model):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import VecNormalize

    env = zoo.make_env("cartpole", model=model, batch_size=4, seed=0)
    for wrong in (VecNormalize(env.to_sb3()), gym.make("CartPole-v1")):
        with pytest.raises(TypeError, match=r"world_model_env must be the TorchRL torchwm_rl\.WorldModelEnv.*"
                                            r"\.to_sb3\(\)"):
            reality_check(balance, wrong, gym.make("CartPole-v1"), episodes=1, horizon=5)
    with pytest.raises(TypeError, match="Stable-Baselines3 model or policy"):
        reality_check(object(), env, gym.make("CartPole-v1"), episodes=1, horizon=5)


def _acrobot_like_env(seed=0):
    """A world model env with Acrobot-v1's observation (6,) and actions (3), whose start states
    are Acrobot's: the observation of a state near 0."""
    import numpy as np

    from torchwm_rl import WorldModelEnv

    def observe(s):
        return torch.cat([torch.cos(s[..., :1]), torch.sin(s[..., :1]), torch.cos(s[..., 1:2]),
                          torch.sin(s[..., 1:2]), s[..., 2:]], -1)

    def reset(model, seed=None, options=None, batch_size=()):
        state = torch.rand(*batch_size, 4) * 0.2 - 0.1
        return {"state": state, "observation": observe(state)}

    def transition(model, state, action):
        nxt = state * 0.99
        return {"state": nxt, "observation": observe(nxt), "reward": -torch.ones(state.shape[:-1])}

    high = np.array([1, 1, 1, 1, 4 * np.pi, 9 * np.pi], dtype=np.float32)
    return WorldModelEnv(torch.nn.Identity(), observation_space=gym.spaces.Box(-high, high, dtype=np.float32),
                         action_space=gym.spaces.Discrete(3), reset_fn=reset, transition_fn=transition,
                         max_episode_steps=20, batch_size=(2,), seed=seed)


def test_a_real_env_whose_state_is_not_its_observation_asks_for_set_real_state():
    """Failed before deep in Gymnasium: "operands could not be broadcast together with shapes
    (7,) (5,)" (Acrobot-v1: state (4,), observation (6,))."""
    env = _acrobot_like_env()
    real = gym.make("Acrobot-v1")
    zero = lambda obs: torch.zeros(obs.shape[:-1], dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match=r"state has shape \(4,\) but the observation has shape \(6,\).*set_real_state"):
        reality_check(zero, env, real, episodes=2, horizon=5)

    def from_observation(real_env, observation, model_state):
        real_env.unwrapped.state = model_state.numpy().astype("float64")

    report = reality_check(zero, env, real, episodes=2, horizon=5, set_real_state=from_observation)
    assert report.real_trajectory[0] == pytest.approx(report.imagined_trajectory[0], abs=1e-6)


def test_a_real_env_with_other_observations_is_refused(model):
    env = zoo.make_env("cartpole", model=model, batch_size=2, seed=0)
    with pytest.raises(ValueError, match=r"real_env's observations have shape \(6,\).*\(4,\)"):
        reality_check(balance, env, gym.make("Acrobot-v1"), episodes=1, horizon=5)


def test_summary_says_how_many_episodes_each_error_is_the_mean_over(model):
    """Failed before: 'step 100: 10.6' when 1 of 20 episodes reached step 100."""
    env = zoo.make_env("cartpole", model=model, batch_size=4, seed=1)
    report = reality_check(always_left, env, gym.make("CartPole-v1"), episodes=4, seed=1)
    summary = report.summary()
    for step in (1, 10):
        assert report.count_at(step) == report.prediction_error_count[step - 1]
        assert f"step {step}: {report.error_at(step):.3g} ({report.count_at(step)} of 4 episodes)" in summary
    assert report.count_at(len(report.prediction_error) + 1) == 0


def test_report_plot_is_public_in_the_library_and_writes_a_figure(model, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    env = zoo.make_env("cartpole", model=model, batch_size=2, seed=0)
    report = reality_check(always_left, env, gym.make("CartPole-v1"), episodes=2, horizon=40, seed=0)
    ax = report.plot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0
    assert ax.get_xlabel() == "open-loop horizon (steps)" and "2 episodes" in ax.get_title()
    from torchwm_rl.app import demo_cartpole, demo_pendulum

    assert demo_cartpole.plot_prediction_error is __import__("torchwm_rl.reality").reality.plot_prediction_error
    assert demo_pendulum.plot_prediction_error is demo_cartpole.plot_prediction_error


def test_report_plot_without_matplotlib_says_what_to_install(model, monkeypatch):
    import sys

    env = zoo.make_env("cartpole", model=model, batch_size=2, seed=0)
    report = reality_check(always_left, env, gym.make("CartPole-v1"), episodes=2, horizon=10, seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        report.plot()
