"""Ensemble world models on every path: propagation, uncertainty, penalty, halting, info keys."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from torchwm_rl.ensemble import max_pairwise_distance

E = 5
# member k moves the state by action + OFFSETS[k]: the step's displacement names the member
OFFSETS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-4.0, 1.0]])
OBS = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


class Members:
    """A toy ensemble; ``scale`` multiplies every member's offset (the spread)."""

    def __init__(self, scale=1.0):
        self.offsets = OFFSETS * scale

    def transition(self, model, state, action):
        shape = (E,) + (1,) * (state.ndim - 1) + (2,)
        nxt = state.unsqueeze(0) + action.unsqueeze(0) + self.offsets.reshape(shape)
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1), "terminated": nxt[..., 0] > 1e5}


def reset(model, seed, options, batch_size, generator):
    return torch.rand(*batch_size, 2, generator=generator)


def make(batch=(8,), scale=1.0, **kwargs):
    m = Members(scale)
    kwargs.setdefault("seed", 0)
    return WorldModelEnv(m, OBS, ACT, reset_fn=reset, transition_fn=m.transition, batch_size=batch,
                         ensemble_size=E, **kwargs)


def members_of(obs_before, obs_after, action):
    """Which member made each step: ``[..., 2]`` displacements -> member indices ``[...]``."""
    offset = obs_after - obs_before - action
    dist = (offset.unsqueeze(-2) - OFFSETS).norm(dim=-1)
    assert bool((dist.min(-1).values < 1e-4).all()), "a step matches no member"
    return dist.argmin(-1)


def zero_policy(td):
    td["action"] = torch.zeros(*td.batch_size, 2)
    return td


def rollout_members(env, steps, policy=None):
    td = env.rollout(steps, policy, break_when_any_done=False)
    return members_of(td["observation"], td["next", "observation"], td["action"]), td


def test_mean_propagation_is_the_member_mean():
    env = make(propagation="mean")
    td = env.reset()
    td["action"] = torch.full((8, 2), 0.5)
    out = env.step(td)["next"]
    expected = td["observation"] + 0.5 + OFFSETS.mean(0)
    torch.testing.assert_close(out["observation"], expected)
    torch.testing.assert_close(out["model_state"], expected)
    # the reward is the mean of the members' rewards (a linear function: the reward of the mean)
    torch.testing.assert_close(out["reward"], expected.sum(-1, keepdim=True))


def test_fixed_keeps_one_member_per_episode_and_random_redraws_each_step():
    fixed, _ = rollout_members(make(batch=(32,), propagation="fixed"), 10)
    assert bool((fixed == fixed[:, :1]).all()), "a 'fixed' env changed member mid-episode"
    assert len(set(fixed[:, 0].tolist())) > 1, "every env got the same member: draws are not per env"

    random, _ = rollout_members(make(batch=(32,), propagation="random"), 10)
    changed = (random != random[:, :1]).any(-1)
    assert bool(changed.all()), "a 'random' env kept one member for 10 steps"
    assert set(random.flatten().tolist()) == set(range(E))
    assert any(len(set(random[:, t].tolist())) > 1 for t in range(10)), "draws are per batch, not per env"


def test_fixed_redraws_at_each_full_reset():
    env = make(batch=(32,), propagation="fixed")
    first, _ = rollout_members(env, 2)
    second, _ = rollout_members(env, 2)  # rollout resets first
    assert not torch.equal(first[:, 0], second[:, 0])


def test_fixed_partial_reset_redraws_only_restarted_envs_torchrl():
    env = make(batch=(32,), propagation="fixed")
    td = env.reset()
    action = torch.zeros(32, 2)

    def members_now(td):
        td["action"] = action
        nxt = env.step(td.clone())["next"]
        return members_of(td["observation"], nxt["observation"], action)

    before = members_now(td)
    mask = torch.zeros(32, 1, dtype=torch.bool)
    mask[::2] = True
    td["_reset"] = mask
    td = env.reset(td)
    after = members_now(td)
    keep = ~mask.squeeze(-1)
    assert torch.equal(after[keep], before[keep]), "envs not being reset changed member"
    assert not torch.equal(after[~keep], before[~keep]), "restarted envs kept their members"


def test_fixed_partial_reset_redraws_only_restarted_envs_vector():
    venv = make(batch=(32,), propagation="fixed").to_gymnasium()
    obs, _ = venv.reset(seed=1)
    action = np.zeros((32, 2), np.float32)

    def members_now():
        # peek with the shared logic: a step from the current snapshot without committing it
        snap, rec = venv.logic.step(venv._snapshot, torch.as_tensor(action))
        return members_of(torch.as_tensor(venv._obs()), rec.observation, torch.as_tensor(action))

    before = members_now()
    mask = np.zeros(32, bool)
    mask[:16] = True
    venv.reset(options={"reset_mask": mask})
    after = members_now()
    assert torch.equal(after[16:], before[16:])
    assert not torch.equal(after[:16], before[:16])


@pytest.mark.parametrize("propagation", ["random", "fixed"])
def test_same_seed_same_trajectories(propagation):
    # random actions come from TorchRL's global RNG: a fixed policy isolates the env's own draws
    a = make(propagation=propagation, seed=3).rollout(20, zero_policy, break_when_any_done=False)
    b = make(propagation=propagation, seed=3).rollout(20, zero_policy, break_when_any_done=False)
    c = make(propagation=propagation, seed=4).rollout(20, zero_policy, break_when_any_done=False)
    assert (a == b).all()
    assert not torch.equal(a["next", "observation"], c["next", "observation"])


def test_draws_do_not_touch_the_global_rng():
    env = make(propagation="random")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    env.rollout(5, zero_policy)
    assert torch.equal(torch.rand(3), expected)


def test_uncertainty_is_max_pairwise_distance_and_scales_linearly():
    # members 3 and 4 are furthest apart: |(3,3) - (-4,1)| = sqrt(53)
    spread = math.sqrt(53.0)
    for scale in (0.5, 1.0, 3.0):
        td = make(scale=scale, propagation="mean").rollout(3, zero_policy)
        u = td["next", "uncertainty"]
        assert u.dtype == torch.float32 and u.shape == (8, 3, 1)
        torch.testing.assert_close(u, torch.full_like(u, spread * scale))
    assert float(td["uncertainty"][:, 0].abs().max()) == 0.0  # after a reset: no prediction yet


def test_max_pairwise_distance_by_hand():
    members = torch.randn(4, 6, 3)
    u = max_pairwise_distance(members, 1)
    by_hand = torch.stack([
        max((members[i, b] - members[j, b]).norm() for i in range(4) for j in range(4)) for b in range(6)
    ])
    torch.testing.assert_close(u, by_hand)
    assert torch.equal(max_pairwise_distance(members[:1], 1), torch.zeros(6))


def test_uncertainty_fn_replaces_the_measure():
    env = make(propagation="mean", uncertainty_fn=lambda obs: obs[..., 0].std(0), uncertainty_penalty=2.0)
    base = make(propagation="mean")
    a, b = env.rollout(4, zero_policy), base.rollout(4, zero_policy)
    std = OFFSETS[:, 0].std()
    torch.testing.assert_close(a["next", "uncertainty"], torch.full((8, 4, 1), float(std)))
    torch.testing.assert_close(a["next", "reward"], b["next", "reward"] - 2.0 * std)


@pytest.mark.parametrize("propagation", ["random", "fixed", "mean"])
def test_penalty_identity(propagation):
    plain = make(propagation=propagation).rollout(10, zero_policy, break_when_any_done=False)
    lam = 0.7
    penalized = make(propagation=propagation, uncertainty_penalty=lam).rollout(10, zero_policy,
                                                                               break_when_any_done=False)
    torch.testing.assert_close(penalized["next", "observation"], plain["next", "observation"])
    torch.testing.assert_close(
        penalized["next", "reward"], plain["next", "reward"] - lam * plain["next", "uncertainty"]
    )


def test_halting_flags_and_rewards():
    # spread sqrt(53) ~ 7.28 at scale 1, ~ 3.64 at scale 0.5: a threshold of 5 halts only the first
    halting = make(propagation="mean", uncertainty_threshold=5.0, halt_reward=-3.0, uncertainty_penalty=1.0)
    td = halting.rollout(5, zero_policy, break_when_any_done=False)
    nxt = td["next"]
    assert bool(nxt["halted"].all()) and bool(nxt["terminated"].all()) and bool(nxt["done"].all())
    assert not bool(nxt["truncated"].any())
    torch.testing.assert_close(nxt["reward"], torch.full_like(nxt["reward"], -3.0))
    # break_when_any_done (the default) stops at the halted step
    assert halting.rollout(5, zero_policy).shape == (8, 1)

    calm = make(scale=0.5, propagation="mean", uncertainty_threshold=5.0, halt_reward=-3.0)
    nxt = calm.rollout(5, zero_policy, break_when_any_done=False)["next"]
    assert not bool(nxt["halted"].any()) and not bool(nxt["terminated"].any())
    assert not bool((nxt["reward"] == -3.0).any())


def test_halting_is_per_env():
    def uncertainty(obs):  # env b's uncertainty is b
        return torch.arange(obs.shape[1], dtype=torch.float32)

    env = make(propagation="mean", uncertainty_fn=uncertainty, uncertainty_threshold=3.5, halt_reward=7.0)
    td = env.reset()
    td["action"] = torch.zeros(8, 2)
    nxt = env.step(td)["next"]
    halted = torch.arange(8) > 3.5
    assert torch.equal(nxt["halted"].squeeze(-1), halted)
    assert torch.equal(nxt["terminated"].squeeze(-1), halted)
    assert bool((nxt["reward"].squeeze(-1)[halted] == 7.0).all())
    assert not bool((nxt["reward"].squeeze(-1)[~halted] == 7.0).any())


def test_info_keys_on_every_path_match_torchrl():
    # an uncertainty that varies with the state, so that some envs halt and some do not
    kwargs = dict(propagation="random", uncertainty_threshold=1.0, seed=5,
                  uncertainty_fn=lambda obs: obs.mean(0)[..., 0].abs() % 2)
    torchrl_env = make(batch=(4,), **kwargs)
    reference = torchrl_env.rollout(6, zero_policy, break_when_any_done=False)
    u_ref = reference["next", "uncertainty"].squeeze(-1)  # [4, 6]
    h_ref = reference["next", "halted"].squeeze(-1)
    assert bool(h_ref.any()) and not bool(h_ref.all())  # both cases occur below

    # Gymnasium vector env (SAME_STEP autoreset so every step is a model step)
    venv = make(batch=(4,), **kwargs).to_gymnasium(autoreset_mode="SameStep")
    venv.reset(seed=5)
    for t in range(6):
        _, _, _, _, infos = venv.step(np.zeros((4, 2), np.float32))
        u = infos["uncertainty"].copy()
        h = infos["halted"].copy()
        if "final_info" in infos:
            ended = infos["_final_info"]
            u[ended] = infos["final_info"]["uncertainty"][ended]
            h[ended] = infos["final_info"]["halted"][ended]
        # rows that reset differ from the TorchRL reference once any env halted; compare the first step
        if t == 0:
            np.testing.assert_allclose(u, u_ref[:, 0].numpy())
            np.testing.assert_array_equal(h, h_ref[:, 0].numpy())
        assert u.dtype == np.float32 and h.dtype == bool

    # SB3
    sb3 = make(batch=(4,), **kwargs).to_sb3()
    sb3.seed(5)
    sb3.reset()
    _, _, _, infos = sb3.step(np.zeros((4, 2), np.float32))
    assert [i["uncertainty"] for i in infos] == pytest.approx(u_ref[:, 0].tolist())
    assert [i["halted"] for i in infos] == h_ref[:, 0].tolist()

    # single Gymnasium env (constructor keywords and the export)
    m = Members()
    single = GymWorldModelEnv(m, OBS, ACT, reset_fn=reset, transition_fn=m.transition, ensemble_size=E,
                              propagation="mean", uncertainty_penalty=0.5)
    single.reset(seed=0)
    _, reward, _, _, info = single.step(np.zeros(2, np.float32))
    assert info["uncertainty"] == pytest.approx(math.sqrt(53.0)) and info["halted"] is False
    unbatched = make(batch=(), propagation="fixed").to_gymnasium()
    unbatched.reset(seed=0)
    info = unbatched.step(np.zeros(2, np.float32))[-1]
    assert isinstance(info["uncertainty"], float) and isinstance(info["halted"], bool)


def test_unbatched_fixed_and_random():
    env = make(batch=(), propagation="fixed")
    members, _ = rollout_members(env, 8)
    assert bool((members == members[0]).all())
    env = make(batch=(), propagation="random")
    members, _ = rollout_members(env, 30)
    assert len(set(members.tolist())) > 1


def test_gradients_flow_through_mean():
    env = make(propagation="mean", uncertainty_penalty=0.3)
    td = env.reset()
    action = torch.zeros(8, 2, requires_grad=True)
    td["action"] = action
    reward = env.step(td)["next", "reward"]
    reward.sum().backward()
    torch.testing.assert_close(action.grad, torch.ones(8, 2))  # d(sum of next obs)/d(action)


def test_reward_fn_sees_the_propagated_observation():
    m = Members()
    seen = []

    def reward_fn(model, next_state, obs, action):
        seen.append(obs.shape)
        return obs[..., 1]

    def m_transition(model, state, action):
        return {k: v for k, v in m.transition(model, state, action).items() if k != "reward"}

    env = WorldModelEnv(m, OBS, ACT, reset_fn=reset, transition_fn=m_transition, reward_fn=reward_fn,
                        batch_size=(8,), ensemble_size=E, propagation="mean", seed=0)
    td = env.rollout(2, zero_policy)
    assert seen and all(s == (8, 2) for s in seen)
    torch.testing.assert_close(td["next", "reward"].squeeze(-1), td["next", "observation"][..., 1])


def test_errors_name_what_is_wrong():
    m = Members()
    with pytest.raises(ValueError, match=r"leading ensemble dim.*expected shape \(5, 8, 2\), got \(8, 2\)"):
        WorldModelEnv(m, OBS, ACT, reset_fn=reset, batch_size=(8,), ensemble_size=E, seed=0,
                      transition_fn=lambda model, state, action: state + action).rollout(1)
    with pytest.raises(ValueError, match=r"reward must have a leading ensemble dim"):
        WorldModelEnv(m, OBS, ACT, reset_fn=reset, batch_size=(8,), ensemble_size=E, seed=0,
                      transition_fn=lambda model, state, action: {
                          "observation": m.transition(model, state, action)["observation"],
                          "reward": state.sum(-1)}).rollout(1)
    with pytest.raises(ValueError, match="propagation must be one of"):
        make(propagation="ts1")
    with pytest.raises(ValueError, match="uncertainty_penalty must be a finite number >= 0"):
        make(uncertainty_penalty=-1.0)
    with pytest.raises(ValueError, match="ensemble_size must be a positive int"):
        make(ensemble_size=0) if False else WorldModelEnv(m, OBS, ACT, reset_fn=reset, ensemble_size=0,
                                                           transition_fn=m.transition)
    with pytest.raises(ValueError, match="uncertainty_penalty need.*ensemble_size"):
        WorldModelEnv(m, OBS, ACT, reset_fn=reset, transition_fn=m.transition, uncertainty_penalty=1.0)
    with pytest.raises(ValueError, match="uncertainty_fn must return shape"):
        make(uncertainty_fn=lambda obs: obs.sum(-1)).rollout(1)


def test_mean_refuses_integer_members():
    space = gym.spaces.Box(-100, 100, (2,), np.int64)

    def transition(model, state, action):
        return state.unsqueeze(0).expand(E, *state.shape).clone()

    env = WorldModelEnv(None, space, ACT, reset_fn=lambda model, seed, options: torch.zeros(2, dtype=torch.int64),
                        transition_fn=transition, ensemble_size=E, propagation="mean")
    with pytest.raises(TypeError, match="propagation='mean' needs floating-point"):
        env.rollout(1)


def test_fixed_members_refuse_a_batch_of_another_size():
    """A batch-unlocked env given start states of another batch cannot map its per-env "fixed"
    members onto them: refused by name, never indexed wrongly."""
    import re as _re

    from tensordict import TensorDict as _TD

    def reset(model, batch_size=()):
        return torch.zeros(E, *batch_size, 2)[0]

    def transition(model, state, action):
        nxt = state.unsqueeze(0) + torch.arange(E, dtype=torch.float32).reshape(E, *[1] * state.ndim)
        return {"state": nxt, "observation": nxt}

    box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    env = WorldModelEnv(object(), box, box, reset_fn=reset, transition_fn=transition, batch_size=(4,),
                        ensemble_size=E, propagation="fixed")
    start = _TD({"model_state": torch.zeros(6, 2), "observation": torch.zeros(6, 2)}, batch_size=(6,))
    with pytest.raises(ValueError, match=_re.escape("propagation='fixed' keeps one ensemble member per env")):
        td = env.reset(start, set_state=True)
        td["action"] = torch.zeros(6, 2)
        env.step(td)


def test_fixed_members_from_given_start_states_reproduce_under_the_seed():
    """reset(td, set_state=True) draws the "fixed" members of the started envs from the env's
    seeded stream: same seed, same members and rewards (they came from the construction probe)."""
    from tensordict import TensorDict

    start = torch.rand(8, 2, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(3):
        env = make(batch=(8,), propagation="fixed", seed=123)
        td = env.reset(TensorDict({"model_state": start.clone()}, batch_size=[8]), set_state=True)
        td["action"] = torch.zeros(8, 2)
        nxt = env.step(td)["next"]
        runs.append((members_of(td["observation"], nxt["observation"], td["action"]).tolist(),
                     nxt["reward"].squeeze(-1).tolist()))
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0][0])) > 1  # the envs really drew (different) members


@pytest.mark.parametrize("propagation", ["random", "mean"])
def test_random_and_mean_ensembles_take_start_states_of_another_batch(propagation):
    from tensordict import TensorDict

    env = make(batch=(16,), propagation=propagation)
    start = TensorDict({"model_state": torch.zeros(64, 2)}, batch_size=[64])
    td = env.reset(start, set_state=True)
    out = env.rollout(3, auto_reset=False, tensordict=td, break_when_any_done=False)
    assert out.batch_size == torch.Size([64, 3]) and out["next", "uncertainty"].shape == (64, 3, 1)
    expected = max_pairwise_distance(OFFSETS.unsqueeze(1), 1)  # the members' spread, every env
    torch.testing.assert_close(out["next", "uncertainty"][:, 0, 0], expected.expand(64))


# ------------------------------------------------- TensorDict and dict states with a member dim
def _member(k, state, action):
    """Member k called directly: h moves by action + OFFSETS[k], c is scaled by k + 2 and the
    nested z counts steps times k, so every leaf names the member that made it."""
    action = torch.as_tensor(action, dtype=torch.float32).expand(state["h"].shape)
    return {"h": state["h"] + action + OFFSETS[k], "c": state["c"] * (k + 2),
            "inner": {"z": state["inner"]["z"] + k}}


def _as(form, tree, batch):
    from tensordict import TensorDict

    if form == "dict":
        return tree
    return TensorDict({k: (_as(form, v, batch) if isinstance(v, dict) else v) for k, v in tree.items()},
                      batch_size=batch)


def _plain(state):
    return {k: (_plain(v) if hasattr(v, "keys") else torch.as_tensor(v)) for k, v in state.items()}


class StateMembers:
    """An ensemble whose state is a TensorDict (batch size [E, *batch]) or a dict of tensors."""

    def __init__(self, form):
        self.form = form

    def reset(self, model, seed, options, batch_size, generator):
        h = torch.rand(*batch_size, 2, generator=generator)
        state = {"h": h, "c": torch.ones(*batch_size, 1), "inner": {"z": torch.zeros(tuple(batch_size))}}
        return {"state": _as(self.form, state, tuple(batch_size)), "observation": h}

    def transition(self, model, state, action):
        from tensordict import TensorDict

        batch = tuple(state["h"].shape[:-1])
        outs = [_as(self.form, _member(k, _plain(state), action), batch) for k in range(E)]
        if self.form == "tensordict":
            stacked = torch.stack(outs)  # TorchRL's idiom: a TensorDict of batch size [E, *batch]
            assert isinstance(stacked, TensorDict) and stacked.batch_size == (E, *batch)
        else:
            stacked = {"h": torch.stack([o["h"] for o in outs]), "c": torch.stack([o["c"] for o in outs]),
                       "inner": {"z": torch.stack([o["inner"]["z"] for o in outs])}}
        return {"state": stacked, "observation": stacked["h"], "reward": stacked["h"].sum(-1)}


def _check_propagated(prev, nxt, action, propagation, form):
    """``nxt`` is what the member models called directly give from ``prev``: their mean, or per
    env one member's output on every leaf (not h from one member and c from another)."""
    from tensordict import TensorDictBase

    # a dict state travels in the TorchRL path's tensordict (as a TensorDict); a TensorDict stays one
    assert isinstance(nxt, TensorDictBase) if form == "tensordict" else hasattr(nxt, "keys"), type(nxt)
    prev, got = _plain(prev), _plain(nxt)
    direct = [_member(k, prev, action) for k in range(E)]
    leaves = [("h",), ("c",), ("inner", "z")]

    def leaf(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    if propagation == "mean":
        for path in leaves:
            expected = torch.stack([leaf(d, path) for d in direct]).mean(0)
            torch.testing.assert_close(leaf(got, path), expected)
        return
    batch = got["h"].shape[:-1]
    for env in np.ndindex(*batch):
        matches = [k for k in range(E) if all(torch.equal(leaf(got, p)[env], leaf(direct[k], p)[env]) for p in leaves)]
        assert len(matches) == 1, (env, got, direct)


@pytest.mark.parametrize("form", ["tensordict", "dict"])
@pytest.mark.parametrize("propagation", ["random", "fixed", "mean"])
def test_tensordict_and_dict_states_propagate_on_every_path(propagation, form):
    """An ensemble whose model state is a TensorDict (the members stacked with torch.stack, batch
    size [E, *batch]) or a dict steps on every path, and each step's state is the member models'
    own output (one member's on every leaf, or their mean). A TensorDict state was refused with
    'the first reset gave a tensordict state, this call gave a dict' before."""
    m = StateMembers(form)

    def build(batch):
        return WorldModelEnv(m, OBS, ACT, reset_fn=m.reset, transition_fn=m.transition, batch_size=batch,
                             ensemble_size=E, propagation=propagation, seed=0, max_episode_steps=4)

    action = np.full(2, 0.25, np.float32)
    for batch in [(), (3,)]:  # TorchRL, over an episode end (a partial / full reset)
        env = build(batch)
        td = env.reset()
        for _ in range(6):
            td["action"] = torch.as_tensor(action).expand(*batch, 2).clone()
            out = env.step(td)
            _check_propagated(td["model_state"], out["next", "model_state"], action, propagation, form)
            td = env.step_mdp(out)
            if bool(td["done"].any()):
                td = env.reset(td.set("_reset", td["done"].clone()))
    gym_env = GymWorldModelEnv(m, OBS, ACT, reset_fn=m.reset, transition_fn=m.transition, ensemble_size=E,
                               propagation=propagation)
    gym_env.reset(seed=0)
    for _ in range(3):
        prev = gym_env.state
        gym_env.step(action)
        _check_propagated(prev, gym_env.state, action, propagation, form)
    actions = np.tile(action, (3, 1))
    venv = build((3,)).to_gymnasium(autoreset_mode="SameStep")
    venv.reset(seed=0)
    sb3 = build((3,)).to_sb3()
    sb3.reset()
    for _ in range(3):  # within the first episode (max_episode_steps=4)
        prev = venv.state
        venv.step(actions)
        _check_propagated(prev, venv.state, action, propagation, form)
        prev = sb3._snapshot.state  # the SB3 export keeps its model state there (no public accessor)
        sb3.step(actions)
        _check_propagated(prev, sb3._snapshot.state, action, propagation, form)


def test_max_pairwise_distance_of_nested_dicts_and_tensordicts():
    """A nested Dict observation (as dicts or a TensorDict) is flattened leaf by leaf, as one
    concatenated vector (nested dicts raised AttributeError before)."""
    from tensordict import TensorDict

    torch.manual_seed(0)
    a, c = torch.randn(E, 4, 2), torch.randn(E, 4, 3)
    flat = max_pairwise_distance(torch.cat([a, c], -1))
    torch.testing.assert_close(max_pairwise_distance({"b": {"c": c}, "a": a}), flat)
    td = TensorDict({"a": a, "b": TensorDict({"c": c}, batch_size=(E, 4))}, batch_size=(E, 4))
    torch.testing.assert_close(max_pairwise_distance(td), flat)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda obs: torch.complex(obs[..., 0].std(0), obs[..., 1].std(0)), TypeError, r"dtype torch\.complex64"),
        (lambda obs: obs[..., 0].std(0) > 0, TypeError, r"dtype torch\.bool"),
        (lambda obs: "high", TypeError, r"got str"),
        (lambda obs: obs[..., 0].std(0).unsqueeze(0), ValueError, r"expected a real .* got \(1, 8\)"),
    ],
    ids=["complex", "bool", "str", "shape"],
)
def test_uncertainty_fn_output_of_the_wrong_kind_is_refused(bad, error, match):
    """A complex uncertainty was cast to float32 (imaginary part dropped) without an error."""
    with pytest.raises(error, match="uncertainty_fn must return") as info:
        make(propagation="mean", uncertainty_fn=bad, uncertainty_penalty=1.0).rollout(1)
    assert info.match(match)


@pytest.mark.parametrize("nan_policy", ["raise", "truncate"])
def test_negative_uncertainty_is_refused_on_every_path(nan_policy):
    """A negative uncertainty made MOPO's penalty a bonus (reward - lam * u grew) without an
    error; it is an error whatever nan_policy says (no extra host sync: it is part of the step's
    NaN check)."""
    def signed(obs):  # env 2 (of 8) gets a negative uncertainty
        u = obs[..., 0].std(0).clone()
        u[2] = -1.0
        return u

    kwargs = dict(propagation="mean", uncertainty_fn=signed, uncertainty_penalty=1.0, nan_policy=nan_policy)
    with pytest.raises(ValueError, match=r"uncertainty_fn returned negative values in env rows \[2\]"):
        make(**kwargs).rollout(2, zero_policy)
    venv = make(**kwargs).to_gymnasium()
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="uncertainty_fn returned negative values"):
        venv.step(np.zeros((8, 2), np.float32))
    sb3 = make(**kwargs).to_sb3()
    sb3.reset()
    with pytest.raises(ValueError, match="uncertainty_fn returned negative values"):
        sb3.step(np.zeros((8, 2), np.float32))
    single = make(batch=(), propagation="mean", uncertainty_fn=lambda obs: -obs[..., 0].std(0),
                  uncertainty_penalty=1.0).to_gymnasium()
    single.reset(seed=0)
    with pytest.raises(ValueError, match="uncertainty_fn returned negative values"):
        single.step(np.zeros(2, np.float32))


def test_uncertainty_fn_values_integer_and_nonfinite():
    """An integer uncertainty reads as float32; NaN from uncertainty_fn goes through nan_policy,
    named as uncertainty_fn's output ('raise' errors, 'truncate' ends the episode)."""
    ints = make(propagation="mean", uncertainty_fn=lambda obs: torch.arange(8), uncertainty_penalty=1.0)
    td = ints.rollout(1, zero_policy)
    assert td["next", "uncertainty"].dtype == torch.float32
    torch.testing.assert_close(td["next", "uncertainty"][:, 0, 0], torch.arange(8.0))

    def nan_in_env_3(obs):
        u = obs[..., 0].std(0).clone()
        u[3] = math.nan
        return u

    with pytest.raises(ValueError, match=r"uncertainty \(uncertainty_fn's output\)"):
        make(propagation="mean", uncertainty_fn=nan_in_env_3).rollout(1, zero_policy)
    td = make(propagation="mean", uncertainty_fn=nan_in_env_3, nan_policy="truncate").rollout(
        1, zero_policy, break_when_any_done=False)
    assert td["next", "truncated"][:, 0, 0].tolist() == [i == 3 for i in range(8)]


def test_a_start_from_given_states_carries_the_ensemble_entries_a_reset_writes():
    """reset(td, set_state=True) on an ensemble env writes "uncertainty" (0) and "halted"
    (False) as env.reset() does, so the rollout's first step carries them at the root (before,
    they were missing from the reset and from the trajectory's root keys)."""
    env = make()
    td0 = env.reset()
    start = TensorDict({"model_state": td0["model_state"].clone()}, batch_size=[8])
    td = env.reset(start, set_state=True)
    assert set(td.keys()) == set(td0.keys())
    assert torch.equal(td["uncertainty"], torch.zeros(8, 1)) and not td["halted"].any()
    rollout = env.rollout(3, tensordict=td, auto_reset=False)
    assert {"uncertainty", "halted"} <= set(rollout.keys())
    torch.testing.assert_close(rollout["uncertainty"][:, 1:], rollout["next", "uncertainty"][:, :-1])


def test_a_start_from_a_steps_entries_is_not_halted():
    """reset(td, set_state=True) from a step's "next" entries (a replay of imagined steps) whose
    rows halted: the start's done flags are False and so are "halted", "nonfinite" and
    "uncertainty" (0), "continue_prob" 1, as env.reset() writes them: a start has halted
    nothing (before: the given values were kept next to terminated=False, so the rollout's
    first root read halted=True, a truncated row's nonfinite, a continue probability < 1)."""
    # every step halts; the continue head gives 0.25 (and 0 where a row ends)
    env = make(uncertainty_threshold=0.0, nan_policy="truncate",
               continue_fn=lambda next_state: torch.full(next_state.shape[:-1], 0.25))
    step = env.rollout(1, zero_policy, break_when_any_done=False)["next"][:, 0]
    assert step["halted"].all() and (step["uncertainty"] > 0).all() and (step["continue_prob"] < 1).all()
    given = step.clone().set("nonfinite", torch.ones(8, 1, dtype=torch.bool))  # as a truncated row's
    start = env.reset(given, set_state=True)
    fresh = env.reset()
    for key in ("done", "terminated", "truncated", "nonfinite", "halted", "uncertainty", "continue_prob"):
        assert torch.equal(start[key], fresh[key]), key
    torch.testing.assert_close(start["model_state"], step["model_state"])
