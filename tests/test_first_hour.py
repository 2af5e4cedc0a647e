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


# ----------------------------------------------------------------- errors that name the fix

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from torchwm_rl import ModelAdapter, zoo  # noqa: E402
from torchwm_rl.errors import ValueMismatch  # noqa: E402
from torchwm_rl.gym import make_world_model_env  # noqa: E402

BOX = gym.spaces.Box(-1, 1, (6,), np.float32)


def _reset(seed=None, options=None, batch_size=()):
    return torch.zeros(*batch_size, 6)


def _step(model, state, action):
    return state


HOOKS = dict(reset_fn=_reset, transition_fn=_step)
BUILDERS = {  # owner in the message -> (build(**kw), own keywords the message must list)
    "WorldModelEnv": (lambda **kw: WorldModelEnv(None, BOX, BOX, **HOOKS, **kw), ("batch_size", "seed")),
    "GymWorldModelEnv": (lambda **kw: GymWorldModelEnv(None, BOX, BOX, **HOOKS, **kw), ("render_mode", "seed")),
    "GymVectorWorldModelEnv": (lambda **kw: GymVectorWorldModelEnv(None, BOX, BOX, num_envs=2, **HOOKS, **kw),
                               ("num_envs", "seed", "autoreset_mode")),
    "SB3VecWorldModelEnv": (lambda **kw: SB3VecWorldModelEnv(None, BOX, BOX, num_envs=2, **HOOKS, **kw),
                            ("num_envs", "seed")),
    "ModelAdapter": (lambda **kw: ModelAdapter(None, BOX, BOX, **HOOKS, **kw), ("batch_size",)),
    "make_world_model_env": (lambda **kw: make_world_model_env(None, observation_space=BOX, action_space=BOX,
                                                               **HOOKS, **kw), ("render_mode", "seed")),
    "zoo.make_env": (lambda **kw: zoo.make_env("cartpole", **kw), ("batch_size", "seed")),
}


TYPOS = {"max_episode_step": "max_episode_steps", "sed": "seed", "batchsize": "batch_size", "num_env": "num_envs"}


@pytest.mark.parametrize("owner, typo", [(owner, typo) for owner, (_, own) in BUILDERS.items()
                                         for typo in TYPOS if TYPOS[typo] in own or typo == "max_episode_step"
                                         and owner != "ModelAdapter"])
def test_a_misspelt_env_keyword_gets_did_you_mean(owner, typo):
    """``max_episode_step=500`` listed only the model options (without max_episode_steps,
    batch_size or seed); a misspelt model option already got "did you mean"."""
    build, own = BUILDERS[owner]
    with pytest.raises(TypeError) as exc:
        build(**{typo: 5})
    text = str(exc.value)
    assert text.startswith(f"{owner}() got an unexpected keyword argument {typo!r}; "
                           f"did you mean {TYPOS[typo]!r}? (its own arguments are "), text
    listed = text.split("(its own arguments are ", 1)[1].split(";")[0].rstrip(")").split(", ")
    assert set(own) | {TYPOS[typo]} <= set(listed), (own, listed)


@pytest.mark.parametrize("owner", [o for o in BUILDERS if o != "zoo.make_env"])
def test_a_misspelt_model_option_still_gets_did_you_mean(owner):
    with pytest.raises(TypeError, match=rf"^{owner}\(\) got an unexpected keyword argument 'nan_polcy'; "
                                        r"did you mean 'nan_policy'\?.*the model options are reset_fn"):
        BUILDERS[owner][0](nan_polcy="raise")


def test_zoo_make_env_names_its_own_keywords():
    with pytest.raises(TypeError) as exc:
        zoo.make_env("cartpole", batchsize=4)
    assert str(exc.value) == ("zoo.make_env() got an unexpected keyword argument 'batchsize'; did you mean "
                              "'batch_size'? (its own arguments are name, model, batch_size, seed, "
                              "max_episode_steps, device)")


def _unbatched_reset(seed=None, options=None):
    return torch.zeros(6)


HINT = ("reset_fn is not given batch_size (it receives options, seed) and returned one env's value, but this env "
        "is batched (batch_size=(8,)): add a batch_size parameter to reset_fn and return one row per env "
        "(e.g. torch.zeros(*batch_size, 6))")


@pytest.mark.parametrize("build, receives", [
    (lambda: WorldModelEnv(None, BOX, BOX, reset_fn=_unbatched_reset, transition_fn=_step, batch_size=(8,)),
     "options, seed"),
    (lambda: GymVectorWorldModelEnv(None, BOX, BOX, num_envs=8, reset_fn=_unbatched_reset,
                                    transition_fn=_step).reset(), "options, seed"),
    (lambda: SB3VecWorldModelEnv(None, BOX, BOX, num_envs=8, reset_fn=_unbatched_reset, transition_fn=_step).reset(),
     "options, seed"),
    (lambda: WorldModelEnv(None, BOX, BOX, reset_fn=lambda model, seed, options: (torch.zeros(6), torch.zeros(6)),
                           transition_fn=_step, batch_size=(8,)), "model, options, seed"),
], ids=["torchrl", "vector", "sb3", "state-obs"])
def test_a_batched_env_whose_reset_fn_takes_no_batch_size_says_so(build, receives):
    """It failed with "observation: expected shape (8, 6), got (6,)" only."""
    with pytest.raises(ValueMismatch) as exc:
        build()
    err = exc.value
    assert "observation: expected shape (8, 6), got (6,); reset_fn is not given batch_size" in str(err)
    assert str(err).endswith(HINT.replace("options, seed", receives)), str(err)
    assert (err.hook, err.key, err.expected, err.got) == ("reset_fn", "observation", (8, 6), (6,))


def test_the_batch_size_hint_only_when_it_applies():
    """A reset_fn that takes batch_size, or returns another wrong shape, gets the plain error."""
    with pytest.raises(ValueMismatch) as exc:
        WorldModelEnv(None, BOX, BOX, reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(6),
                      transition_fn=_step, batch_size=(8,))
    assert str(exc.value).endswith("observation: expected shape (8, 6), got (6,)")
    with pytest.raises(ValueMismatch) as exc:
        WorldModelEnv(None, BOX, BOX, reset_fn=lambda seed=None, options=None: torch.zeros(5),
                      transition_fn=_step, batch_size=(8,))
    assert str(exc.value).endswith("observation: expected shape (8, 6), got (5,)")
    assert str(exc.value).count("batch_size") == 0
    with pytest.raises(ValueMismatch, match=r"got \(6,\); reset_fn is not given batch_size") as exc:
        WorldModelEnv(None, BOX, BOX, reset_fn=_unbatched_reset, transition_fn=_step, batch_size=(8,))
    assert str(exc.value).endswith(HINT)
