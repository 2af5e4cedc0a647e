"""The user's TorchWM tutorial "Plug TorchWM world models into RL libraries"
(``../shared/seed/world_model_env_rl_libraries.txt``, next to the repository), sections 1-5, as
tests: the TorchWM-compatible ``torchwm_rl.gym.WorldModelEnv`` in Stable-Baselines3, TorchRL's
``GymWrapper`` and a CleanRL-style vector loop, plus Gymnasium's own ``check_env`` on the envs
it builds. (The scripts in this repository's ``tutorials/`` folder are run by
``test_tutorials.py``.)

The tutorial's code is reproduced with ONLY the import line changed
(``from world_models.envs import WorldModelEnv`` -> ``from torchwm_rl.gym import WorldModelEnv``)
and its ``...`` placeholders filled with a real ``torch.nn.Module`` that has trainable parameters
(``VectorModel`` of ``tests/models.py``), which is exactly where TorchWM's original breaks SB3's
``check_env``. Training budgets are tiny: these tests prove the code runs, not that PPO learns.
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env

from torchwm_rl.gym import WorldModelEnv  # the tutorial's only changed line

from models import (
    DictModel,
    ImageModel,
    VectorModel,
    dict_reset,
    dict_spaces,
    dict_transition,
    image_reset,
    image_spaces,
    image_transition,
    reset_world_model,
    transition_world_model,
    vector_spaces,
)

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402

# the placeholders the tutorial leaves to the user
TUTORIAL_OBS_DIM, TUTORIAL_ACT_DIM = 64, 6


def tutorial_section_1(trained_model, initial_latent=None):
    """Section 1, verbatim (placeholders as arguments). Returns both envs it builds."""
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(64,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)

    def reset_world_model(model, seed=None, options=None):
        latent = model.sample_initial_state(seed=seed)
        obs = model.decode_observation(latent)
        return {"state": latent, "observation": obs, "info": {"source": "world_model"}}

    def transition_world_model(model, state, action):
        next_state = model.predict_next_state(state, action)
        obs = model.decode_observation(next_state)
        reward = model.predict_reward(next_state, action)
        done = model.predict_terminal(next_state)
        return {
            "state": next_state,
            "observation": obs,
            "reward": reward,
            "terminated": done,
        }

    env = WorldModelEnv(
        trained_model,
        observation_space=obs_space,
        action_space=action_space,
        initial_state=initial_latent,
        reset_fn=reset_world_model,
        transition_fn=transition_world_model,
        max_episode_steps=50,
    )
    box_env = env

    def action_transform(model, action):
        # Example: convert a discrete library action into a learned one-hot action vector.
        one_hot = np.zeros(model.num_actions, dtype=np.float32)
        one_hot[int(action)] = 1.0
        return one_hot

    env = WorldModelEnv(
        trained_model,
        observation_space=obs_space,
        action_space=gym.spaces.Discrete(trained_model.num_actions),
        reset_fn=reset_world_model,
        transition_fn=transition_world_model,
        action_transform_fn=action_transform,
    )
    return {
        "box_env": box_env,
        "discrete_env": env,
        "obs_space": obs_space,
        "action_space": action_space,
        "reset_world_model": reset_world_model,
        "transition_world_model": transition_world_model,
    }


@pytest.fixture
def trained_model():
    model = VectorModel(obs_dim=TUTORIAL_OBS_DIM, act_dim=TUTORIAL_ACT_DIM)
    assert any(p.requires_grad for p in model.parameters())
    return model


@pytest.fixture
def section1(trained_model):
    return tutorial_section_1(trained_model)


def sb3_check_env_without_warnings(env):
    """SB3's ``check_env(env, warn=True)``; returns the warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


# ----------------------------------------------------------------------------- section 1
def test_section1_adapters_build_and_step(section1, trained_model):
    env = section1["box_env"]
    obs, info = env.reset(seed=0)
    assert obs.shape == (64,) and obs.dtype == np.float32
    assert info["source"] == "world_model"
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (64,) and obs.dtype == np.float32
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    # the state reached the model and came back from it
    assert isinstance(env.state, torch.Tensor) and env.state.shape == (64,)
    assert info["elapsed_steps"] == 1


def test_section1_max_episode_steps_truncates_at_50(section1):
    env = section1["box_env"]
    env.reset(seed=0)
    for t in range(1, 51):
        _, _, terminated, truncated, info = env.step(np.zeros(6, dtype=np.float32))
        assert not terminated  # zero actions keep this toy model away from its terminal region
        assert truncated == (t == 50) and info["elapsed_steps"] == t, t
    env.reset()  # a reset restarts the count
    _, _, _, truncated, info = env.step(np.zeros(6, dtype=np.float32))
    assert not truncated and info["elapsed_steps"] == 1


def test_section1_one_hot_action_transform_with_discrete(section1, trained_model):
    env = section1["discrete_env"]
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert env.action_space.n == trained_model.num_actions
    seen = []
    original = trained_model.predict_next_state

    def spy(state, action):
        seen.append(action)
        return original(state, action)

    trained_model.predict_next_state = spy
    env.reset(seed=0)
    env.step(2)
    env.step(np.int64(4))
    assert len(seen) == 2
    for action, index in zip(seen, (2, 4)):
        assert isinstance(action, np.ndarray) and action.dtype == np.float32  # as the transform made it
        expected = np.zeros(trained_model.num_actions, dtype=np.float32)
        expected[index] = 1.0
        np.testing.assert_array_equal(action, expected)


# ----------------------------------------------------------------------------- section 2
@pytest.mark.parametrize("which", ["box_env", "discrete_env"])
def test_section2_sb3_check_env_emits_no_warnings(section1, which):
    assert sb3_check_env_without_warnings(section1[which]) == []


@pytest.mark.slow
def test_section2_ppo_mlp_policy(section1):
    env = section1["box_env"]
    check_env(env, warn=True)
    sb3_env = Monitor(env)
    model = PPO("MlpPolicy", sb3_env, verbose=0, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert env.action_space.contains(action)


@pytest.mark.slow
def test_section2_ppo_mlp_policy_discrete_one_hot(section1):
    sb3_env = Monitor(section1["discrete_env"])
    model = PPO("MlpPolicy", sb3_env, verbose=0, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64


def _dict_env():
    obs_space, action_space = dict_spaces()
    return WorldModelEnv(
        DictModel(), observation_space=obs_space, action_space=action_space,
        reset_fn=dict_reset, transition_fn=dict_transition, max_episode_steps=20,
    )


def _image_env():
    obs_space, action_space = image_spaces()
    return WorldModelEnv(
        ImageModel(), observation_space=obs_space, action_space=action_space,
        reset_fn=image_reset, transition_fn=image_transition, max_episode_steps=20,
    )


def test_section2_sb3_check_env_dict_and_image_no_warnings():
    assert sb3_check_env_without_warnings(_dict_env()) == []
    assert sb3_check_env_without_warnings(_image_env()) == []


@pytest.mark.slow
def test_section2_ppo_multi_input_policy_dict_observations():
    env = _dict_env()
    check_env(env, warn=True)
    sb3_env = Monitor(env)
    model = PPO("MultiInputPolicy", sb3_env, verbose=0, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64


@pytest.mark.slow
def test_section2_ppo_cnn_policy_uint8_channel_first_images():
    env = _image_env()
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == ImageModel.IMAGE_SHAPE
    check_env(env, warn=True)
    sb3_env = Monitor(env)
    model = PPO("CnnPolicy", sb3_env, verbose=0, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(total_timesteps=32)
    assert model.num_timesteps >= 32
    # SB3 recognised the channel-first uint8 Box as an image (no transpose wrapper needed)
    assert model.policy.observation_space.shape == ImageModel.IMAGE_SHAPE


def _dict_with_image_env():
    image_space, action_space = image_spaces()
    obs_space = gym.spaces.Dict(
        {"image": image_space, "vector": gym.spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)}
    )

    def reset(model, seed=None, options=None):
        latent = model.sample_initial_state(seed=seed)
        return latent, {"image": model.decode_image(latent), "vector": latent}

    def transition(model, state, action):
        nxt = model.predict_next_state(state, action)
        return nxt, {"image": model.decode_image(nxt), "vector": nxt}, model.predict_reward(nxt, action)

    return WorldModelEnv(ImageModel(), observation_space=obs_space, action_space=action_space,
                         reset_fn=reset, transition_fn=transition, max_episode_steps=20)


@pytest.mark.slow
def test_section2_ppo_multi_input_policy_dict_with_image():
    env = _dict_with_image_env()
    assert sb3_check_env_without_warnings(env) == []
    model = PPO("MultiInputPolicy", Monitor(env), verbose=0, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(total_timesteps=32)
    assert model.num_timesteps >= 32


def test_section2_monitor_records_episodes(section1):
    sb3_env = Monitor(section1["box_env"])
    sb3_env.reset(seed=0)
    done, steps = False, 0
    while not done:
        _, _, terminated, truncated, info = sb3_env.step(np.zeros(6, dtype=np.float32))
        done, steps = terminated or truncated, steps + 1
    assert info["episode"]["l"] == steps <= 50
    assert sb3_env.get_episode_lengths() == [steps]


# ----------------------------------------------------------- gymnasium's own env checker
def _vector_env():
    obs_space, action_space = vector_spaces()
    return WorldModelEnv(
        VectorModel(), observation_space=obs_space, action_space=action_space,
        reset_fn=reset_world_model, transition_fn=transition_world_model, max_episode_steps=20,
    )


@pytest.mark.parametrize("make", [_vector_env, _dict_env, _image_env], ids=["vector", "dict", "image"])
def test_gymnasium_check_env_passes_without_warnings(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(make(), skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_gymnasium_check_env_passes_for_a_model_sampling_from_the_global_torch_rng():
    """Gymnasium's determinism checks (same seed, same actions -> same observations) hold for a
    stochastic model that calls torch.rand*: a seeded env gives the model its own stream."""
    obs_space, action_space = vector_spaces()

    def reset(model, seed=None, options=None):
        latent = torch.rand(6) * 2 - 1
        return latent, latent

    def transition(model, state, action):
        nxt = (model.predict_next_state(state, action) + 0.1 * torch.randn(6)).clamp(-1, 1)
        return nxt, nxt, model.predict_reward(nxt, action)

    env = WorldModelEnv(VectorModel(), observation_space=obs_space, action_space=action_space,
                        reset_fn=reset, transition_fn=transition, max_episode_steps=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_render_check=True)
    assert [str(w.message) for w in caught] == []
    assert sb3_check_env_without_warnings(env) == []


@pytest.mark.parametrize("which", ["box_env", "discrete_env"])
def test_gymnasium_check_env_passes_on_tutorial_env(section1, which):
    """The tutorial's Box(-inf, inf) only draws Gymnasium's advisory about infinite bounds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(section1[which], skip_render_check=True)
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- section 3
def test_section3_torchrl_gym_wrapper(section1):
    env = section1["box_env"]

    from torchrl.envs import GymWrapper, TransformedEnv
    from torchrl.envs.transforms import Compose, DoubleToFloat, StepCounter

    base_env = GymWrapper(env)
    torchrl_env = TransformedEnv(
        base_env,
        Compose(
            DoubleToFloat(),
            StepCounter(max_steps=50),
        ),
    )
    td = torchrl_env.reset()
    td = torchrl_env.rand_step(td)

    assert td["next", "observation"].shape == (64,)
    assert td["next", "observation"].dtype == torch.float32
    assert td["next", "reward"].dtype == torch.float32
    assert int(td["next", "step_count"]) == 1
    rollout = torchrl_env.rollout(60, break_when_any_done=False)
    assert rollout.batch_size == (60,)
    assert int(rollout["next", "step_count"].max()) <= 50


@pytest.mark.parametrize("make", ["discrete", "dict", "image"])
def test_section3_gym_wrapper_passes_check_env_specs(section1, make):
    """The same wrapping for the other observation/action kinds, checked by TorchRL itself."""
    from torchrl.envs import GymWrapper, TransformedEnv
    from torchrl.envs.transforms import Compose, DoubleToFloat, StepCounter
    from torchrl.envs.utils import check_env_specs

    env = {"discrete": lambda: section1["discrete_env"], "dict": _dict_env, "image": _image_env}[make]()
    torchrl_env = TransformedEnv(GymWrapper(env), Compose(DoubleToFloat(), StepCounter(max_steps=50)))
    check_env_specs(torchrl_env, seed=0)
    td = torchrl_env.rand_step(torchrl_env.reset())
    if make == "image":
        assert td["next", "observation"].dtype == torch.uint8
    if make == "dict":
        assert td["next", "position"].shape == (6,)


# ----------------------------------------------------------------------------- section 4
def test_section4_cleanrl_sync_vector_env(section1, trained_model):
    obs_space = section1["obs_space"]
    action_space = section1["action_space"]
    reset_world_model = section1["reset_world_model"]
    transition_world_model = section1["transition_world_model"]

    def make_env(seed: int):
        def thunk():
            env = WorldModelEnv(
                trained_model,
                observation_space=obs_space,
                action_space=action_space,
                reset_fn=reset_world_model,
                transition_fn=transition_world_model,
                max_episode_steps=50,
                seed=seed,
            )
            return env

        return thunk

    envs = gym.vector.SyncVectorEnv([make_env(seed=i) for i in range(4)])
    obs, infos = envs.reset(seed=0)

    assert obs.shape == (4, 64) and obs.dtype == np.float32
    # SyncVectorEnv seeds env i with seed 0 + i: the four initial observations differ
    assert len({obs[i].tobytes() for i in range(4)}) == 4
    for _ in range(60):  # past the time limit: autoreset keeps the vector env going
        obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    assert obs.shape == (4, 64) and rewards.shape == (4,) and rewards.dtype == np.float64
    assert terminations.dtype == np.bool_ and truncations.dtype == np.bool_
    envs.close()


def test_section4_thunk_seed_used_when_reset_has_none(section1, trained_model):
    """``seed=`` in the constructor seeds the first reset that is given no seed."""
    kwargs = dict(
        observation_space=section1["obs_space"], action_space=section1["action_space"],
        reset_fn=section1["reset_world_model"], transition_fn=section1["transition_world_model"],
    )
    a = WorldModelEnv(trained_model, seed=3, **kwargs).reset()[0]
    b = WorldModelEnv(trained_model, seed=3, **kwargs).reset()[0]
    c = WorldModelEnv(trained_model, seed=4, **kwargs).reset()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ----------------------------------------------------------------------------- section 5
def test_section5_checklist(section1):
    env = section1["box_env"]
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    # info["model_state"] is the latest latent, detached from any autograd graph
    state = info["model_state"]
    assert not (isinstance(state, torch.Tensor) and state.requires_grad)
    np.testing.assert_allclose(np.asarray(state), env.state.detach().numpy())
    image_env = _image_env()
    obs, _ = image_env.reset(seed=0)
    assert image_env.observation_space.contains(obs)
    frame = image_env.render()
    assert frame.shape == (36, 36, 3) and frame.dtype == np.uint8
