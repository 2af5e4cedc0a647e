"""The TorchRL path used as TorchRL users use an env: ``rollout``, transforms, a collector with a
``TensorDictModule`` policy, seeding, time limits, devices, and differentiable imagination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import ObservationNorm, StepCounter, TransformedEnv
from torchrl.envs.utils import check_env_specs, step_mdp

from torchwm_rl import WorldModelEnv

from models import OBS_DIM, ACT_DIM, VectorModel, reset_world_model, transition_world_model, vector_spaces


def make_env(batch_size=(), **kwargs):
    obs_space, act_space = vector_spaces()
    kwargs.setdefault("reset_fn", reset_world_model)
    kwargs.setdefault("transition_fn", transition_world_model)
    model = kwargs.pop("model", None) or VectorModel()
    return WorldModelEnv(model, obs_space, act_space, batch_size=batch_size, **kwargs)


def mlp_policy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(OBS_DIM, 16), nn.Tanh(), nn.Linear(16, ACT_DIM), nn.Tanh())
    return TensorDictModule(net, in_keys=["observation"], out_keys=["action"])


def fixed_policy(actions):
    it = iter(actions)
    return lambda td: td.set("action", torch.as_tensor(next(it)))


# ----------------------------------------------------------------------------------- rollout
@pytest.mark.parametrize("batch", [(), (4,)], ids=str)
def test_rollout_shapes_and_keys(batch):
    env = make_env(batch, max_episode_steps=100)
    td = env.rollout(7, mlp_policy())
    assert td.batch_size == (*batch, 7)
    assert td["observation"].shape == (*batch, 7, OBS_DIM)
    assert td["action"].shape == (*batch, 7, ACT_DIM)
    for key in ("reward", "done", "terminated", "truncated"):
        assert td["next", key].shape == (*batch, 7, 1), key
    assert td["next", "reward"].dtype == torch.float32
    assert td["next", "done"].dtype == torch.bool
    # the model state travels in the tensordict: the rollout is functional
    assert td["model_state"].shape == (*batch, 7, OBS_DIM)
    torch.testing.assert_close(td[..., 1:]["model_state"], td[..., :-1]["next", "model_state"])
    assert td["next", "elapsed_steps"][..., -1, 0].tolist() == ([7] * batch[0] if batch else 7)


def test_rollout_stops_at_the_first_done_by_default():
    env = make_env(max_episode_steps=3)
    td = env.rollout(10, mlp_policy())
    assert td.batch_size == (3,)
    assert td["next", "truncated"].squeeze(-1).tolist() == [False, False, True]
    assert not td["next", "terminated"].any()


def test_rollout_without_policy_uses_random_actions_in_the_spec():
    env = make_env(max_episode_steps=50)
    td = env.rollout(5)
    assert env.action_spec.is_in(td["action"][0])


def test_rollout_through_done_auto_resets():
    env = make_env(max_episode_steps=3)
    td = env.rollout(9, mlp_policy(), break_when_any_done=False)
    assert td["next", "truncated"].squeeze(-1).nonzero().flatten().tolist() == [2, 5, 8]
    assert td["elapsed_steps"].squeeze(-1).tolist() == [0, 1, 2] * 3
    # after the reset the rollout continues from the reset observation, not the last one (this
    # toy reset is deterministic, so every episode starts where the first did)
    torch.testing.assert_close(td[3]["observation"], td[0]["observation"])
    assert not torch.equal(td[3]["observation"], td[2]["next", "observation"])


def test_step_and_maybe_reset_and_step_mdp():
    env = make_env(max_episode_steps=2)
    td = env.reset()
    for _ in range(5):
        td = env.rand_action(td)
        out, td = env.step_and_maybe_reset(td)
        assert out["next", "elapsed_steps"].item() in (1, 2)
    assert td["elapsed_steps"].item() in (0, 1)


# -------------------------------------------------------------------------------- transforms
def test_step_counter_transform():
    env = TransformedEnv(make_env(), StepCounter())
    td = env.rollout(6, mlp_policy())
    assert td["next", "step_count"].squeeze(-1).tolist() == [1, 2, 3, 4, 5, 6]
    check_env_specs(env, seed=0)


def test_step_counter_max_steps_truncates_before_the_env_limit():
    env = TransformedEnv(make_env(max_episode_steps=50), StepCounter(max_steps=4))
    td = env.rollout(10, mlp_policy())
    assert td.batch_size == (4,) and bool(td[-1]["next", "truncated"])


def test_batched_step_counter_and_partial_reset():
    env = TransformedEnv(make_env((3,), max_episode_steps=torch.tensor([2, 3, 4])), StepCounter())
    td = env.rollout(8, mlp_policy(), break_when_any_done=False)
    truncated = td["next", "truncated"].squeeze(-1)
    assert truncated.sum(-1).tolist() == [4, 2, 2]  # each env ends at its own limit
    assert td["next", "step_count"][0].squeeze(-1).tolist() == [1, 2] * 4


def test_observation_transforms_do_not_change_what_the_model_is_fed():
    # The model's state travels under its own key, so a transform that rewrites "observation"
    # (normalization, here) changes what the policy sees, never the state the model steps from.
    actions = torch.rand(6, ACT_DIM, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain = make_env(seed=0).rollout(6, fixed_policy(actions))
    normed = TransformedEnv(make_env(seed=0), ObservationNorm(loc=3.0, scale=10.0, in_keys=["observation"]))
    td = normed.rollout(6, fixed_policy(actions))
    torch.testing.assert_close(td["next", "model_state"], plain["next", "model_state"])
    torch.testing.assert_close(td["next", "reward"], plain["next", "reward"])
    torch.testing.assert_close(td["next", "observation"], plain["next", "observation"] * 10.0 + 3.0)


# -------------------------------------------------------------------------------- collectors
@pytest.mark.parametrize("batch", [(), (2,)], ids=str)
def test_collector_with_tensordict_module_policy(batch):
    env = make_env(batch, max_episode_steps=5, seed=0)
    policy = mlp_policy()
    # True: TorchRL 0.15's default (appends InitTracker to the env)
    collector = Collector(env, policy, frames_per_batch=10, total_frames=30, auto_register_policy_transforms=True)
    batches = []
    for data in collector:
        batches.append(data)
    collector.shutdown()
    assert len(batches) == 3
    for data in batches:
        assert data.numel() == 10
        assert data["action"].shape[-1] == ACT_DIM
        assert ("next", "reward") in data.keys(True)
        assert data["next", "truncated"].any()  # 10 frames cross the 5-step limit
        assert not data["action"].requires_grad  # the collector ran the policy without grad
        assert "is_init" in data.keys()  # the appended InitTracker works on this env


def test_collector_from_env_factory():
    collector = Collector(lambda: make_env(max_episode_steps=4), mlp_policy(), frames_per_batch=8, total_frames=8,
                          auto_register_policy_transforms=False)
    data = next(iter(collector))
    collector.shutdown()
    assert data.numel() == 8 and data["next", "truncated"].sum() == 2


# ---------------------------------------------------------------------------------- seeding
def _random_reset(model, seed=None, options=None):
    """A reset that draws from the torch generator it is given a seed for."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    latent = torch.rand(OBS_DIM, generator=g) * 2 - 1
    return latent, latent


def test_set_seed_makes_rollouts_reproducible():
    actions = np.random.default_rng(0).uniform(-1, 1, (6, ACT_DIM)).astype(np.float32)
    runs = []
    for seed in (3, 3, 4):
        env = make_env(reset_fn=_random_reset, max_episode_steps=3)
        next_seed = env.set_seed(seed)
        assert isinstance(next_seed, int)
        runs.append(env.rollout(6, fixed_policy(actions), break_when_any_done=False))
    assert (runs[0] == runs[1]).all()
    assert not torch.equal(runs[0]["observation"], runs[2]["observation"])


def test_reset_seed_makes_reset_reproducible():
    env = make_env(reset_fn=_random_reset)
    a = env.reset(seed=11)["observation"]
    b = env.reset(seed=11)["observation"]
    c = env.reset(seed=12)["observation"]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_constructor_seed_reaches_the_first_reset_only():
    seeds = []

    def reset(seed=None, options=None):
        seeds.append(seed)
        return torch.zeros(OBS_DIM)

    env = make_env(reset_fn=reset, seed=5)
    seeds.clear()  # construction probes the reset hook
    env.reset()
    env.reset()
    assert seeds == [5, None]


# ------------------------------------------------------------------------------- time limits
def test_max_episode_steps_gymnasium_timelimit_semantics():
    """truncated at the limit; a termination on the limit step is reported as both (as
    Gymnasium's TimeLimit does); done = terminated | truncated."""
    env = make_env(max_episode_steps=3, terminal_fn=lambda next_state: torch.tensor(False),
                   transition_fn=lambda m, s, a: dict.fromkeys(("state", "observation"), m.predict_next_state(s, a)))
    td = env.rollout(3, mlp_policy())
    assert td["next", "truncated"].squeeze(-1).tolist() == [False, False, True]
    assert td["next", "done"].squeeze(-1).tolist() == [False, False, True]
    assert not td["next", "terminated"].any()

    calls = []

    def terminal(next_state):
        calls.append(1)
        return torch.tensor(len(calls) == 3)

    env = make_env(max_episode_steps=3, terminal_fn=terminal,
                   transition_fn=lambda m, s, a: dict.fromkeys(("state", "observation"), m.predict_next_state(s, a)))
    td = env.rollout(3, mlp_policy())
    last = td[-1]["next"]
    assert bool(last["terminated"]) and bool(last["truncated"]) and bool(last["done"])


def test_no_limit_never_truncates():
    env = make_env()
    td = env.rollout(30, mlp_policy())
    assert td.batch_size == (30,) or td["next", "terminated"].any()
    assert not td["next", "truncated"].any()


def test_bad_max_episode_steps_is_refused():
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env(max_episode_steps=0)
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env((3,), max_episode_steps=[1, 2])


# ----------------------------------------------------------------------------------- devices
def test_env_device_follows_the_model():
    model = VectorModel()
    env = make_env(model=model)
    device = next(model.parameters()).device
    assert env.device == device and env.adapter.device == device
    td = env.rollout(3, mlp_policy())
    for key in ("observation", "action", ("next", "reward"), "model_state"):
        assert td[key].device == device, key


def test_explicit_cpu_device():
    env = make_env(device="cpu")
    assert env.device == torch.device("cpu")
    assert env.reset()["observation"].device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_on_cuda_env_on_cuda():
    model = VectorModel().cuda()

    def reset(model, seed=None, options=None):
        latent = model.sample_initial_state(seed=seed).cuda()
        return latent, latent

    env = make_env(model=model, reset_fn=reset)
    assert env.device.type == "cuda"
    td = env.rollout(3, mlp_policy().cuda())
    assert td["observation"].device.type == "cuda" and td["next", "reward"].device.type == "cuda"
    check_env_specs(env, seed=0)


# ------------------------------------------------------------------------ differentiable use
def test_rollout_is_differentiable_with_grad_enabled():
    """Nothing on the TorchRL path disables grad: imagined returns back-propagate into the
    policy (Dreamer-style actor learning)."""
    env = make_env(max_episode_steps=10)
    policy = mlp_policy()
    td = env.rollout(5, policy)
    td["next", "reward"].sum().backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


def test_no_grad_rollout_builds_no_graph():
    env = make_env()
    with torch.no_grad():
        td = env.rollout(3, mlp_policy())
    assert not td["next", "reward"].requires_grad and not td["model_state"].requires_grad


def test_step_does_not_mutate_the_input_tensordict():
    env = make_env()
    td = env.reset()
    td = env.rand_action(td)
    before = td.clone()
    out = env.step(td)
    assert (td.exclude("next") == before).all()
    nxt = step_mdp(out)
    assert nxt["elapsed_steps"].item() == 1


def test_batched_auto_reset_keeps_other_envs_exact():
    """When one env ends inside a batched rollout, only its row restarts: every other env
    continues from its exact next observation, model state and step count; the reset hook
    receives the mask of the rows being reset."""
    masks = []

    def reset(model, seed=None, options=None):
        masks.append(options["reset_mask"].clone())
        return reset_world_model(model, seed=len(masks), options=options)  # fresh values each call

    env = make_env((3,), reset_fn=reset, max_episode_steps=torch.tensor([2, 3, 5]))
    masks.clear()
    td = env.rollout(6, mlp_policy(), break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    for t in range(5):
        for i in range(3):
            if done[i, t]:
                assert int(td[i, t + 1]["elapsed_steps"]) == 0
                assert not torch.equal(td[i, t + 1]["observation"], td[i, t]["next", "observation"])
            else:
                for key in ("observation", "model_state", "elapsed_steps"):
                    torch.testing.assert_close(td[i, t + 1][key], td[i, t]["next", key])
    # masks[0] is the rollout's initial full reset; then env 0 ends at t=1, 3, 5, env 1 at
    # t=2, 5 and env 2 at t=4 (the rollout does not reset after its last step)
    assert [m.tolist() for m in masks] == [
        [True, True, True], [True, False, False], [False, True, False], [True, False, False],
        [False, False, True],
    ]


# ------------------------------------------------------------- stochastic models and seeding
class NoisyModel(VectorModel):
    """Samples from the GLOBAL torch RNG in reset and step, as many latent models do."""

    def reset(self, seed=None, options=None):
        mask = (options or {}).get("reset_mask")
        latent = torch.rand(OBS_DIM if mask is None else (len(mask), OBS_DIM)) * 2 - 1
        return latent, latent

    def step(self, state, action):
        nxt = (self.predict_next_state(state, action) + 0.1 * torch.randn_like(state)).clamp(-1, 1)
        return {"state": nxt, "observation": nxt}


def _noisy_rollout(seed, actions, **kwargs):
    env = make_env(model=NoisyModel(), reset_fn=None, transition_fn=None, max_episode_steps=4, **kwargs)
    if seed is not None:
        env.set_seed(seed)
    return env.rollout(len(actions), fixed_policy(actions), break_when_any_done=False)


def test_seed_makes_a_global_rng_model_reproducible():
    """Once seeded, the model's torch.rand* calls draw from the env's own stream."""
    actions = np.random.default_rng(0).uniform(-1, 1, (9, ACT_DIM)).astype(np.float32)
    a, b, c = _noisy_rollout(1, actions), _noisy_rollout(1, actions), _noisy_rollout(2, actions)
    assert (a == b).all()  # across episode boundaries (auto-resets) too
    assert not torch.equal(a["next", "observation"], c["next", "observation"])
    env = make_env(model=NoisyModel(), reset_fn=None, transition_fn=None)
    torch.testing.assert_close(env.reset(seed=5)["observation"], env.reset(seed=5)["observation"])


def test_seeded_env_leaves_the_global_rng_alone():
    actions = np.zeros((5, ACT_DIM), dtype=np.float32)
    env = make_env(model=NoisyModel(), reset_fn=None, transition_fn=None, max_episode_steps=4, seed=1)
    torch.manual_seed(123)  # (after building the toy model: its constructor seeds torch)
    expected = torch.rand(3)
    torch.manual_seed(123)
    env.rollout(len(actions), fixed_policy(actions), break_when_any_done=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_unseeded_env_uses_the_global_rng():
    actions = np.zeros((5, ACT_DIM), dtype=np.float32)
    torch.manual_seed(7)
    a = _noisy_rollout(None, actions)
    torch.manual_seed(7)
    b = _noisy_rollout(None, actions)
    assert (a == b).all()


def test_failed_step_does_not_advance_the_model_stream():
    calls = []

    def transition(model, state, action):
        noise = torch.rand(())
        calls.append(float(noise))
        if len(calls) == 1:
            raise RuntimeError("model blew up")
        return {"state": state + 0 * noise, "observation": state}

    env = make_env(transition_fn=transition, seed=3)
    td = env.rand_action(env.reset())
    with pytest.raises(RuntimeError, match="blew up"):
        env.step(td.clone())
    env.step(td.clone())
    assert calls[0] == calls[1]  # the retry drew the same number: the stream did not move


# ----------------------------------------------------------- a step count that went missing
def test_a_time_limit_refuses_a_missing_step_count():
    """Under ExcludeTransform("elapsed_steps") the step input has no step count: read as 0 the
    limit would never truncate. With a time limit it is refused, naming the key and the fix;
    without one a missing count is a start (0) and the env steps on."""
    from torchrl.envs import ExcludeTransform

    env = TransformedEnv(make_env((3,), max_episode_steps=5), ExcludeTransform("elapsed_steps"))
    with pytest.raises(KeyError, match=r"'elapsed_steps'.*time limit.*ExcludeTransform"):
        env.rollout(8, break_when_any_done=False)
    base = make_env((3,), max_episode_steps=5)
    with pytest.raises(KeyError, match=r"'elapsed_steps'.*time limit"):
        base.rand_step(base.reset().exclude("elapsed_steps"))
    # the kept envs of a partial reset keep their count: missing, refused too
    td = base.reset().exclude("elapsed_steps").set("_reset", torch.tensor([[True], [False], [False]]))
    with pytest.raises(KeyError, match=r"partial reset.*'elapsed_steps'.*time limit"):
        base.reset(td)
    # no time limit: the count is bookkeeping, a missing one starts at 0
    free = TransformedEnv(make_env((3,)), ExcludeTransform("elapsed_steps"))
    assert free.rollout(4, break_when_any_done=False)["next", "reward"].shape == (3, 4, 1)
