"""A wrong value from a hook raises one of torchwm_rl.errors' types, which carry the hook, the
key, what was expected and what came back as attributes (and are still ValueError/TypeError)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from harness import on_paths
from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.errors import TorchWMError, TypeMismatch, ValueMismatch

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
DICT_OBS = gym.spaces.Dict({"pos": OBS, "flag": gym.spaces.Discrete(2)})
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 4


def _transition(**override):
    def transition(state, action):
        out = {"state": state, "observation": state, "reward": state[..., 0], "terminated": state[..., 1] > 9}
        out.update({k: v(state) for k, v in override.items()})
        return out
    return transition


CASES = [
    # (id, transition override, error type, key, expected, got)
    ("obs-shape", {"observation": lambda s: s[..., :2]}, ValueMismatch, "observation", (N, 3), (N, 2)),
    ("obs-type", {"observation": lambda s: "abc"}, TypeMismatch, "observation", "numbers", np.dtype("<U3")),
    ("reward-scalar", {"reward": lambda s: float(s.sum())}, ValueMismatch, "reward", (N,), ()),
    ("reward-shape", {"reward": lambda s: s}, ValueMismatch, "reward", (N,), (N, 3)),
    ("flag-float", {"terminated": lambda s: s[..., 0] + 0.5}, TypeMismatch, "terminated", torch.bool, torch.float32),
    ("flag-two", {"terminated": lambda s: torch.full((N,), 2)}, ValueMismatch, "terminated", (0, 1), [2]),
]


@pytest.mark.parametrize("override,kind,key,expected,got", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@on_paths(["torchrl", "vector"])
def test_a_wrong_transition_value_carries_hook_key_expected_and_got(override, kind, key, expected, got, path):
    env = WorldModelEnv(None, OBS, ACT, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 3),
                        transition_fn=_transition(**override), batch_size=(N,))
    with pytest.raises(kind) as info:
        if path == "torchrl":
            env.rollout(1)
        else:
            venv = env.to_gymnasium()
            venv.reset(seed=0)
            venv.step(np.zeros((N, 2), np.float32))
    err = info.value
    assert isinstance(err, TorchWMError) and isinstance(err, ValueError if kind is ValueMismatch else TypeError)
    assert (err.hook, err.key, err.expected, err.got) == ("transition_fn", key, expected, got)
    assert str(err).startswith("transition_fn (read as a mapping): " + key)


def test_a_dict_observation_with_wrong_keys_names_the_key_sets():
    def reset():
        return {"pos": torch.zeros(3), "flag": torch.tensor(0)}

    def transition(state, action):
        return {"state": state, "observation": {"pos": state["pos"]}, "reward": 0.0}

    env = GymWorldModelEnv(None, DICT_OBS, ACT, reset_fn=reset, transition_fn=transition)
    env.reset(seed=0)
    with pytest.raises(ValueMismatch) as info:
        env.step(np.zeros(2, np.float32))
    err = info.value
    assert (err.hook, err.key, err.expected, err.got) == ("transition_fn", "observation", list(DICT_OBS.spaces), ["pos"])


def test_an_action_outside_the_space_carries_the_space_and_the_action():
    env = GymWorldModelEnv(None, OBS, ACT, reset_fn=lambda: torch.zeros(3), transition_fn=_transition(),
                           check_actions="raise")
    env.reset(seed=0)
    with pytest.raises(ValueMismatch) as info:
        env.step(np.array([2.0, 0.0], np.float32))
    assert info.value.key == "action" and info.value.expected == ACT and info.value.got == [2.0, 0.0]
