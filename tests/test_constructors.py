"""Every public constructor builds from a model and takes the same model options, defined once
(``torchwm_rl.options.ModelOptions``): the vector and SB3 exports built directly equal the ones
``WorldModelEnv.to_gymnasium()`` / ``to_sb3()`` give, an unknown keyword is named with the
closest accepted ones, and each constructor's signature lists every option."""

import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch

from harness import export_trajectory
from torchwm_rl import GymVectorWorldModelEnv, GymWorldModelEnv, ModelAdapter, WorldModelEnv
from torchwm_rl.options import OPTION_NAMES
from torchwm_rl.sb3 import SB3VecWorldModelEnv

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 4


def reset(batch_size=(), generator=None):
    return torch.randn(*batch_size, 3, generator=generator)


def transition(state, action, generator=None):
    nxt = state + 0.1 * torch.randn(state.shape, generator=generator)
    nxt[..., :2] += action
    return {"state": nxt, "observation": nxt, "reward": nxt[..., 0], "terminated": nxt[..., 1] > 1.5}


HOOKS = dict(reset_fn=reset, transition_fn=transition, max_episode_steps=5, check_actions="clip")


@pytest.mark.parametrize("kind", ["vector", "sb3"])
def test_an_export_built_from_a_model_equals_the_one_to_gymnasium_gives(kind):
    env = WorldModelEnv(None, OBS, ACT, batch_size=(N,), seed=7, **HOOKS)
    if kind == "vector":
        direct = GymVectorWorldModelEnv(None, OBS, ACT, num_envs=N, seed=7, **HOOKS)
        exported = env.to_gymnasium()
        assert isinstance(direct, GymVectorWorldModelEnv) and isinstance(exported, GymVectorWorldModelEnv)
    else:
        direct = SB3VecWorldModelEnv(None, OBS, ACT, num_envs=N, seed=7, **HOOKS)
        exported = env.to_sb3()
        assert isinstance(direct, SB3VecWorldModelEnv) and isinstance(exported, SB3VecWorldModelEnv)
    ours = export_trajectory(direct, kind == "sb3", N, ACT.shape[0])
    theirs = export_trajectory(exported, kind == "sb3", N, ACT.shape[0])
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    # the seed is used: another seed gives another start
    other = GymVectorWorldModelEnv(None, OBS, ACT, num_envs=N, seed=8, **HOOKS).reset()[0]
    assert not np.array_equal(other, theirs[0])


def test_the_gymnasium_env_from_a_logic_is_a_gym_world_model_env():
    env = WorldModelEnv(None, OBS, ACT, seed=3, **HOOKS)
    export = env.to_gymnasium()
    assert isinstance(export, GymWorldModelEnv)
    reference = GymWorldModelEnv(None, OBS, ACT, seed=3, **HOOKS)
    np.testing.assert_array_equal(export.reset()[0], reference.reset()[0])


@pytest.mark.parametrize("num_envs", [0, -1, 2.0, True, None])
def test_a_direct_batched_export_refuses_a_bad_num_envs(num_envs):
    with pytest.raises(ValueError, match="num_envs: expected a positive int"):
        GymVectorWorldModelEnv(None, OBS, ACT, num_envs=num_envs, **HOOKS)


CONSTRUCTORS = {
    "ModelAdapter": lambda **kw: ModelAdapter(None, OBS, ACT, **kw),
    "WorldModelEnv": lambda **kw: WorldModelEnv(None, OBS, ACT, **kw),
    "GymWorldModelEnv": lambda **kw: GymWorldModelEnv(None, OBS, ACT, **kw),
    "GymVectorWorldModelEnv": lambda **kw: GymVectorWorldModelEnv(None, OBS, ACT, num_envs=2, **kw),
    "SB3VecWorldModelEnv": lambda **kw: SB3VecWorldModelEnv(None, OBS, ACT, num_envs=2, **kw),
}


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_an_unknown_keyword_is_named_with_the_closest_option(name):
    with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'rewad_fn'; "
                                        r"did you mean 'reward_fn'"):
        CONSTRUCTORS[name](reset_fn=reset, transition_fn=transition, rewad_fn=lambda s: s)


@pytest.mark.parametrize("cls", [ModelAdapter, WorldModelEnv, GymWorldModelEnv, GymVectorWorldModelEnv,
                                 SB3VecWorldModelEnv], ids=lambda c: c.__name__)
def test_every_constructor_signature_lists_every_model_option(cls):
    params = inspect.signature(cls).parameters
    assert set(OPTION_NAMES) <= set(params), sorted(set(OPTION_NAMES) - set(params))
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert params["nan_policy"].default == "raise" and params["torch_actions"].default is True


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_a_bad_option_value_is_refused_by_every_constructor(name):
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        CONSTRUCTORS[name](reset_fn=reset, transition_fn=transition, nan_policy="skip")
