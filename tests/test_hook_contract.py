"""The hook contract (torchwm_rl.calling): TorchWM's argument lists, bound once at construction.

* Table-driven unit tests of binding: one row per signature (what each parameter receives, or
  the refusal), including every tricky signature found when porting TorchWM code.
* Table-driven unit tests of return parsing: one row per form, with how it was read.
* TorchWM's documented scenarios rebuilt in our own code, run through ``torchwm_rl.gym``.
* The same TorchWM-style hooks through the TorchRL env, the Gymnasium env and the vector and
  SB3 exports: identical rewards and flags.
"""

from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.calling import bind
from torchwm_rl.gym import WorldModelEnv as GymAlias
from torchwm_rl.gym import make_world_model_env
from torchwm_rl.records import MISSING, parse_reset, parse_transition

# ----------------------------------------------------------------------------- binding table
# (hook, callable, on_model, expected positional arguments, expected keyword arguments)
BINDS = [
    # TorchWM's positional rule: any leading part of the list
    ("reward_fn", lambda model, next_state, obs, action: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, state, obs, action: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, state: 0, False, ("model", "next_state"), {}),
    ("reward_fn", lambda self, s: 0, False, ("model", "next_state"), {}),
    ("reward_fn", lambda mdl, st, ob, ac: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda *args: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("reward_fn", lambda model, *rest: 0, False, ("model", "next_state", "obs", "action"), {}),
    ("terminal_fn", lambda model, next_state: 0, False, ("model", "next_state"), {}),
    ("transition_fn", lambda model, state, action: 0, False, ("model", "state", "action"), {}),
    ("transition_fn", lambda model, state, action, deterministic=True: 0, False, ("model", "state", "action"), {}),
    ("reset_fn", lambda model, seed=None, options=None: 0, False, ("model", "seed", "options"), {}),
    ("reset_fn", lambda model, seed, options: 0, False, ("model", "seed", "options"), {}),
    ("reset_fn", lambda: 0, False, (), {}),
    ("render_fn", lambda model, state, obs: 0, False, ("model", "state", "obs"), {}),
    ("render_fn", lambda model, state: 0, False, ("model", "state"), {}),
    ("action_transform_fn", lambda model, action: 0, False, ("model", "action"), {}),
    # names decide where they contradict the positions
    ("reward_fn", lambda state, act: 0, False, (), {"state": "next_state", "act": "action"}),
    ("reward_fn", lambda next_state, action: 0, False, (), {"next_state": "next_state", "action": "action"}),
    ("reward_fn", lambda model, state, action: 0, False, (), {"model": "model", "state": "next_state", "action": "action"}),
    ("reward_fn", lambda s: 0, False, (), {"s": "next_state"}),
    ("terminal_fn", lambda obs, action: 0, False, (), {"obs": "obs", "action": "action"}),
    ("transition_fn", lambda s, a=None: 0, False, (), {"s": "state", "a": "action"}),
    ("transition_fn", lambda state, action: 0, False, (), {"state": "state", "action": "action"}),
    ("transition_fn", lambda action, state: 0, False, (), {"action": "action", "state": "state"}),
    ("reset_fn", lambda seed=None, options=None: 0, False, (), {"seed": "seed", "options": "options"}),
    ("action_transform_fn", lambda a: 0, False, (), {"a": "action"}),
    # extra inputs, by name only
    ("reward_fn", lambda model, next_state, prev_state: 0, False, (),
     {"model": "model", "next_state": "next_state", "prev_state": "prev_state"}),
    ("reward_fn", lambda prev_state, action, next_state: 0, False, (),
     {"prev_state": "prev_state", "action": "action", "next_state": "next_state"}),
    ("reward_fn", lambda model, next_state, *, generator: 0, False, ("model", "next_state"), {"generator": "generator"}),
    ("reset_fn", lambda model, seed=None, options=None, batch_size=(): 0, False, ("model", "seed", "options"),
     {"batch_size": "batch_size"}),
    ("reset_fn", lambda model, batch_size, reset_mask: 0, False, (),
     {"model": "model", "batch_size": "batch_size", "reset_mask": "reset_mask"}),
    # methods of the model: the list without the model (TorchWM)
    ("transition_fn", lambda state, action: 0, True, ("state", "action"), {}),
    ("transition_fn", lambda x, u: 0, True, ("state", "action"), {}),
    ("transition_fn", lambda action: 0, True, ("action",), {}),
    ("transition_fn", lambda x: 0, True, ("action",), {}),
    ("reset_fn", lambda seed=None, options=None: 0, True, ("seed", "options"), {}),
    ("reset_fn", lambda: 0, True, (), {}),
]


@pytest.mark.parametrize("hook,fn,on_model,positional,keywords", BINDS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(BINDS)])
def test_binding(hook, fn, on_model, positional, keywords):
    binding = bind(fn, hook, on_model=on_model)
    assert binding.positional == positional
    assert dict(binding.keywords) == keywords


# (hook, callable, a fragment of the TypeError)
REFUSED = [
    # the old full list (model, state, action, next_state): two parameters name the state reached
    ("reward_fn", lambda model, state, action, next_state: 0, "two parameters name 'next_state'"),
    ("terminal_fn", lambda state, action, next_state: 0, "two parameters name 'next_state'"),
    # a name contradicting its position beside one that names nothing
    ("reward_fn", lambda state, foo: 0, "parameter 'foo' is not the name of any argument"),
    ("reward_fn", lambda m, s, a, n: 0, "parameter 'n' is not the name of any argument"),
    # a required parameter with no argument left
    ("transition_fn", lambda model, state, action, extra: 0, "parameter 'extra' has no argument left"),
    ("action_transform_fn", lambda model, action, extra: 0, "parameter 'extra' has no argument left"),
    # *args after a contradicting name
    ("transition_fn", lambda action, *rest: 0, "parameter 'action' would receive 'model'"),
    # a required keyword-only parameter nobody provides
    ("reward_fn", lambda model, next_state, *, scale: 0, "keyword-only parameter 'scale'"),
    # an extra that is not for this hook
    ("transition_fn", lambda state, action, prev_state: 0, "parameter 'prev_state' is not the name of any argument"),
]


@pytest.mark.parametrize("hook,fn,fragment", REFUSED, ids=[f"{row[0]}-{i}" for i, row in enumerate(REFUSED)])
def test_ambiguous_signatures_are_refused_at_construction(hook, fn, fragment):
    with pytest.raises(TypeError, match=re.escape(fragment)) as err:
        bind(fn, hook)
    message = str(err.value)
    assert message.startswith(f"{hook}: cannot bind")
    assert "Accepted:" in message


def test_refused_signature_fails_env_construction_naming_the_hook():
    with pytest.raises(TypeError, match=r"^reward_fn: cannot bind .*two parameters name 'next_state'.*prev_state"):
        GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=_transition,
                         reward_fn=lambda model, state, action, next_state: 0.0)


def test_binding_is_shown_by_repr():
    env = WorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=_transition,
                        reward_fn=lambda state, act: state.sum())
    text = repr(env)
    assert "reward_fn = <lambda>(state<-next_state, act<-action) [by name]" in text
    assert "transition_fn = _transition(model<-model, state<-state, action<-action) [positional (TorchWM)]" in text
    assert "reward_fn = <lambda>(state<-next_state, act<-action) [by name]" in repr(env.to_gymnasium())


def test_partial_and_nn_module_hooks_bind_from_their_real_signature():
    def reward(scale, model, next_state):
        return scale * next_state.sum()

    binding = bind(functools.partial(reward, 2.0), "reward_fn")
    assert binding.positional == ("model", "next_state")

    class Head(torch.nn.Module):
        def forward(self, next_state, action):
            return next_state.sum(-1)

    binding = bind(Head(), "reward_fn")
    assert dict(binding.keywords) == {"next_state": "next_state", "action": "action"}


# ------------------------------------------------------------------------- return parsing
OBS1 = np.zeros(1, np.float32)
TRANSITIONS = [
    # (returned value, state, observation, reward, terminated, truncated, form)
    ({"state": 1, "observation": 2, "reward": 3}, 1, 2, 3, MISSING, MISSING, "a mapping"),
    ((2, 3, True, False, {}), MISSING, 2, 3, True, False, "Gymnasium's (obs, reward, terminated, truncated, info)"),
    ((2, 3, True, False, {"model_state": 9}), 9, 2, 3, True, False, "Gymnasium's"),
    ((2, 3, True, {}), MISSING, 2, 3, True, MISSING, "Gym's (obs, reward, done, info)"),
    ((2, 3, True, {"model_state": 9}), 9, 2, 3, True, MISSING, "Gym's"),
    ((1, 2, 3), 1, 2, 3, MISSING, MISSING, "(state, obs, reward)"),
    ((1, 2, 3, True, False, {}), 1, 2, 3, True, False, "(state, obs, reward, terminated, truncated, info)"),
    (OBS1, MISSING, OBS1, MISSING, MISSING, MISSING, "a bare observation"),
]


@pytest.mark.parametrize("value,state,obs,reward,terminated,truncated,form", TRANSITIONS,
                         ids=[row[-1] for row in TRANSITIONS])
def test_transition_return_forms(value, state, obs, reward, terminated, truncated, form):
    raw = parse_transition(value)
    assert (raw.state, raw.reward, raw.terminated, raw.truncated) == (state, reward, terminated, truncated)
    assert raw.observation is obs
    assert raw.form.startswith(form)


def test_gym_tuple_keeps_model_state_in_the_info():
    raw = parse_transition((2, 3, True, False, {"model_state": 9, "k": 1}))
    assert raw.info == {"model_state": 9, "k": 1}


def test_gym_4_tuple_time_limit_splits_done_as_gymnasium_does():
    raw = parse_transition((2, 3, True, {"TimeLimit.truncated": True}))
    assert (bool(raw.terminated), bool(raw.truncated)) == (False, True)
    assert raw.info == {}


def test_transition_2_tuple_is_refused():
    with pytest.raises(ValueError, match=re.escape("returned a 2-tuple, which could be (state, obs) or (obs, reward)")):
        parse_transition((1.0, 2.0))


RESETS = [
    (OBS1, MISSING, "a bare observation", {}),
    ((OBS1, {"k": 1}), MISSING, "(obs, info)", {"k": 1}),
    ((5, OBS1), 5, "(state, obs)", {}),
    ((5, OBS1, {"k": 1}), 5, "(state, obs, info)", {"k": 1}),
    ({"state": 5, "observation": OBS1, "info": {"k": 1}}, 5, "a mapping", {"k": 1}),
]


@pytest.mark.parametrize("value,state,form,info", RESETS, ids=[row[2] for row in RESETS])
def test_reset_return_forms(value, state, form, info):
    raw = parse_reset(value)
    assert raw.state == state and raw.observation is OBS1 and raw.form == form and raw.info == info


def test_conversion_error_says_how_the_value_was_read():
    env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset,
                           transition_fn=lambda model, state, action: (np.zeros(3, np.float32), 0.0, False, False, {}))
    env.reset()
    with pytest.raises(ValueError, match=re.escape(
            "transition_fn (read as Gymnasium's (obs, reward, terminated, truncated, info)): "
            "observation: expected shape (2,), got (3,)")):
        env.step(np.zeros(2, np.float32))


# ------------------------------------------------------------------------ batched per-env values
N = 4


def _batched_env(**hooks):
    def reset(model, seed=None, options=None, batch_size=()):
        return torch.arange(float(batch_size[0] * 2)).reshape(*batch_size, 2)

    def transition(model, state, action):
        return {"state": state + action, "observation": state + action}

    return WorldModelEnv(object(), _BOX, _BOX, reset_fn=reset, transition_fn=transition, batch_size=(N,), **hooks)


@pytest.mark.parametrize("hooks,key", [
    (dict(terminal_fn=lambda s: np.any(s.numpy()[..., 0] > 2)), "terminated"),
    (dict(reward_fn=lambda next_state: float(next_state.mean())), "reward"),
    (dict(reward_fn=lambda next_state: next_state.sum()), "reward"),
], ids=["numpy bool", "python float", "0-d tensor"])
def test_batched_scalar_from_a_per_env_hook_is_refused(hooks, key):
    env = _batched_env(**hooks)
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    hook = next(iter(hooks))
    with pytest.raises(ValueError, match=re.escape(f"{hook} (read as the ") + ".*" + re.escape(
            f"{key}: a batched env needs one value per env, shape ({N},) or ({N}, 1); got a scalar")):
        env.step(td)


def test_reset_hook_gets_batch_size_and_reset_mask_by_name():
    seen = {}

    def reset(model, batch_size, reset_mask):
        seen.update(batch_size=batch_size, reset_mask=reset_mask)
        return torch.zeros(*batch_size, 2)

    env = WorldModelEnv(object(), _BOX, _BOX, reset_fn=reset, transition_fn=_transition, batch_size=(N,))
    assert seen["batch_size"] == (N,)
    mask = torch.tensor([True, False, True, False])
    # a partial reset keeps the other envs' states, so it takes the tensordict that carries them
    env.reset(env.reset().set("_reset", mask.unsqueeze(-1)))
    assert torch.equal(seen["reset_mask"], mask)


def test_generator_is_the_envs_seeded_stream():
    def transition(model, state, action, *, generator):
        noise = torch.rand(state.shape, generator=generator)
        return {"state": state + noise, "observation": state + noise}

    def run(seed):
        env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=transition, seed=seed)
        env.reset()
        return [env.step(np.zeros(2, np.float32))[0] for _ in range(3)]

    before = torch.random.get_rng_state()
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is not the source
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert not np.array_equal(np.stack(first), np.stack(other))


def test_reward_hook_sees_the_state_reached_and_prev_state_by_name():
    seen = {}

    def reward(model, next_state, obs, action, prev_state):
        seen.update(next_state=next_state.clone(), prev_state=prev_state.clone(), obs=obs.clone())
        return next_state.sum()

    env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=_transition, reward_fn=reward)
    env.reset()
    _, r, *_ = env.step(np.ones(2, np.float32))
    torch.testing.assert_close(seen["prev_state"], torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(seen["next_state"], torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(seen["obs"], torch.tensor([3.0, 1.0]))  # the transition's observation
    assert r == 2.0


# ------------------------------------------------------------------ TorchWM's scenarios, rebuilt
_BOX = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


def _reset(model, seed=None, options=None):
    return {"state": torch.tensor([0.5, -0.5]), "observation": torch.tensor([1.0, -1.0])}


def _transition(model, state, action):
    nxt = state + torch.as_tensor(action)
    return {"state": nxt, "observation": 2 * nxt}


class Counting:
    """A model with reset/step methods and a dict state of Python ints."""

    def reset(self, seed=None, options=None):
        return {"count": 0}, np.array([0.0, 0.0], dtype=np.float32), {"seed": seed}

    def step(self, state, action):
        count = state["count"] + 1
        value = float(np.asarray(action)[0])
        return {
            "state": {"count": count},
            "observation": np.array([count, value], dtype=np.float32),
            "reward": count + value,
            "terminated": count >= 2,
            "info": {"action_shape": np.asarray(action).shape},
        }


def test_torchwm_counting_model_with_dict_state():
    env = GymAlias(Counting(), observation_space=_BOX, action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                   max_episode_steps=3, torch_actions=False)
    obs, info = env.reset(seed=7)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert info == {"seed": 7}  # exactly the hook's info
    assert env.state == {"count": 0}
    obs, reward, terminated, truncated, info = env.step(np.array([0.5], dtype=np.float32))
    np.testing.assert_array_equal(obs, [1.0, 0.5])
    assert reward == 1.5 and terminated is False and truncated is False
    assert info == {"action_shape": (1,), "model_state": {"count": 1}, "elapsed_steps": 1}
    _, _, terminated, truncated, _ = env.step(np.array([0.0], dtype=np.float32))
    assert terminated is True and truncated is False


def test_torchwm_dict_observations_with_reward_and_terminal_hooks():
    def reset(model, seed, options):
        return {"state": np.array([0.0], np.float32), "observation": {"latent": np.array([0.0, 1.0], np.float32)},
                "info": {"source": model["name"]}}

    def transition(model, state, action):
        nxt = state + np.asarray(action, dtype=np.float32)
        return {"next_state": nxt, "obs": {"latent": np.repeat(nxt, 2)}}

    def reward(model, state, obs, action):  # TorchWM: `state` is the state the step reached
        return state.sum()

    def terminal(model, state, obs, action):
        return bool(state.item() >= 1.0)

    env = make_world_model_env(
        {"name": "fake"},
        observation_space=gym.spaces.Dict({"latent": _BOX}),
        action_space=gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
        reset_fn=reset, transition_fn=transition, reward_fn=reward, terminal_fn=terminal,
        max_episode_steps=1, torch_actions=False,
    )
    obs, info = env.reset()
    np.testing.assert_array_equal(obs["latent"], [0.0, 1.0])
    assert info == {"source": "fake"}
    obs, reward, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
    np.testing.assert_array_equal(obs["latent"], [1.0, 1.0])
    assert reward == 1.0 and terminated is True and truncated is True
    np.testing.assert_array_equal(info["model_state"], np.array([1.0], np.float32))


def test_torchwm_action_transform_with_a_tuple_reset():
    def reset(model, seed, options):
        return {"latent": np.array([0.0], np.float32)}, {"episode": 0}

    def transition(model, state, action):
        assert isinstance(action, int)  # the transform's output reaches the model as is
        nxt = {"latent": np.array([float(action)], np.float32)}
        return nxt, 2.0, False, False, {"model_state": nxt}

    env = GymAlias(object(), observation_space=gym.spaces.Dict({"latent": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)}),
                   action_space=gym.spaces.Discrete(3), reset_fn=reset, transition_fn=transition,
                   action_transform_fn=lambda model, action: int(action))
    obs, info = env.reset()
    np.testing.assert_array_equal(obs["latent"], [0.0])
    assert info == {"episode": 0}
    obs, reward, terminated, truncated, info = env.step(2)
    np.testing.assert_array_equal(obs["latent"], [2.0])
    assert reward == 2.0 and terminated is False and truncated is False
    np.testing.assert_array_equal(info["model_state"]["latent"], [2.0])
    assert env.state is info["model_state"] or np.array_equal(env.state["latent"], [2.0])


def test_torchwm_step_before_reset_and_no_reset_source():
    env = GymAlias(object(), observation_space=gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
                   action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                   transition_fn=lambda model, state, action: np.array([0.0], np.float32), torch_actions=False)
    with pytest.raises(RuntimeError, match=re.escape("Call reset() before step().")):
        env.step(np.array([0.0], dtype=np.float32))
    with pytest.raises(TypeError, match="object has no reset: pass reset_fn="):
        env.reset()
    with pytest.raises(TypeError, match="WorldModelEnv builds its TensorDict specs from one reset at construction"):
        WorldModelEnv(object(), gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
                      gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                      transition_fn=lambda model, state, action: np.array([0.0], np.float32))


def test_user_info_model_state_is_kept_not_overwritten():
    def transition(model, state, action):
        nxt = state + torch.as_tensor(action)
        return {"state": nxt, "observation": nxt, "info": {"model_state": "mine", "elapsed_steps": -1}}

    env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=transition)
    env.reset()
    *_, info = env.step(np.zeros(2, np.float32))
    assert info == {"model_state": "mine", "elapsed_steps": -1}


def test_the_tutorials_reset_and_step_give_torchwm_numbers():
    """The user's tutorial (section 1) with a concrete model: reward from the state reached."""

    class Model:
        def sample_initial_state(self, seed=None):
            return torch.full((2,), 0.25)

        def decode_observation(self, latent):
            return 2 * latent

        def predict_next_state(self, state, action):
            return state + torch.as_tensor(action)

        def predict_reward(self, next_state, action):
            return float(next_state.sum() - torch.as_tensor(action).sum())

        def predict_terminal(self, next_state):
            return bool(next_state[0] > 1.0)

    def reset_world_model(model, seed=None, options=None):
        latent = model.sample_initial_state(seed=seed)
        return {"state": latent, "observation": model.decode_observation(latent), "info": {"source": "world_model"}}

    def transition_world_model(model, state, action):
        next_state = model.predict_next_state(state, action)
        return {"state": next_state, "observation": model.decode_observation(next_state),
                "reward": model.predict_reward(next_state, action), "terminated": model.predict_terminal(next_state)}

    env = GymAlias(Model(), observation_space=_BOX, action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                   reset_fn=reset_world_model, transition_fn=transition_world_model, max_episode_steps=50)
    obs, info = env.reset(seed=0)
    assert info == {"source": "world_model"}
    rewards, flags = [], []
    for _ in range(3):
        obs, r, term, trunc, _ = env.step(np.array([0.5, 0.25], np.float32))
        rewards.append(r)
        flags.append(term)
    # next states: (0.75, 0.5), (1.25, 0.75), (1.75, 1.0); reward = sum(next) - 0.75
    assert rewards == [0.5, 1.25, 2.0] and flags == [False, True, True]
    np.testing.assert_array_equal(obs, [3.5, 2.0])


# ---------------------------------------------- one set of TorchWM-style hooks, every path
def _hooks():
    def reset(model, seed=None, options=None, batch_size=()):
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.rand(*batch_size, 2, generator=g)

    def transition(model, state, action):
        nxt = state + 0.3 * torch.as_tensor(action, dtype=torch.float32)
        return {"state": nxt, "observation": nxt}

    def reward(model, state, obs, action):  # TorchWM's order: the state reached, obs, action
        return state.sum(-1) - 0.1 * torch.as_tensor(action, dtype=torch.float32).sum(-1)

    def terminal(model, state):
        return state[..., 0] > 0.6

    return dict(reset_fn=reset, transition_fn=transition, reward_fn=reward, terminal_fn=terminal)


def test_same_torchwm_style_hooks_give_identical_rewards_and_flags_on_every_path():
    pytest.importorskip("stable_baselines3")
    n, steps = 3, 6
    actions = -torch.linspace(-1, 1, steps * n * 2).reshape(steps, n, 2).sin()
    batched = WorldModelEnv(object(), _BOX, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), batch_size=(n,),
                            max_episode_steps=100, **_hooks())

    td = batched.reset(seed=3)
    torchrl = []
    for a in actions:
        td["action"] = a
        out = batched.step(td)["next"]
        torchrl.append((out["reward"].squeeze(-1).numpy(), out["terminated"].squeeze(-1).numpy()))
        td = out.exclude("reward", "done", "terminated", "truncated")

    vector = batched.to_gymnasium()
    vector.reset(seed=3)
    vec = [vector.step(a.numpy())[1:3] for a in actions[:2]]  # before any env ends (next-step autoreset)

    venv = batched.to_sb3()
    venv.seed(3)
    venv.reset()
    sb3 = [venv.step(a.numpy())[1:3] for a in actions[:2]]

    alive = np.ones(n, dtype=bool)  # the exports restart an env that ended: compare until then
    for t in range(2):
        for rewards, flags in (vec[t], sb3[t]):
            np.testing.assert_array_equal(rewards[alive], torchrl[t][0][alive])
            np.testing.assert_array_equal(flags[alive], torchrl[t][1][alive])
        alive &= ~torchrl[t][1]
    # the terminal hook fired for some envs but not all, so both flag values were compared
    assert torchrl[0][1].any() and alive.any()


def test_same_hooks_unbatched_torchrl_and_gymnasium_agree():
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    native = WorldModelEnv(object(), _BOX, space, **_hooks())
    gym_env = GymWorldModelEnv(object(), _BOX, space, **_hooks())
    td = native.reset(seed=5)
    gym_env.reset(seed=5)
    for t in range(6):
        action = torch.tensor([np.sin(t), np.cos(t)], dtype=torch.float32)
        td["action"] = action
        out = native.step(td)["next"]
        _, r, term, trunc, _ = gym_env.step(action.numpy())
        assert r == float(out["reward"]) and term == bool(out["terminated"]) and trunc == bool(out["truncated"])
        if term:
            break
        td = out.exclude("reward", "done", "terminated", "truncated")
    assert term  # the episode reached the terminal hook


def test_render_fn_gets_torchwms_three_arguments():
    seen = {}

    def render(model, state, obs):
        seen.update(state=state.clone(), obs=obs.clone())
        return np.zeros((4, 4, 3), np.uint8)

    env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=_transition, render_fn=render,
                           render_mode="rgb_array")
    env.reset()
    env.step(np.ones(2, np.float32))
    assert env.render().shape == (4, 4, 3)
    torch.testing.assert_close(seen["state"], torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(seen["obs"], torch.tensor([3.0, 1.0]))


def test_failed_step_leaves_the_hooks_generator_where_it_was():
    calls = {"n": 0}

    def transition(model, state, action, generator):
        noise = torch.rand(state.shape, generator=generator)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("model failure on purpose")
        return {"state": state + noise, "observation": state + noise}

    def run(fail: bool):
        calls["n"] = 0 if fail else 2
        env = GymWorldModelEnv(object(), _BOX, _BOX, reset_fn=_reset, transition_fn=transition, seed=0)
        env.reset()
        out = [env.step(np.zeros(2, np.float32))[0]]
        if fail:
            with pytest.raises(RuntimeError, match="on purpose"):
                env.step(np.zeros(2, np.float32))
        out.append(env.step(np.zeros(2, np.float32))[0])
        return np.stack(out)

    np.testing.assert_array_equal(run(fail=True), run(fail=False))
