"""Dict action spaces on the TorchRL path: the entries live under "action" (("action", "push"),
...), reach the model as tensors, and step the same numbers as the Gymnasium export. Before,
the action spec made each entry a top-level action key, so ``env.rand_action`` wrote no
"action" and ``step`` refused every tensordict."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchwm_rl import WorldModelEnv

ACTION_SPACE = gym.spaces.Dict({"push": gym.spaces.Box(-1, 1, (2,), np.float32), "mode": gym.spaces.Discrete(3)})


class Pushed(torch.nn.Module):
    def forward(self, state, action):
        return state + action["push"] * (1 + action["mode"].unsqueeze(-1))


def make(batch_size=()):
    return WorldModelEnv(
        Pushed(), observation_space=gym.spaces.Box(-100, 100, (2,), np.float32), action_space=ACTION_SPACE,
        reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(*batch_size, 2),
        reward_fn=lambda next_state: next_state.sum(-1), batch_size=batch_size,
    )


@pytest.mark.parametrize("batch", [(), (3,)])
def test_dict_action_entries_are_under_the_action_key(batch):
    env = make(batch)
    check_env_specs(env)
    assert sorted(env.action_keys) == [("action", "mode"), ("action", "push")]
    td = env.rand_action(env.reset())
    assert set(td["action"].keys()) == {"push", "mode"}
    assert td["action", "push"].shape == (*batch, 2) and td["action", "mode"].shape == batch
    out = env.step(td)
    push, mode = td["action", "push"], td["action", "mode"]
    expected = push * (1 + mode.unsqueeze(-1))
    torch.testing.assert_close(out["next", "observation"], expected)
    torch.testing.assert_close(out["next", "reward"], expected.sum(-1, keepdim=True))


def test_dict_action_rollout_matches_the_gymnasium_export():
    env = make((3,))
    space = ACTION_SPACE
    space.seed(0)
    actions = [{k: np.stack([space.sample()[k] for _ in range(3)]) for k in ("push", "mode")} for _ in range(6)]
    it = iter(actions)

    def policy(tensordict):
        a = next(it)
        return tensordict.set("action", TensorDict({k: torch.as_tensor(v) for k, v in a.items()}, batch_size=[3]))

    env.set_seed(0)
    td = env.rollout(6, policy, break_when_any_done=False)
    gym_env = env.to_gymnasium()
    gym_env.reset(seed=0)
    for t, a in enumerate(actions):
        obs, reward, *_ = gym_env.step(a)
        np.testing.assert_allclose(obs, td["next", "observation"][:, t].numpy(), rtol=1e-6)
        np.testing.assert_allclose(reward, td["next", "reward"][:, t, 0].numpy(), rtol=1e-6)


def test_a_dict_action_missing_an_entry_is_refused_naming_the_keys():
    env = make((2,))
    td = env.reset()
    td["action"] = TensorDict({"push": torch.zeros(2, 2)}, batch_size=[2])
    with pytest.raises(ValueError, match=r"action: Dict action keys differ: missing \['mode'\], unexpected \[\]"):
        env.step(td)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_torchwm_rl_check_passes_a_dict_action_env(tmp_path, batch):
    """``torchwm-rl check`` samples Dict actions key by key and feeds them to both paths."""
    from torchwm_rl.app.check import check_env

    report = check_env(lambda: make(batch), steps=8)
    assert report.ok, report.format()
    assert {r.name for r in report.results} >= {"rollout", "parity"}


def test_a_dict_action_written_into_one_buffer_is_recorded_step_by_step():
    """A policy that refills ONE TensorDict of actions in place at every step, with grad enabled
    (its "push" carries the policy's graph, so the steps are kept as lists, not copied into the
    preallocated trajectory): each recorded step holds the action of its step, as the tensor
    actions do (before: the TensorDict was not guarded, every step read the last refill)."""
    weight = torch.nn.Parameter(torch.tensor(0.1))
    buffer = TensorDict({"push": torch.zeros(3, 2), "mode": torch.zeros(3, dtype=torch.int64)}, batch_size=[3])
    calls = []

    def policy(tensordict):
        calls.append(1)
        buffer["mode"].fill_(len(calls) % 3)
        buffer["push"] = (weight * len(calls)).expand(3, 2).clone()
        return tensordict.set("action", buffer)

    out = make((3,)).rollout(4, policy, break_when_any_done=False)
    assert out["action", "mode"][0].tolist() == [1, 2, 0, 1]
    torch.testing.assert_close(out["action", "push"][0, :, 0], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert out["action", "push"].requires_grad  # the graph to the policy's parameter is kept
