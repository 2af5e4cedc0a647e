"""``WorldModelEnv.rollout``'s fast path against TorchRL's own ``EnvBase.rollout``.

Every case runs the same rollout twice, on two envs built alike with the same seed: once through
``env.rollout`` (the fast path) and once through ``EnvBase.rollout(env, ...)`` (TorchRL's general
path), and requires identical tensordicts: keys, shapes, dtypes, names, devices, values and the
gradients they give the policy's parameters.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.envs import EnvBase, StepCounter, TransformedEnv, step_mdp

from torchwm_rl import WorldModelEnv
from torchwm_rl.rollout import fast_rollout_applies
from torchwm_rl import trajectory as trajectory_module
from torchwm_rl.trajectory import Trajectory

OBS, ACT = 4, 2
BOX = gym.spaces.Box(-np.inf, np.inf, shape=(OBS,), dtype=np.float32)
ACTION = gym.spaces.Box(-1.0, 1.0, shape=(ACT,), dtype=np.float32)
DICT_OBS = gym.spaces.Dict(
    {"position": gym.spaces.Box(-np.inf, np.inf, shape=(OBS,), dtype=np.float32),
     "speed": gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)}
)


class Model(nn.Module):
    """Random starts (on the env's seeded stream), terminations where latent[0] > 0.6, and a NaN
    observation row where latent[1] > 0.2 when ``nan=True``."""

    def __init__(self, nan=False, state="tensor"):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(OBS + ACT, OBS)
        self.nan, self.state = nan, state

    def start(self, options):
        mask = (options or {}).get("reset_mask")
        return torch.randn(OBS if mask is None else (*mask.shape, OBS), device=self.net.weight.device)

    def wrap(self, latent):
        if self.state == "dict":
            return {"h": latent, "aux": {"c": latent[..., :1].double()}}
        if self.state == "tensordict":
            return TensorDict({"h": latent}, batch_size=latent.shape[:-1])
        return latent

    def unwrap(self, state):
        return state if isinstance(state, torch.Tensor) else state["h"]

    def step(self, state, action):
        latent = torch.tanh(self.net(torch.cat([self.unwrap(state), action], -1)))
        obs = latent
        if self.nan:
            obs = torch.where(latent[..., 1:2] > 0.2, torch.full_like(latent, float("nan")), latent)
        return self.wrap(latent), obs, latent.sum(-1), latent[..., 0] > 0.6


def reset_fn(model, seed=None, options=None):
    latent = model.start(options)
    return model.wrap(latent), latent


def transition_fn(model, state, action):
    nxt, obs, reward, terminated = model.step(state, action)
    return nxt, obs, reward, terminated, torch.zeros_like(terminated), {}


def dict_reset(model, seed=None, options=None):
    latent = model.start(options)
    return latent, {"position": latent, "speed": latent[..., :1].abs()}


def dict_transition(model, state, action):
    nxt, obs, reward, terminated = model.step(state, action)
    return nxt, {"position": obs, "speed": obs[..., :1].abs()}, reward, terminated, torch.zeros_like(terminated), {}


def make_env(batch=(3,), limits=(2, 3, 5), dict_obs=False, model=None, **kwargs):
    model = model if model is not None else Model()
    if batch and limits is not None:
        limits = torch.tensor(limits[: batch[0]])
    return WorldModelEnv(
        model, DICT_OBS if dict_obs else BOX, ACTION,
        reset_fn=dict_reset if dict_obs else reset_fn, transition_fn=dict_transition if dict_obs else transition_fn,
        batch_size=batch, max_episode_steps=limits, seed=3, **kwargs,
    )


def policy_module(in_key="observation"):
    torch.manual_seed(1)
    return TensorDictModule(nn.Sequential(nn.Linear(OBS, ACT), nn.Tanh()), in_keys=[in_key], out_keys=["action"])


def assert_identical(fast, general):
    assert type(fast) is type(general)
    assert fast.batch_size == general.batch_size and fast.device == general.device
    assert fast.names == general.names and fast["next"].names == general["next"].names
    keys = set(general.keys(True, True))
    assert set(fast.keys(True, True)) == keys
    for key in keys:
        a, b = fast.get(key), general.get(key)
        assert (a.shape, a.dtype, a.device, a.requires_grad) == (b.shape, b.dtype, b.device, b.requires_grad), key
        assert a.stride() == b.stride(), key  # the same memory layout, not just the same values
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{key}: {m}")


def both(make, *args, **kwargs):
    """(fast, general) rollouts of two envs from ``make()``, from the same seeds."""
    torch.manual_seed(7)  # random actions come from the global stream
    fast_env = make()
    assert fast_rollout_applies(fast_env, dict(kwargs, max_steps=args[0]))
    fast = fast_env.rollout(*args, **kwargs)
    torch.manual_seed(7)
    general = EnvBase.rollout(make(), *args, **kwargs)
    return fast, general


# ----------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("break_when_any_done", [False, True])
def test_partial_auto_resets_with_per_env_time_limits(break_when_any_done):
    policy = policy_module()
    fast, general = both(make_env, 12, policy, break_when_any_done=break_when_any_done)
    assert_identical(fast, general)
    if not break_when_any_done:
        assert fast.shape == (3, 12)
        assert fast["next", "done"].sum() > 3  # several episodes ended, at different steps
        assert fast["next", "terminated"].any() and fast["next", "truncated"].any()
    else:
        assert fast["next", "done"][:, -1].any() and not fast["next", "done"][:, :-1].any()


def test_every_env_done_at_once_is_a_full_reset():
    fast, general = both(lambda: make_env(limits=(2, 2, 2), model=Model()), 7, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert fast["next", "truncated"][:, 1].all()


def test_random_actions_without_policy():
    fast, general = both(make_env, 9, break_when_any_done=False)
    assert_identical(fast, general)


def test_tensordict_policy_that_is_not_a_plain_module():
    torch.manual_seed(1)
    net = TensorDictModule(nn.Linear(OBS, ACT), in_keys=["observation"], out_keys=["loc"])
    squash = TensorDictModule(torch.tanh, in_keys=["loc"], out_keys=["action"])
    policy = TensorDictSequential(net, squash)
    fast, general = both(make_env, 10, policy, break_when_any_done=False)
    assert_identical(fast, general)
    assert "loc" in fast.keys()


def test_plain_module_with_extra_out_keys_and_previous_action_in():
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(OBS, ACT)

        def forward(self, obs, previous):
            action = torch.tanh(self.lin(obs))
            if previous is not None:
                action = action + 0.1 * previous
            return action, action.norm(dim=-1, keepdim=True)

    policy = TensorDictModule(Net(), in_keys=["observation", "action"], out_keys=["action", "norm"])
    fast, general = both(make_env, 10, policy, break_when_any_done=False)
    assert_identical(fast, general)


def test_nan_policy_truncate_key():
    make = lambda: make_env(model=Model(nan=True), nan_policy="truncate", limits=None)  # noqa: E731
    fast, general = both(make, 12, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert fast["next", "nonfinite"].any() and "nonfinite" in fast.keys()


def test_dict_observations():
    make = lambda: make_env(dict_obs=True)  # noqa: E731
    fast, general = both(make, 10, policy_module("position"), break_when_any_done=False)
    assert_identical(fast, general)


@pytest.mark.parametrize("kind", ["dict", "tensordict"])
def test_dict_and_tensordict_model_states(kind):
    make = lambda: make_env(model=Model(state=kind))  # noqa: E731
    fast, general = both(make, 10, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert ("model_state", "h") in fast.keys(True)


@pytest.mark.parametrize("kind", ["tensor", "dict"])
def test_another_state_key(kind):
    """``state_key="state"`` (TorchRL's Dreamer losses): the model state travels under "state" on
    both paths, through partial auto-resets and from given start states."""
    make = lambda: make_env(model=Model(state=kind), state_key="state")  # noqa: E731
    fast, general = both(make, 10, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert "state" in fast.keys() and "model_state" not in fast.keys(True)
    assert fast["next", "done"].any()  # auto-resets happened
    torch.testing.assert_close(fast["next", "state"][:, 0] if kind == "tensor" else fast["next", "state", "h"][:, 0],
                               fast["next", "observation"][:, 0])
    # from given start states of another batch, no auto-reset
    make = lambda: make_env(model=Model(state=kind), state_key="state", limits=None)  # noqa: E731
    torch.manual_seed(2)
    latent = torch.randn(5, OBS)
    start = make().reset(TensorDict({"state": Model(state=kind).wrap(latent), "observation": latent}, [5]),
                         set_state=True)
    fast, general = both(make, 4, policy_module(), break_when_any_done=False, auto_reset=False, tensordict=start)
    assert_identical(fast, general)
    torch.testing.assert_close(fast[:, 0].get("state"), start.get("state"))


@pytest.mark.parametrize("break_when_any_done", [False, True])
def test_unbatched_env(break_when_any_done):
    make = lambda: make_env(batch=(), limits=3)  # noqa: E731
    fast, general = both(make, 8, policy_module(), break_when_any_done=break_when_any_done)
    assert_identical(fast, general)


def test_gradients_reach_the_policy_parameters_alike():
    policy = policy_module()
    fast, general = both(make_env, 8, policy, break_when_any_done=False)
    assert_identical(fast, general)
    grads = [torch.autograd.grad(td["next", "reward"].sum(), list(policy.parameters())) for td in (fast, general)]
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():
    make = lambda: make_env(model=Model().cuda())  # noqa: E731
    policy = policy_module().cuda()
    fast, general = both(make, 10, policy, break_when_any_done=False)
    assert fast.device.type == "cuda"
    assert_identical(fast, general)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_general_path_keeps_the_graph_on_cuda():
    """``Tensor.is_shared()`` is True for every CUDA tensor: the step must not read it as "a
    multi-process worker" and detach, or no gradient reaches the policy on a GPU."""
    env = make_env(model=Model().cuda())
    policy = policy_module().cuda()
    out = EnvBase.rollout(env, 5, policy, break_when_any_done=False)
    out["next", "reward"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_no_grad_builds_no_graph():
    with torch.no_grad():
        fast, general = both(make_env, 5, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert not fast["action"].requires_grad


@pytest.mark.parametrize("auto_reset", [False, True])
def test_continuing_from_a_tensordict(auto_reset):
    """The collection pattern: the next rollout starts from ``step_mdp`` of the last step."""
    policy = policy_module()
    outs = []
    for rollout in (lambda env, *a, **k: env.rollout(*a, **k), lambda env, *a, **k: EnvBase.rollout(env, *a, **k)):
        env = make_env()
        first = rollout(env, 4, policy, break_when_any_done=False)
        start = step_mdp(first[..., -1])
        assert fast_rollout_applies(env, dict(max_steps=6, auto_reset=auto_reset, tensordict=start))
        outs.append(rollout(env, 6, policy, break_when_any_done=False, auto_reset=auto_reset, tensordict=start))
    assert_identical(*outs)


def test_the_fast_path_is_taken_only_where_it_applies():
    env = make_env()
    base = dict(max_steps=3, tensordict=None)
    assert fast_rollout_applies(env, base)
    for extra in (
        {"callback": lambda env, td: None},
        {"out": TensorDict()},
        {"break_when_all_done": True},
        {"set_truncated": True},
        {"auto_cast_to_device": True},
        {"storing_device": "cpu"},
        {"tensordict": TensorDict({"unknown": torch.zeros(3)}, batch_size=[3])},
        {"max_steps": 0},
    ):
        assert not fast_rollout_applies(env, dict(base, **extra)), extra

    class Stepped(WorldModelEnv):
        def _step(self, tensordict):
            return super()._step(tensordict)

    sub = Stepped(Model(), BOX, ACTION, reset_fn=reset_fn, transition_fn=transition_fn, batch_size=(3,))
    assert not fast_rollout_applies(sub, base)


def test_fallback_cases_still_run():
    env = make_env()
    seen = []
    td = env.rollout(4, policy_module(), lambda env, td: seen.append(td), break_when_any_done=False)
    assert td.shape == (3, 4) and len(seen) == 3
    td = env.rollout(6, policy_module(), break_when_all_done=True)
    assert td.shape[0] == 3


def test_transformed_env_is_unchanged():
    """A TransformedEnv runs TorchRL's rollout over the env's step: same data as before."""
    policy = policy_module()
    outs = []
    for _ in range(2):
        env = TransformedEnv(make_env(), StepCounter())
        outs.append(env.rollout(8, policy, break_when_any_done=False))
    assert_identical(*outs)
    torch.testing.assert_close(outs[0]["next", "step_count"], outs[0]["next", "elapsed_steps"])


def test_partial_resets_keep_the_envs_own_states_unchecked():
    """The rows a partial reset keeps are the env's running states, not given start states: a
    model whose steps return a float64 state after a float32 reset runs through partial resets
    on both paths alike (the general path used to refuse its own states there)."""
    weight = torch.ones(OBS, dtype=torch.float64)

    def make():
        return WorldModelEnv(
            object(), BOX, ACTION, batch_size=(4,), seed=0,
            reset_fn=lambda batch_size=(): torch.arange(4.0).reshape(4, 1).expand(4, OBS).clone(),
            transition_fn=lambda m, s, a: (s * weight + 1, (s + 1).float(), s.sum(-1).float(), s[..., 0] >= 3,
                                           torch.zeros(s.shape[:-1], dtype=torch.bool), {}),
        )

    fast = make().rollout(5, break_when_any_done=False)
    general = EnvBase.rollout(make(), 5, break_when_any_done=False)
    assert fast["next", "done"].any() and not fast["next", "done"].all()  # partial resets happened
    torch.testing.assert_close(fast["next", "reward"], general["next", "reward"])


# ------------------------------------------- per-env scalars, ensembles, info keys, batches
E = 3


class EnsembleModel(Model):
    """E members: member k adds 0.1 * k to the latent; an info value per env."""

    def step(self, state, action):
        latent = torch.tanh(self.net(torch.cat([state, action], -1)))
        members = torch.stack([latent + 0.1 * k for k in range(E)])
        return {"state": members, "observation": members, "reward": members.sum(-1),
                "terminated": members[..., 0] > 0.6, "info": {"spread": latent[..., :1] * 2}}


def ensemble_transition(model, state, action):
    return model.step(state, action)


@pytest.mark.parametrize("propagation", ["random", "fixed", "mean"])
def test_ensembles_and_info_keys(propagation):
    """The per-env scalars of an ensemble ("uncertainty", "halted") and a declared info value
    come out of the fast path as out of TorchRL's rollout."""
    make = lambda: WorldModelEnv(  # noqa: E731
        EnsembleModel(), BOX, ACTION, reset_fn=reset_fn, transition_fn=ensemble_transition, batch_size=(3,),
        max_episode_steps=torch.tensor([2, 3, 5]), seed=3, ensemble_size=E, propagation=propagation,
        uncertainty_threshold=0.25, uncertainty_penalty=0.5, info_keys=["spread"],
    )
    fast, general = both(make, 10, policy_module(), break_when_any_done=False)
    assert_identical(fast, general)
    assert fast["next", "uncertainty"].shape == (3, 10, 1) and fast["next", "spread"].shape == (3, 10, 1)


def test_an_observation_key_named_like_another_envs_scalar():
    """"halted" is a per-env scalar only in an ensemble env; here it is a Dict observation key
    of shape (2,) and must stay one."""
    space = gym.spaces.Dict({"position": BOX, "halted": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)})

    def reset(model, seed=None, options=None):
        latent = model.start(options)
        return latent, {"position": latent, "halted": latent[..., :2]}

    def transition(model, state, action):
        nxt, obs, reward, terminated = model.step(state, action)
        return nxt, {"position": obs, "halted": obs[..., 2:]}, reward, terminated, torch.zeros_like(terminated), {}

    make = lambda: WorldModelEnv(Model(), space, ACTION, reset_fn=reset, transition_fn=transition,  # noqa: E731
                                 batch_size=(3,), max_episode_steps=4, seed=3)
    fast, general = both(make, 9, policy_module("position"), break_when_any_done=False)
    assert_identical(fast, general)
    assert fast["halted"].shape == (3, 9, 2)


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_start_states_of_another_batch(batch):
    """Batch-unlocked: a rollout from given start states of another batch (flattened into one
    model call per step when it has more dims)."""
    policy = policy_module()
    latent = torch.randn(*batch, OBS, generator=torch.Generator().manual_seed(0))
    false = torch.zeros(*batch, 1, dtype=torch.bool)
    start = TensorDict({"model_state": latent, "observation": latent.clone(), "elapsed_steps": torch.zeros(*batch, 1,
                        dtype=torch.int64), "done": false, "terminated": false.clone(), "truncated": false.clone()},
                       batch_size=batch)
    outs = []
    for rollout in (lambda env, *a, **k: env.rollout(*a, **k), lambda env, *a, **k: EnvBase.rollout(env, *a, **k)):
        env = make_env(limits=None)
        outs.append(rollout(env, 6, policy, break_when_any_done=False, auto_reset=False, tensordict=start.clone()))
    assert_identical(*outs)
    assert outs[0].shape == (*batch, 6)


# ------------------------------------------------------- the trajectory written in place
class _CountStacks(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.stacks = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.stack:
            self.stacks += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["tensor", "dict", "tensordict"])
@pytest.mark.parametrize("break_when_any_done", [False, True])
def test_the_trajectory_is_written_in_place_not_stacked(kind, break_when_any_done):
    """Each step is copied into [*B, T] buffers allocated at the first step: no torch.stack (the
    model stacks nothing) of the steps at the end, for tensor and nested model states, also when
    break_when_any_done stops early (the first steps, laid out as a stack's); the result is
    EnvBase.rollout's (before: the steps were stacked at the end)."""
    make = lambda: make_env(model=Model(state=kind))  # noqa: E731
    policy = policy_module()
    torch.manual_seed(7)
    env = make()
    with torch.no_grad(), _CountStacks() as counter:
        fast = env.rollout(10, policy, break_when_any_done=break_when_any_done)
    assert counter.stacks == 0
    torch.manual_seed(7)
    with torch.no_grad():
        general = EnvBase.rollout(make(), 10, policy, break_when_any_done=break_when_any_done)
    assert_identical(fast, general)
    assert fast.shape[-1] < 10 if break_when_any_done else fast.shape[-1] == 10


@pytest.mark.parametrize("at", [0, 3])
def test_a_policy_that_writes_a_key_from_some_step_on_gives_envbase_rollouts_result(at):
    """Steps that do not fit the first step's buffers (a key that appears at step 3) are kept as
    lists from there and stacked as before (TorchRL's stacking of unequal steps)."""
    torch.manual_seed(1)
    net = nn.Linear(OBS, ACT)
    calls = []

    def policy(td):
        calls.append(1)
        td.set("action", torch.tanh(net(td["observation"])))
        if len(calls) > at:
            td.set("extra", torch.ones(td.batch_size))
        return td

    with torch.no_grad():
        torch.manual_seed(7)
        fast = make_env().rollout(8, policy, break_when_any_done=False)
        calls.clear()
        torch.manual_seed(7)
        general = EnvBase.rollout(make_env(), 8, policy, break_when_any_done=False)
    assert type(fast) is type(general)
    assert set(fast.keys(True, True)) == set(general.keys(True, True))
    for key in general.keys(True, True):
        torch.testing.assert_close(fast.get(key), general.get(key), rtol=0, atol=0, equal_nan=True)


def _never_ends(model, state, action):
    nxt, obs, reward, terminated = model.step(state, action)
    return nxt, obs, reward, torch.zeros_like(terminated), torch.zeros_like(terminated), {}


@pytest.mark.parametrize("kind", ["tensor", "dict"])
def test_a_rollout_that_may_stop_early_grows_its_buffers(kind):
    """break_when_any_done: the buffers start with room for a few steps and double when full, so
    the first time limit at step 70 (past two doublings) gives EnvBase.rollout's trajectory, and a
    huge max_steps allocates only what is used (before: [*B, max_steps] buffers up front, and
    max_steps=10**10 failed to allocate)."""
    def make():
        return WorldModelEnv(Model(state=kind), BOX, ACTION, reset_fn=reset_fn, transition_fn=_never_ends,
                             batch_size=(3,), max_episode_steps=torch.tensor([70, 80, 90]), seed=3)

    fast, general = both(make, 100, policy_module(), break_when_any_done=True)
    assert fast.shape == (3, 70)
    assert_identical(fast, general)
    with torch.no_grad():
        assert make().rollout(10**10, policy_module(), break_when_any_done=True).shape == (3, 70)


def _ensemble_env(**kwargs):
    return WorldModelEnv(EnsembleModel(), BOX, ACTION, reset_fn=reset_fn, transition_fn=ensemble_transition,
                         batch_size=(3,), max_episode_steps=torch.tensor([2, 3, 5]), seed=3, ensemble_size=E,
                         uncertainty_threshold=0.25, uncertainty_penalty=0.5, info_keys=["spread"], **kwargs)


_IN_PLACE_CASES = {
    "dict observations": (lambda: make_env(dict_obs=True), "position", False),
    "nan_policy truncate, time limits": (lambda: make_env(model=Model(nan=True), nan_policy="truncate"), None, False),
    "truncate, dict state": (lambda: make_env(model=Model(nan=True, state="dict"), nan_policy="truncate"), None, False),
    "ensemble and info keys": (lambda: _ensemble_env(propagation="random"), None, False),
    "reset_schedule every_step": (lambda: make_env(reset_schedule="every_step"), None, False),
    "stops at step 0": (lambda: make_env(limits=(1, 3, 5)), None, True),
    "stops at the last step": (lambda: make_env(limits=(12, 13, 15)), None, True),
    "stops when the first buffers are full": (
        lambda: WorldModelEnv(Model(), BOX, ACTION, reset_fn=reset_fn, transition_fn=_never_ends, batch_size=(3,),
                              max_episode_steps=Trajectory.FIRST_CAPACITY, seed=3), None, True),
}


@pytest.mark.parametrize("case", sorted(_IN_PLACE_CASES))
def test_the_in_place_trajectory_gives_envbase_rollouts_result(case, monkeypatch):
    """Without grad the steps are written into preallocated buffers (no stack at the end); the
    cases above otherwise run with grad (values that require grad are kept as lists), so here
    each one runs through the buffers and must give EnvBase.rollout's tensordict."""
    make, in_key, break_when_any_done = _IN_PLACE_CASES[case]
    policy = policy_module(in_key or "observation")
    def no_lists(*args, **kwargs):
        raise AssertionError("the steps were kept as lists, not written into the buffers")

    torch.manual_seed(7)
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(trajectory_module, "stack_steps", no_lists)
        fast = make().rollout(12, policy, break_when_any_done=break_when_any_done)
    torch.manual_seed(7)
    with torch.no_grad():
        general = EnvBase.rollout(make(), 12, policy, break_when_any_done=break_when_any_done)
    assert_identical(fast, general)
