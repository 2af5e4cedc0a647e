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
