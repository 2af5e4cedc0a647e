"""What a new user sees in their first hour (issue 27): the constructors' help, the exports'
reprs, and errors that name the fix."""

import inspect
import pydoc

import pytest

from torchwm_rl import GymVectorWorldModelEnv, GymWorldModelEnv, WorldModelEnv
from torchwm_rl.sb3 import SB3VecWorldModelEnv

# ----------------------------------------------------------------- help(Cls.__init__)

CONSTRUCTOR_ARGS = [
    (WorldModelEnv, ("model", "observation_space", "max_episode_steps", "batch_size", "seed", "reset_fn",
                     "ensemble_size", "state_key")),
    (GymWorldModelEnv, ("max_episode_steps", "render_mode", "seed", "start_states")),
    (GymVectorWorldModelEnv, ("num_envs", "seed")),
    (SB3VecWorldModelEnv, ("num_envs", "seed")),
]


@pytest.mark.parametrize("cls, args", CONSTRUCTOR_ARGS, ids=lambda v: getattr(v, "__name__", ""))
def test_constructor_help_shows_its_own_arguments(cls, args):
    """``help(WorldModelEnv.__init__)`` showed nn.Module's "Initialize internal Module state"
    (an __init__ without a docstring inherits its base's in ``inspect.getdoc``)."""
    shown = pydoc.render_doc(cls.__init__)
    assert "Initialize internal Module state" not in shown
    doc = inspect.getdoc(cls.__init__)
    assert doc == inspect.cleandoc(cls.__init__.__doc__)
    for name in args:
        assert name in doc, (cls.__name__, name)
    # still the plain function, with the model options in its signature
    assert inspect.isfunction(cls.__dict__["__init__"])
    assert "nan_policy" in inspect.signature(cls.__init__).parameters
    assert "nan_policy" in inspect.signature(cls).parameters


# ----------------------------------------------------------------- the exports' reprs


@pytest.mark.parametrize("export, expected", [
    ("to_gymnasium", "GymVectorWorldModelEnv(model=CartPoleModel,"),
    ("to_sb3", "SB3VecWorldModelEnv(model=CartPoleModel,"),
])
def test_exports_repr_names_the_public_class_num_envs_and_model(export, expected):
    """``print(env.to_sb3())`` showed ``<torchwm_rl.sb3._VecEnvOverLogic object at 0x...>`` and the
    vector export ``_VectorEnvOverLogic(num_envs=256)``."""
    from torchwm_rl import zoo

    env = getattr(zoo.make_env("cartpole", batch_size=5), export)()
    text = repr(env)
    assert str(env) == text and text.startswith(expected), text
    assert "num_envs=5" in text and "_OverLogic" not in text and " object at 0x" not in text
    assert "reward_fn = reward(next_state<-next_state) [by name]" in text  # the bindings, as the other reprs
    assert text.endswith(", device=cpu)")


def test_direct_exports_repr_alike():
    """Built directly (not over a TorchRL env's logic), the reprs are the same."""
    import gymnasium as gym
    import numpy as np
    import torch

    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    kwargs = dict(num_envs=3, reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(*batch_size, 2),
                  transition_fn=lambda model, state, action: state, reward_fn=lambda next_state: next_state.sum(-1))
    vec = GymVectorWorldModelEnv(torch.nn.Identity(), box, box, **kwargs)
    sb3 = SB3VecWorldModelEnv(torch.nn.Identity(), box, box, **kwargs)
    assert repr(vec).startswith("GymVectorWorldModelEnv(model=Identity,")
    assert repr(vec).endswith("num_envs=3, autoreset_mode=NEXT_STEP, device=cpu)")
    assert repr(sb3).startswith("SB3VecWorldModelEnv(model=Identity,") and repr(sb3).endswith("num_envs=3, device=cpu)")
