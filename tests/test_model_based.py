"""WorldModelEnv with TorchRL's model-based tools (issue 10): batch-unlocked, reset from given
states, the model as a submodule, planners, imagination from replay states, info keys. Every
test uses the real TorchRL classes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import EnvBase
from torchrl.modules import CEMPlanner, MPPIPlanner, ValueOperator
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value import TDLambdaEstimator

from torchwm_rl import WorldModelEnv

OBS, ACT = 4, 2
BOX = gym.spaces.Box(-np.inf, np.inf, shape=(OBS,), dtype=np.float32)
ACTION = gym.spaces.Box(-1.0, 1.0, shape=(ACT,), dtype=np.float32)
LATENT = 6


class Model(nn.Module):
    """Latent ``[*, 6]``; observation = first 4 dims (``decode``), or the latent itself when
    ``obs_is_state``. Reward = -|obs|^2 - |action|^2; info: ``"spread"`` ``[*, 1]``. Counts calls."""

    def __init__(self, obs_is_state=False):
        super().__init__()
        torch.manual_seed(0)
        self.obs_is_state = obs_is_state
        dim = OBS if obs_is_state else LATENT
        self.net = nn.Linear(dim + ACT, dim)
        self.calls = 0

    def decode(self, state):
        return state if self.obs_is_state else state[..., :OBS]

    def reset_fn(self, seed=None, options=None, batch_size=()):
        n = batch_size[0] if batch_size else None
        state = torch.randn(*((n,) if n else ()), OBS if self.obs_is_state else LATENT) * 0.1
        return state if self.obs_is_state else (state, self.decode(state))

    def transition_fn(self, state, action):
        self.calls += 1
        nxt = state + 0.1 * torch.tanh(self.net(torch.cat([state, action], -1)))
        obs = self.decode(nxt)
        reward = -(obs**2).sum(-1) - (action**2).sum(-1)
        info = {"spread": nxt.std(-1, keepdim=True)}
        return nxt, obs, reward, torch.zeros_like(reward, dtype=torch.bool), torch.zeros_like(reward, dtype=torch.bool), info


def make_env(batch=(16,), obs_is_state=False, **kwargs):
    model = Model(obs_is_state)
    return WorldModelEnv(
        model, BOX, ACTION,
        reset_fn=lambda m, seed, options, batch_size=(): m.reset_fn(seed, options, batch_size),
        transition_fn=lambda m, state, action: m.transition_fn(state, action),
        batch_size=batch, seed=0, **kwargs,
    )


def replay_states(n, obs_is_state=False):
    torch.manual_seed(5)
    return TensorDict({"model_state": torch.randn(n, OBS if obs_is_state else LATENT) * 0.2}, [n])


# ------------------------------------------------------------------------ 1. batch-unlocked
def test_batch_unlocked_any_leading_batch_one_model_call_per_step():
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    assert env.batch_locked is False
    assert env.reset().batch_size == (16,)  # no tensordict: the env's batch
    start = replay_states(64)
    env.model.calls = 0
    out = env.rollout(5, auto_reset=False, tensordict=start)
    assert out.batch_size == (64, 5) and env.model.calls == 5
    assert out["next", "reward"].shape == (64, 5, 1)
    # a 2-dim batch (start states x candidates) is one model call too
    env.model.calls = 0
    grid = TensorDict({"model_state": torch.randn(3, 7, LATENT)}, [3, 7])
    out = env.rollout(4, auto_reset=False, tensordict=grid, break_when_any_done=False)
    assert out.batch_size == (3, 7, 4) and env.model.calls == 4
    # step and rand_step with another batch
    td = env.reset(start.copy(), set_state=True)
    stepped = env.rand_step(td)
    assert stepped["next", "observation"].shape == (64, OBS)
    torch.testing.assert_close(stepped["next", "observation"], stepped["next", "model_state"][:, :OBS])


def test_unlocked_batch_fast_path_equals_torchrl_rollout():
    def run(general):
        env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
        torch.manual_seed(3)
        policy = TensorDictModule(nn.Linear(OBS, ACT), in_keys=["observation"], out_keys=["action"])
        start = env._complete_start(replay_states(64))
        call = EnvBase.rollout if general else type(env).rollout
        return call(env, 6, policy, auto_reset=False, tensordict=start, break_when_any_done=False)

    fast, general = run(False), run(True)
    assert set(fast.keys(True, True)) == set(general.keys(True, True))
    for key in general.keys(True, True):
        torch.testing.assert_close(fast[key], general[key], rtol=0, atol=0, msg=str(key))


def test_per_env_time_limits_refuse_another_batch():
    env = make_env((4,), max_episode_steps=torch.tensor([2, 3, 4, 5]), obs_is_state=True)
    with pytest.raises(ValueError, match="per env"):
        env.rollout(2, auto_reset=False, tensordict=replay_states(8, True))


# ------------------------------------------------------------------- 2. reset from states
def test_reset_starts_from_given_states_and_fills_bookkeeping():
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    start = replay_states(64)
    out = env.reset(start.copy(), set_state=True)
    torch.testing.assert_close(out["model_state"], start["model_state"])
    torch.testing.assert_close(out["observation"], start["model_state"][:, :OBS])  # decode_fn
    assert (out["elapsed_steps"] == 0).all() and not out["done"].any()
    # the observation given in the tensordict wins over decode
    given = start.copy().set("observation", torch.full((64, OBS), 7.0))
    assert (env.reset(given, set_state=True)["observation"] == 7.0).all()
    # set_state=False draws fresh states from the reset hook, for the tensordict's batch
    fresh = env.reset(start.copy(), set_state=False)
    assert fresh.batch_size == (64,) and not torch.equal(fresh["model_state"], start["model_state"])


def test_reset_from_states_when_the_observation_is_the_state():
    env = make_env((16,), obs_is_state=True)
    start = replay_states(5, True)
    out = env.reset(start.copy(), set_state=True)
    torch.testing.assert_close(out["observation"], start["model_state"])


def test_reset_from_states_without_observation_or_decode_says_what_to_provide():
    env = make_env((16,))
    with pytest.raises(KeyError, match="decode_fn"):
        env.reset(replay_states(4), set_state=True)
    with pytest.raises(KeyError, match="model_state"):
        env.reset(TensorDict({"observation": torch.zeros(4, OBS)}, [4]), set_state=True)


def test_step_and_rand_step_without_state_name_the_key():
    env = make_env((16,))
    with pytest.raises(KeyError, match="model_state"):
        env.rand_step()
    # elapsed_steps is bookkeeping: absent, it starts at 0
    td = env.reset().exclude("elapsed_steps")
    assert (env.rand_step(td)["next", "elapsed_steps"] == 1).all()


def test_partial_reset_keeps_or_refuses_never_zeroes():
    env = make_env((8,))
    mask = torch.zeros(8, 1, dtype=torch.bool)
    mask[:3] = True
    # only the mask, before the env gave any tensordict: where the other envs stand is unknown
    with pytest.raises(KeyError, match="model_state"):
        env.reset(TensorDict({"_reset": mask}, [8]))
    td = env.reset()
    # only the mask (TorchRL's select_reset_only, as SerialEnv resets its sub-envs): the other
    # envs stay where the env's last tensordict left them, as in a stateful TorchRL env
    kept = env.reset(TensorDict({"_reset": mask}, [8]))
    torch.testing.assert_close(kept["model_state"][3:], td["model_state"][3:], rtol=0, atol=0)
    assert not torch.equal(kept["model_state"][:3], td["model_state"][:3])
    # other entries but no model state: a tensordict that lost it, refused
    with pytest.raises(KeyError, match="model_state"):
        env.reset(TensorDict({"_reset": mask, "observation": td["observation"]}, [8]))
    before = td.clone()
    out = env.reset(td.set("_reset", mask))
    torch.testing.assert_close(out["model_state"][3:], before["model_state"][3:])
    assert not torch.equal(out["model_state"][:3], before["model_state"][:3])  # fresh starts


# ------------------------------------------------------------- 3. the model in the env
def test_world_model_is_a_registered_submodule():
    env = make_env((4,))
    names = [name for name, _ in env.named_parameters()]
    assert names and all(name.startswith("world_model.") for name in names)
    state = env.state_dict()
    assert "world_model.net.weight" in state
    with torch.no_grad():
        env.model.net.weight.zero_()
    env.load_state_dict(state)
    assert torch.equal(env.model.net.weight, state["world_model.net.weight"])
    assert env.to("cpu") is env and env.model.net.weight.device.type == "cpu"
    with hold_out_net(env):
        assert not any(p.requires_grad for p in env.model.parameters())
    assert all(p.requires_grad for p in env.model.parameters())


def test_actor_update_through_rollout_freezes_the_world_model():
    """Imagination from replay states (Dreamer's actor update): gradients reach the actor
    through the world model, which stays frozen under hold_out_net."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    actor = TensorDictModule(nn.Sequential(nn.Linear(OBS, ACT), nn.Tanh()), in_keys=["observation"], out_keys=["action"])
    start = replay_states(32)
    with hold_out_net(env):
        data = env.rollout(5, actor, auto_reset=False, tensordict=start)
        loss = -data["next", "reward"].sum(-2).mean()
        loss.backward()
    assert data.batch_size == (32, 5)
    torch.testing.assert_close(data["model_state"][:, 0], start["model_state"])  # started from them
    assert actor.module[0].weight.grad is not None and actor.module[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in env.model.parameters())
    opt = torch.optim.SGD(actor.parameters(), lr=0.1)
    before = actor.module[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, actor.module[0].weight)


# ------------------------------------------------------------------------- 4. planners
def planning_env():
    # TorchRL's planners read the action spec as one env's: plan on an unbatched env
    return make_env((), decode_fn=lambda model, state: model.decode(state))


@pytest.mark.parametrize("batch", [(), (3,)])
def test_cem_plans_from_one_and_many_start_states(batch):
    env = planning_env()
    planner = CEMPlanner(env, planning_horizon=4, optim_steps=2, num_candidates=8, top_k=3)
    start = env._complete_start(TensorDict({"model_state": torch.randn(*batch, LATENT) * 0.1}, batch))
    env.model.calls = 0
    action = planner(start)["action"]
    assert action.shape == (*batch, ACT) and (action.abs() <= 1).all()
    assert env.model.calls == 2 * 4  # one model call per imagined step for all candidates


@pytest.mark.parametrize("batch", [(), (3,)])
def test_mppi_plans_with_a_value_module(batch):
    env = planning_env()
    value = ValueOperator(nn.Linear(OBS, 1), in_keys=["observation"])
    advantage = TDLambdaEstimator(gamma=0.99, lmbda=0.95, value_network=value)
    planner = MPPIPlanner(env, advantage, temperature=1.0, planning_horizon=4, optim_steps=2,
                          num_candidates=8, top_k=3)
    start = env._complete_start(TensorDict({"model_state": torch.randn(*batch, LATENT) * 0.1}, batch))
    action = planner(start)["action"]
    assert action.shape == (*batch, ACT) and torch.isfinite(action).all()


def test_cem_prefers_the_better_action():
    """A reward that pays for pushing action[0] up: CEM's plan must push it up."""
    env = WorldModelEnv(
        nn.Identity(), BOX, ACTION, reset_fn=lambda m, seed, options: torch.zeros(OBS),
        transition_fn=lambda m, state, action: (state, state, action[..., :1].sum(-1)), seed=0,
    )
    planner = CEMPlanner(env, planning_horizon=3, optim_steps=4, num_candidates=32, top_k=4)
    start = env._complete_start(TensorDict({"model_state": torch.zeros(OBS)}, []))
    assert planner(start)["action"][0] > 0.3


def test_cem_plans_each_start_state_of_a_batch_on_its_own():
    """A batch of start states through one planner call: the reward pays action[0] * state[0],
    so each row's plan must follow the sign of its own start state."""
    env = WorldModelEnv(
        nn.Identity(), BOX, ACTION, reset_fn=lambda m, seed, options: torch.zeros(OBS),
        transition_fn=lambda m, state, action: (state, state, action[..., 0] * state[..., 0]), seed=0,
    )
    planner = CEMPlanner(env, planning_horizon=3, optim_steps=4, num_candidates=32, top_k=4)
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    states = torch.zeros(6, OBS)
    states[:, 0] = sign
    torch.manual_seed(0)
    action = planner(env._complete_start(TensorDict({"model_state": states}, [6])))["action"]
    assert action.shape == (6, ACT)
    assert torch.equal(torch.sign(action[:, 0]), sign)


@pytest.mark.parametrize("planner_cls", [CEMPlanner, MPPIPlanner])
@pytest.mark.parametrize("start_batch", [(3,), ()])
def test_planner_on_a_batched_env_says_to_plan_on_an_unbatched_one(planner_cls, start_batch):
    """TorchRL's planners read env.action_spec as one env's; on a batch_size=(N,) env each row's
    action comes out with extra dims: refused with the fix, never fed to the model. With one
    start state and as many candidates as envs the rows are the env's own batch: refused too."""
    env = make_env((4,), decode_fn=lambda model, state: model.decode(state))
    kwargs = dict(planning_horizon=3, optim_steps=1, num_candidates=4 if not start_batch else 8, top_k=2)
    if planner_cls is MPPIPlanner:
        value = ValueOperator(nn.Linear(OBS, 1), in_keys=["observation"])
        planner = MPPIPlanner(env, TDLambdaEstimator(gamma=0.99, lmbda=0.95, value_network=value),
                              temperature=1.0, **kwargs)
    else:
        planner = CEMPlanner(env, **kwargs)
    env.model.calls = 0
    start = env._complete_start(TensorDict({"model_state": torch.randn(*start_batch, LATENT)}, start_batch))
    rows = (*start_batch, kwargs["num_candidates"])
    match = rf"expected shape \({', '.join(map(str, rows))}, 2\).*got \({', '.join(map(str, rows))}, 3, 2\).*batch_size=\(\)"
    with pytest.raises(ValueError, match=match):
        planner(start)
    assert env.model.calls == 0


def test_actions_must_be_one_per_row():
    """On another batch than the env's, each row's action has one env's shape (a Discrete index
    may come as [*batch, 1]); more dims than that are refused on any batch."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    td = env.reset(replay_states(8), set_state=True)
    for bad in [(8, 3), (8, 16, 2), (8, 1, 2)]:
        with pytest.raises(ValueError, match=rf"expected shape \(8, 2\).*got \({bad[0]}, {bad[1]}"):
            env.step(td.clone().set("action", torch.zeros(bad)))
    with pytest.raises(ValueError, match=r"expected shape \(16, 2\).*got \(16, 5, 2\)"):
        env.step(env.reset().set("action", torch.zeros(16, 5, 2)))
    assert env.step(td.clone().set("action", torch.zeros(8, 2)))["next", "reward"].shape == (8, 1)
    box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    discrete = WorldModelEnv(object(), box, gym.spaces.Discrete(3), batch_size=(4,),
                             reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
                             transition_fn=lambda m, s, a: (s + a.reshape(-1, 1), s, a.float().reshape(-1)))
    start = discrete.reset(TensorDict({"model_state": torch.zeros(6, 2)}, [6]), set_state=True)
    for shape in [(6,), (6, 1)]:
        out = discrete.step(start.clone().set("action", torch.ones(shape, dtype=torch.int64)))
        assert (out["next", "model_state"] == 1).all()


# ------------------------------------------------------------------------ 6. info keys
@pytest.mark.parametrize("declared", [False, True])
def test_info_values_reach_the_tensordict(declared):
    info_keys = {"spread": Unbounded(shape=(1,))} if declared else ["spread"]
    env = make_env((16,), info_keys=info_keys)
    assert env.observation_spec["spread"].shape == (16, 1)
    out = env.rollout(3)
    expected = out["next", "model_state"].std(-1, keepdim=True)
    torch.testing.assert_close(out["next", "spread"], expected)
    assert (env.reset()["spread"] == 0).all()  # a reset has no transition: 0
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env)


def test_a_missing_declared_info_key_is_an_error():
    env = make_env((4,), info_keys={"uncertainty": Unbounded(shape=(1,))})
    with pytest.raises(KeyError, match="uncertainty"):
        env.rand_step(env.reset())


def test_probing_an_absent_info_key_says_how_to_declare_it():
    with pytest.raises(KeyError, match="declare it"):
        make_env((4,), info_keys=["uncertainty"])


def test_declared_info_values_of_another_shape_are_refused_not_reshaped():
    """A declared info spec is one env's shape: a value of shape [K, N] for a [N, K] batch would
    mix rows across envs if reshaped; it is refused, as is a float for an integer spec."""
    import gymnasium as _gym
    import numpy as _np
    from torchrl.data import Unbounded as _Unbounded

    from torchwm_rl import WorldModelEnv as _Env

    box = _gym.spaces.Box(-_np.inf, _np.inf, (2,), _np.float32)

    def transition(model, state, action):
        per_member = torch.arange(3.0).reshape(3, 1) * 10 + torch.arange(4.0)  # [K=3, N=4]
        return {"state": state, "observation": state, "info": {"per_member": per_member}}

    env = _Env(object(), box, box, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
               transition_fn=transition, batch_size=(4,), info_keys={"per_member": _Unbounded(shape=(3,))})
    td = env.reset()
    td["action"] = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"info\['per_member'\]: expected shape \(4, 3\).*got \(3, 4\)"):
        env.step(td)


# ------------------------------------------------------------------ state_key, plain reset
def test_state_key_names_the_model_state_entry():
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state), state_key="state")
    assert env.state_key == "state" and "state" in env.state_spec.keys() and "model_state" not in env.state_spec.keys()
    td = env.rollout(3)
    assert "state" in td.keys() and "model_state" not in td.keys(True)
    start = TensorDict({"state": torch.randn(8, LATENT)}, [8])
    out = env.reset(start.copy(), set_state=True)
    torch.testing.assert_close(out["state"], start["state"])
    torch.testing.assert_close(out["observation"], start["state"][:, :OBS])
    with pytest.raises(KeyError, match="'state'"):
        env.rand_step(TensorDict({"observation": torch.zeros(16, OBS)}, [16]))
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env)


@pytest.mark.parametrize("key", ["observation", "action", "reward", "done", "terminated", "truncated", "next",
                                 "elapsed_steps", "_reset", "uncertainty", "nonfinite"])
def test_state_key_colliding_with_the_envs_keys_is_refused(key):
    with pytest.raises(ValueError, match=f"state_key={key!r} collides"):
        make_env((4,), state_key=key)


def test_state_key_colliding_with_an_observation_or_info_key_is_refused():
    space = gym.spaces.Dict({"state": BOX})
    with pytest.raises(ValueError, match="state_key='state' collides with the observation"):
        WorldModelEnv(nn.Identity(), space, ACTION, reset_fn=lambda m: {"state": torch.zeros(OBS)},
                      transition_fn=lambda m, s, a: s, state_key="state")
    with pytest.raises(ValueError, match=r"info_keys: key\(s\) \['state'\] collide"):
        make_env((4,), state_key="state", info_keys={"state": Unbounded(shape=(1,))})
    with pytest.raises(TypeError, match="state_key"):
        make_env((4,), state_key=("a", "b"))


def test_plain_reset_with_the_state_starts_from_it():
    """``env.reset(td)`` (TorchRL's implicit set_state, as DreamerActorLoss calls it) starts from
    the states ``td`` carries; ``set_state=False`` draws fresh ones; the step count alone is no state."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    start = replay_states(64)
    with pytest.warns(FutureWarning, match="set_state"):  # TorchRL's notice for v0.15
        out = env.reset(start.copy())
    torch.testing.assert_close(out["model_state"], start["model_state"])
    fresh = env.reset(start.copy(), set_state=False)
    assert not torch.equal(fresh["model_state"], start["model_state"])
    counted = TensorDict({"elapsed_steps": torch.full((16, 1), 3)}, [16])
    assert (env.reset(counted)["elapsed_steps"] == 0).all()  # a fresh start, not an error


def test_plain_reset_with_dreamers_state_key_on_another_key_is_refused():
    """DreamerActorLoss puts its start states under "state": on an env whose state key is
    "model_state" that would silently imagine from fresh resets, so it is an error."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    with pytest.raises(KeyError, match="state_key='state'"):
        env.reset(TensorDict({"state": torch.zeros(8, LATENT)}, [8]))
    assert env.reset(TensorDict({"state": torch.zeros(8, LATENT)}, [8]), set_state=False).batch_size == (8,)


def test_given_states_of_the_wrong_structure_are_refused():
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state))
    with pytest.raises(ValueError, match=r"'model_state': expected shape \(8, 6\).*got \(8, 5\)"):
        env.reset(TensorDict({"model_state": torch.zeros(8, 5)}, [8]), set_state=True)
    with pytest.raises(TypeError, match="dtype torch.float32"):
        env.rollout(2, auto_reset=False, tensordict=TensorDict({"model_state": torch.zeros(8, LATENT).double()}, [8]))
    rssm = rssm_env()
    half = TensorDict({"state": {"belief": torch.zeros(8, H)}}, [8])
    with pytest.raises(KeyError, match=r"missing \['state'\]"):
        rssm.reset(half, set_state=True)


# ---------------------------------------------------------------------- 5. Dreamer losses
def dreamer_parts(env, in_keys, width):
    from torchrl.objectives.dreamer import DreamerActorLoss, DreamerValueLoss

    torch.manual_seed(11)

    class Head(nn.Module):
        def __init__(self, out, squash):
            super().__init__()
            self.lin, self.squash = nn.Linear(width, out), squash

        def forward(self, *parts):
            y = self.lin(torch.cat(parts, -1))
            return torch.tanh(y) if self.squash else y

    actor = TensorDictModule(Head(ACT, True), in_keys=in_keys, out_keys=["action"])
    value = TensorDictModule(Head(1, False), in_keys=in_keys, out_keys=["state_value"])
    actor_loss = DreamerActorLoss(actor, value, env, imagination_horizon=5)  # TorchRL's value estimator defaults
    actor_loss.set_keys(belief="state")  # the whole model state lives under "state"
    return actor, value, actor_loss, DreamerValueLoss(value)


def test_dreamer_actor_and_value_losses_imagine_from_replay_states():
    """TorchRL's DreamerActorLoss and DreamerValueLoss on WorldModelEnv(state_key="state"): a
    batch of 32 replay latents on a 16-env env; imagination starts from them, gradients reach the
    actor (and the value net), the world model gets none and is unchanged by the optimizer."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state), state_key="state")
    actor, value, actor_loss, value_loss = dreamer_parts(env, ["state"], LATENT)
    torch.manual_seed(5)
    replay = TensorDict({"state": torch.randn(32, LATENT) * 0.5, "reward": torch.zeros(32, 1)}, [32])
    world_before = [p.detach().clone() for p in env.model.parameters()]
    opt = torch.optim.Adam([*actor.parameters(), *value.parameters()], lr=1e-2)

    with pytest.warns(FutureWarning):  # TorchRL's implicit set_state notice (the loss's plain reset)
        losses, fake = actor_loss(replay)
    assert fake.batch_size == (32, 5) and torch.isfinite(losses["loss_actor"])
    # imagination started from the replay states: the first state, its decoded observation, and
    # the first reward is the model's own from those states and the actor's actions
    torch.testing.assert_close(fake["state"][:, 0], replay["state"])
    torch.testing.assert_close(fake["observation"][:, 0], replay["state"][:, :OBS])
    with torch.no_grad():
        nxt, obs, reward, *_ = env.model.transition_fn(replay["state"], fake["action"][:, 0])
    torch.testing.assert_close(fake["next", "state"][:, 0], nxt)
    torch.testing.assert_close(fake["next", "reward"][:, 0, 0], reward)

    opt.zero_grad()
    losses["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in env.model.parameters())  # hold_out_net(env)
    assert all(p.requires_grad for p in env.model.parameters())  # and released after
    vlosses, _ = value_loss(fake)
    assert torch.isfinite(vlosses["loss_value"])
    vlosses["loss_value"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in value.parameters())
    assert all(p.grad is None for p in env.model.parameters())
    actor_before = [p.detach().clone() for p in actor.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(world_before, env.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, actor.parameters()))


H, Z = 5, 3


class RSSM(nn.Module):
    """A Dreamer-style dict state ``{"state": z [*, 3], "belief": h [*, 5]}``; observation =
    decode(z, h) [*, 4]; reward = -|obs|^2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRUCell(Z + ACT, H)
        self.prior = nn.Linear(H, Z)
        self.dec = nn.Linear(Z + H, OBS)

    def decode(self, state):
        return self.dec(torch.cat([state["state"], state["belief"]], -1))

    def step(self, state, action):
        lead = action.shape[:-1]
        belief = self.rnn(torch.cat([state["state"], action], -1).reshape(-1, Z + ACT),
                          state["belief"].reshape(-1, H)).reshape(*lead, H)
        nxt = {"state": torch.tanh(self.prior(belief)), "belief": belief}
        obs = self.decode(nxt)
        return nxt, obs, -(obs**2).sum(-1)


def rssm_env(batch=(8,)):
    def reset(model, batch_size=()):
        state = {"state": torch.zeros(*batch_size, Z), "belief": torch.zeros(*batch_size, H)}
        return state, model.decode(state)

    return WorldModelEnv(RSSM(), BOX, ACTION, reset_fn=reset, transition_fn=lambda m, s, a: m.step(s, a),
                         decode_fn=lambda m, s: m.decode(s), batch_size=batch, state_key="state")


def test_dreamer_actor_loss_with_a_dict_model_state():
    """An RSSM state {"state", "belief"} lives under the root "state" (nested keys): the loss
    selects all of it with ``set_keys(belief="state")``; actor and value read the nested keys."""
    env = rssm_env()
    keys = [("state", "state"), ("state", "belief")]
    actor, value, actor_loss, value_loss = dreamer_parts(env, keys, Z + H)
    torch.manual_seed(6)
    replay = TensorDict({"state": {"state": torch.randn(20, Z), "belief": torch.randn(20, H)}}, [20])
    with pytest.warns(FutureWarning):
        losses, fake = actor_loss(replay)
    for key in keys:
        torch.testing.assert_close(fake[key][:, 0], replay[key])
    torch.testing.assert_close(fake["observation"][:, 0], env.model.decode(replay["state"].to_dict()).detach())
    (losses["loss_actor"] + value_loss(fake)[0]["loss_value"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*actor.parameters(), *value.parameters()])
    assert all(p.grad is None for p in env.model.parameters())
    # the nested belief key would select only part of the state: refused, never a wrong start
    actor_loss.set_keys(belief=("state", "belief"))
    with pytest.raises(KeyError, match=r"missing \['state'\]"), pytest.warns(FutureWarning):
        actor_loss(replay)


def test_a_recurrent_policys_state_primer_is_not_refused_as_dreamers_state():
    """A ``TensorDictPrimer`` named "state" (a recurrent policy's hidden state, not the model
    state: another shape) goes through reset(td) and rollout(tensordict=td) as before: fresh
    starts. Only a "state" laid out as the model state is refused."""
    from torchrl.data import Composite
    from torchrl.envs import TensorDictPrimer, TransformedEnv

    env = TransformedEnv(make_env((4,), decode_fn=lambda model, state: model.decode(state)),
                         TensorDictPrimer(Composite(state=Unbounded(shape=(4, 8)), shape=(4,))))
    hidden = TensorDict({"state": torch.ones(4, 8)}, [4])
    out = env.reset(hidden.clone())
    assert out["state"].shape == (4, 8) and out["model_state"].shape == (4, LATENT)
    assert env.rollout(3, tensordict=hidden.clone()).batch_size == (4, 3)
    with pytest.raises(KeyError, match="state_key='state'"):
        make_env((4,)).reset(TensorDict({"state": torch.zeros(4, LATENT)}, [4]))


def test_a_one_element_action_as_one_dim_per_row_on_any_batch():
    """A Box(1,) action given as [*batch] is taken on another batch as on the env's own (the
    mirror of a Discrete index given as [*batch, 1])."""
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    env = WorldModelEnv(object(), BOX, space, batch_size=(4,),
                        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, OBS),
                        transition_fn=lambda m, s, a: (s + a.reshape(-1, 1), s + a.reshape(-1, 1), a.reshape(-1)))
    for batch in [(4,), (6,)]:
        start = env.reset(TensorDict({"model_state": torch.zeros(*batch, OBS)}, batch), set_state=True)
        for shape in [(*batch,), (*batch, 1)]:
            out = env.step(start.clone().set("action", torch.full(shape, 0.5)))
            assert (out["next", "reward"] == 0.5).all() and out["next", "reward"].shape == (*batch, 1)
    with pytest.raises(ValueError, match=r"expected shape \(6, 1\)"):
        env.step(start.clone().set("action", torch.zeros(6, 2)))


def test_dreamers_root_state_next_to_belief_on_a_dict_state_env_is_refused():
    """An RSSM dict state on the default key, and a replay laid out as TorchRL's RSSM writes it
    (root "state" and "belief" tensors): a plain reset would draw fresh starts, so it is refused."""
    env = WorldModelEnv(RSSM(), BOX, ACTION, batch_size=(8,), decode_fn=lambda m, s: m.decode(s),
                        reset_fn=lambda m, batch_size=(): ({"state": torch.zeros(*batch_size, Z),
                                                            "belief": torch.zeros(*batch_size, H)},
                                                           torch.zeros(*batch_size, OBS)),
                        transition_fn=lambda m, s, a: m.step(s, a))
    replay = TensorDict({"state": torch.zeros(6, Z), "belief": torch.zeros(6, H)}, [6])
    with pytest.raises(KeyError, match="state_key='state'"):
        env.reset(replay)


def test_dreamer_loss_with_an_unmapped_belief_is_refused_not_imagined_stale():
    """Without ``set_keys(belief="state")`` DreamerActorLoss also selects the replay's root
    "belief", which the env never steps: an actor reading it would see the replay's value at
    every imagined step. Refused; an explicit set_state=True still carries it on purpose."""
    env = make_env((16,), decode_fn=lambda model, state: model.decode(state), state_key="state")
    actor, value, actor_loss, _ = dreamer_parts(env, ["state", "belief"], LATENT + 3)
    actor_loss.set_keys(belief="belief")  # TorchRL's default, unmapped
    replay = TensorDict({"state": torch.randn(8, LATENT), "belief": torch.randn(8, 3)}, [8])
    with pytest.raises(KeyError, match=r"set_keys\(belief='state'\)"):
        actor_loss(replay)
    out = env.reset(replay.clone(), set_state=True)
    assert torch.equal(out["belief"], replay["belief"])
