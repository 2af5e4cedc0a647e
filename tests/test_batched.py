"""Batched imagination on the TorchRL path: one model call per step for N envs, exact partial
resets (rollout, step_and_maybe_reset, collectors), per-env time limits with Gymnasium
semantics, start-state banks (also a bank as the only reset source, on both paths), gradients
through ``rollout`` and devices."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector

from drift_models import (
    ACT_SPACE, EPISODE_LENGTHS, LIMITS, N, OBS_SPACE, PUSH, START, DriftModel, Hooks, batched_env, single_env,
)
from models import VectorModel, reset_world_model, transition_world_model, vector_spaces
from torchwm_rl import GymWorldModelEnv, WorldModelEnv

T = 12


class Push(nn.Module):
    """Policy: the constant action PUSH for every env (so episode ends are predictable)."""

    def forward(self, observation):
        return torch.as_tensor(PUSH).expand(*observation.shape[:-1], 2).clone()


def push_policy():
    return TensorDictModule(Push(), in_keys=["observation"], out_keys=["action"])


def expected_done(t: int) -> list:
    """Which envs end at step t (1-based) when pushed from the start."""
    return [t % length == 0 for length in EPISODE_LENGTHS]


def assert_exact_partial_resets(data, hooks=None, first_reset_call: int = 0) -> None:
    """``data`` is a [N, T] trajectory. After each step, an env that ended restarts at its START
    with step count 0; every other env continues from exactly its ``next`` values. With
    ``hooks``, the reset hook saw exactly the rows that ended."""
    steps = data.shape[1]
    masks = iter(hooks.reset_masks[first_reset_call:]) if hooks is not None else None
    for t in range(steps - 1):
        done = data["next", "done"][:, t, 0]
        now, after = data["next"][:, t], data[:, t + 1]
        if done.any() and masks is not None:
            assert torch.equal(next(masks), done)
        for i in range(done.shape[0]):
            if done[i]:
                assert after["elapsed_steps"][i].item() == 0
                assert torch.equal(after["observation"][i], START[i])
                assert torch.equal(after["model_state"][i], START[i])
            else:
                assert after["elapsed_steps"][i].item() == now["elapsed_steps"][i].item()
                assert torch.equal(after["observation"][i], now["observation"][i])
                assert torch.equal(after["model_state"][i], now["model_state"][i])


def assert_pushed_episode_ends(data, steps_before: int = 0) -> None:
    for t in range(data.shape[1]):
        done = data["next", "done"][:, t, 0].tolist()
        assert done == expected_done(steps_before + t + 1), f"step {steps_before + t + 1}"


# ------------------------------------------------------------------ one model call per step
def test_rollout_calls_the_transition_once_per_step_with_the_whole_batch():
    env, hooks = batched_env()
    resets_before = len(hooks.reset_masks)
    data = env.rollout(T, push_policy(), break_when_any_done=False)
    assert hooks.transition_shapes == [(N, 2)] * T
    # one full reset at the start, then one (partial) reset call per step where any env ended
    steps_with_an_end = int(data["next", "done"][:, :-1].any(0).sum())
    assert len(hooks.reset_masks) - resets_before == 1 + steps_with_an_end
    assert all(mask.shape == (N,) for mask in hooks.reset_masks)


def test_step_and_maybe_reset_calls_the_transition_once_per_step():
    env, hooks = batched_env(limits=None)
    td = env.reset()
    for _ in range(4):
        td.set("action", env.action_spec.rand())
        _, td = env.step_and_maybe_reset(td)
    assert hooks.transition_shapes == [(N, 2)] * 4


# --------------------------------------------------------------------------- partial resets
def test_rollout_restarts_only_finished_envs_exactly():
    env, hooks = batched_env()
    first = len(hooks.reset_masks)
    data = env.rollout(T, push_policy(), break_when_any_done=False)
    assert data.batch_size == (N, T)
    assert_pushed_episode_ends(data)
    assert torch.equal(hooks.reset_masks[first], torch.ones(N, dtype=torch.bool))  # the initial reset
    assert_exact_partial_resets(data, hooks, first + 1)


def test_step_and_maybe_reset_restarts_only_finished_envs_exactly():
    env, hooks = batched_env()
    td = env.reset()
    first = len(hooks.reset_masks)
    steps = []
    for _ in range(T):
        td = push_policy()(td)
        data, td = env.step_and_maybe_reset(td)
        steps.append(data)
    data = torch.stack(steps, dim=1)
    assert_pushed_episode_ends(data)
    assert_exact_partial_resets(data, hooks, first)


def test_collector_restarts_only_finished_envs_exactly():
    env, hooks = batched_env()
    collector = Collector(env, push_policy(), frames_per_batch=N * T, total_frames=2 * N * T,
                          auto_register_policy_transforms=True)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    for k, data in enumerate(batches):
        assert data.batch_size == (N, T)
        # the collector carries episodes across batches: its step count decides the ends
        steps_before = data["elapsed_steps"][:, 0, 0].clone()
        for t in range(T):
            done = data["next", "done"][:, t, 0]
            elapsed = data["next", "elapsed_steps"][:, t, 0]
            assert torch.equal(done, elapsed % torch.tensor(EPISODE_LENGTHS) == 0)
        if k == 0:
            assert steps_before.tolist() == [0] * N
    # every reset the hook saw (after the first, full one) matches the rows that ended
    assert hooks.transition_shapes == [(N, 2)] * (2 * T)  # one model call per step, all N envs
    data = torch.cat(batches, dim=1)
    ended = [data["next", "done"][:, t, 0] for t in range(2 * T - 1) if data["next", "done"][:, t].any()]
    masks = [m for m in hooks.reset_masks if not m.all()]
    assert len(masks) >= 1
    for mask in masks:
        assert any(torch.equal(mask, e) for e in ended)
    for k in range(2):
        assert_exact_partial_resets(batches[k])


def test_reset_with_a_mask_keeps_other_rows_state_observation_and_step_count():
    env, hooks = batched_env(limits=None)
    td = env.reset()
    for _ in range(2):
        td = env.step(push_policy()(td))["next"].clone()
        td = td.exclude("reward", "done", "terminated", "truncated")
    mask = torch.tensor([True, False, True, False, False])
    before = td.clone()
    td.set("_reset", mask.unsqueeze(-1))
    after = env.reset(td)
    assert torch.equal(hooks.reset_masks[-1], mask)
    for i in range(N):
        if mask[i]:
            assert torch.equal(after["observation"][i], START[i]) and after["elapsed_steps"][i].item() == 0
        else:
            assert torch.equal(after["observation"][i], before["observation"][i])
            assert torch.equal(after["model_state"][i], before["model_state"][i])
            assert after["elapsed_steps"][i].item() == 2


# ------------------------------------------------------------------------ per-env time limits
def test_per_env_time_limits_follow_gymnasium_timelimit():
    """Each row's (terminated, truncated) equals a single env wrapped in Gymnasium's TimeLimit
    with that row's limit (terminated stays as the model said; truncated when the count is
    reached, also on the step the model terminates)."""
    env, _ = batched_env()
    with torch.no_grad():
        data = env.rollout(T, push_policy(), break_when_any_done=False)
    for i in range(N):
        single = gym.wrappers.TimeLimit(single_env(i), max_episode_steps=LIMITS[i])
        single.reset(seed=0)
        for t in range(T):
            obs, reward, terminated, truncated, _ = single.step(PUSH)
            assert np.array_equal(obs, data["next", "observation"][i, t].numpy()), (i, t)
            assert reward == data["next", "reward"][i, t, 0].item()
            assert terminated == data["next", "terminated"][i, t, 0].item(), (i, t)
            assert truncated == data["next", "truncated"][i, t, 0].item(), (i, t)
            if terminated or truncated:
                single.reset()
    # env 3 ends with both flags on the same step
    assert data["next", "terminated"][3, 4, 0] and data["next", "truncated"][3, 4, 0]


def test_max_episode_steps_must_be_one_per_env():
    with pytest.raises(ValueError, match="max_episode_steps"):
        batched_env(limits=[2, 3, 4], n=5)


# --------------------------------------------------------------------------- start-state bank
BANK = torch.linspace(-0.9, 0.9, 400).reshape(200, 2)


def bank_env(bank=None, seed=3, n=N):
    return WorldModelEnv(
        DriftModel(), OBS_SPACE, ACT_SPACE, reset_fn=Hooks().reset, transition_fn=Hooks().transition,
        start_states=BANK if bank is None else bank, batch_size=(n,), seed=seed,
    )


def _rows_of(values, bank):
    return [int(torch.nonzero((bank == row).all(-1)).flatten()[0]) for row in values]


def test_start_state_bank_sampling_is_reproducible_under_a_seed():
    first = bank_env(seed=3).reset()["observation"]
    again = bank_env(seed=3).reset()["observation"]
    other = bank_env(seed=4).reset()["observation"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    _rows_of(first, BANK)  # every start is a row of the bank
    env = bank_env(seed=3)
    assert torch.equal(env.reset(seed=11)["observation"], env.reset(seed=11)["observation"])


def test_start_state_bank_as_mapping_keeps_state_and_observation_rows_together():
    states = BANK.clone()
    observations = -BANK  # a different, recognisable observation for each state row
    for bank in ({"state": states, "observation": observations},
                 TensorDict({"state": states, "observation": observations}, batch_size=[200])):
        td = bank_env(bank).reset()
        assert torch.equal(td["model_state"], -td["observation"])
        _rows_of(td["model_state"], states)


def test_start_state_bank_partial_reset_resamples_only_masked_rows():
    env = bank_env(seed=5)
    td = env.reset()
    td = env.step(push_policy()(td))["next"].exclude("reward", "done", "terminated", "truncated")
    before = td.clone()
    mask = torch.tensor([False, True, False, False, True])
    td.set("_reset", mask.unsqueeze(-1))
    after = env.reset(td)
    for i in range(N):
        if mask[i]:
            _rows_of(after["observation"][i:i + 1], BANK)
            assert after["elapsed_steps"][i].item() == 0
        else:
            assert torch.equal(after["observation"][i], before["observation"][i])
            assert after["elapsed_steps"][i].item() == 1


# a start-state bank is a reset source on its own (without it, and without any other reset
# source, the env is refused: test_errors.py, construction errors)
BANK_OBS = gym.spaces.Box(-5, 5, (3,), np.float32)
BANK_ACT = gym.spaces.Box(-1, 1, (3,), np.float32)


def _bank_step(state, action):
    return state + 0.1 * action


def test_bank_alone_resets_both_paths_and_observations_are_copies():
    bank = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    original = bank.clone()
    env = WorldModelEnv(object(), BANK_OBS, BANK_ACT, transition_fn=_bank_step, start_states=bank, seed=3)
    td = env.reset()
    assert any(torch.equal(td["observation"], row) for row in bank)
    td["observation"].mul_(0)  # caller writes into its observation
    gym_env = GymWorldModelEnv(object(), BANK_OBS, BANK_ACT, transition_fn=_bank_step, start_states=bank, seed=3)
    obs, _ = gym_env.reset()
    obs *= 0
    assert torch.equal(bank, original)


# ------------------------------------------------------------------------------- gradients
def test_rollout_keeps_the_graph_from_rewards_to_policy_parameters():
    """Dreamer-style actor loss: -sum of imagined rewards, backpropagated into the policy."""
    obs_space, act_space = vector_spaces()
    env = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                        transition_fn=transition_world_model, batch_size=(4,), seed=0)
    actor = nn.Sequential(nn.Linear(obs_space.shape[0], act_space.shape[0]), nn.Tanh())
    data = env.rollout(6, TensorDictModule(actor, ["observation"], ["action"]), break_when_any_done=False)
    loss = -data["next", "reward"].sum()
    assert loss.requires_grad
    loss.backward()
    for name, param in actor.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert torch.isfinite(param.grad).all(), name


def test_gymnasium_exports_build_no_graph():
    """The exports run the model with grad disabled (so nothing they hand out holds a graph),
    while the TorchRL path leaves grad mode to the caller."""
    obs_space, act_space = vector_spaces()
    grad_modes = []

    def transition(model, state, action):
        grad_modes.append(torch.is_grad_enabled())
        return transition_world_model(model, state, action)

    env = WorldModelEnv(VectorModel(), obs_space, act_space, reset_fn=reset_world_model,
                        transition_fn=transition, batch_size=(3,), seed=0)
    env.rollout(2, break_when_any_done=False)
    assert grad_modes == [True, True]
    envs = env.to_gymnasium()
    envs.reset(seed=0)
    obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert isinstance(obs, np.ndarray) and isinstance(reward, np.ndarray)
    assert envs.state.grad_fn is None and not envs.state.requires_grad
    venv = env.to_sb3()
    venv.reset()
    obs, reward, dones, infos = venv.step(np.stack([act_space.sample() for _ in range(3)]))
    assert isinstance(obs, np.ndarray) and reward.dtype == np.float32
    assert grad_modes == [True, True, False, False]


# --------------------------------------------------------------------------------- devices
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_torchrl_outputs_stay_on_the_env_device(device):
    model = DriftModel().to(device)
    hooks = Hooks()

    def reset_on_device(model, seed=None, options=None):
        state, obs = hooks.reset(model, seed, options)
        return state.to(device), obs.to(device)

    env = WorldModelEnv(model, OBS_SPACE, ACT_SPACE, reset_fn=reset_on_device, transition_fn=hooks.transition,
                        max_episode_steps=torch.tensor(LIMITS), batch_size=(N,), device=device)
    assert env.device == torch.device(device)
    data = env.rollout(T, push_policy().to(device), break_when_any_done=False)
    for key, value in data.items(include_nested=True, leaves_only=True):
        assert value.device == env.device, key
    assert_pushed_episode_ends(data.cpu())
    envs = env.to_gymnasium()
    obs, _ = envs.reset()
    assert isinstance(obs, np.ndarray)


def _drift_env():
    return batched_env()[0]


@pytest.mark.parametrize("kind", ["SerialEnv", "ParallelEnv"])
def test_serial_and_parallel_envs_of_batched_envs_give_the_plain_envs_trajectories(kind):
    """SerialEnv resets a sub-env with only its "_reset" mask (TorchRL's select_reset_only) and
    merges the kept rows itself; ParallelEnv's workers pass their whole tensordict. Across the
    partial auto-resets of per-env time limits and terminations, both give exactly the plain
    batched env's trajectory, in each sub-env."""
    from torchrl.envs import ParallelEnv, SerialEnv

    expected = _drift_env().rollout(T, push_policy(), break_when_any_done=False)
    env = {"SerialEnv": SerialEnv, "ParallelEnv": ParallelEnv}[kind](2, _drift_env)
    try:
        got = env.rollout(T, push_policy(), break_when_any_done=False)
    finally:
        env.close()
    assert got["next", "done"].any() and not got["next", "done"].all()  # partial resets happened
    for i in range(2):
        for key in ("observation", "model_state", "elapsed_steps", ("next", "observation"), ("next", "reward"),
                    ("next", "terminated"), ("next", "truncated"), ("next", "elapsed_steps")):
            torch.testing.assert_close(got[i][key], expected[key], rtol=0, atol=0, msg=f"{kind}[{i}] {key}")


def test_a_reset_with_only_the_mask_keeps_the_other_envs_where_the_last_step_left_them():
    """TorchRL's reset(TensorDict({"_reset": mask})) (what SerialEnv sends): the masked envs
    restart, the others stay where the env's last step put them (state, observation, count)."""
    env = _drift_env()
    td = env.reset()
    td = env.step(td.set("action", torch.as_tensor(PUSH).expand(N, 2).clone()))["next"]
    mask = torch.tensor([True, False, True, False, False])
    out = env.reset(TensorDict({"_reset": mask.unsqueeze(-1)}, [N]))
    for i in range(N):
        if mask[i]:
            assert torch.equal(out["model_state"][i], START[i]) and out["elapsed_steps"][i].item() == 0
        else:
            assert torch.equal(out["model_state"][i], td["model_state"][i])
            assert torch.equal(out["observation"][i], td["observation"][i]) and out["elapsed_steps"][i].item() == 1
    assert not out["done"].any()


# ------------------------------------------------------------------- numpy model states
def _numpy_state_hooks():
    """DriftModel's dynamics with the state kept as a numpy array (the observation a tensor)."""
    model = DriftModel()

    def reset(options=None):
        n = options["reset_mask"].shape[0]
        return START[:n].numpy().copy(), START[:n].clone()

    def transition(state, action):
        out = model(torch.as_tensor(state), torch.as_tensor(action))
        return {**out, "state": out["state"].detach().numpy()}

    return reset, transition


@pytest.mark.parametrize("kind", ["vector", "sb3"])
def test_numpy_model_states_run_through_partial_resets(kind):
    """A numpy model state on the batched exports restarts row by row at episode ends, as a
    tensor state does (same observations as the TorchRL env with tensor states)."""
    from torchwm_rl.gym import GymVectorWorldModelEnv
    from torchwm_rl.sb3 import SB3VecWorldModelEnv

    reset, transition = _numpy_state_hooks()
    cls = GymVectorWorldModelEnv if kind == "vector" else SB3VecWorldModelEnv
    env = cls(None, OBS_SPACE, ACT_SPACE, reset_fn=reset, transition_fn=transition, num_envs=N,
              max_episode_steps=LIMITS)
    reference = batched_env()[0].to_gymnasium() if kind == "vector" else batched_env()[0].to_sb3()
    env.reset(), reference.reset()
    actions = np.tile(PUSH, (N, 1))
    for _ in range(T):  # every env ends at least twice
        got, expected = env.step(actions), reference.step(actions)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[2], expected[2])
    if kind == "vector":
        assert isinstance(env.state, np.ndarray)


def test_a_state_no_partial_reset_can_merge_is_refused_at_the_first_reset():
    """A batched env's state must restart row by row: a list (or a tensor without the batch as
    its leading dims) is refused at the first reset, naming what is needed, not at the first
    episode end."""
    from torchwm_rl.gym import GymVectorWorldModelEnv

    def reset(options=None):
        n = options["reset_mask"].shape[0]
        return [0.0] * n, START[:n].clone()

    env = GymVectorWorldModelEnv(None, OBS_SPACE, ACT_SPACE, reset_fn=reset,
                                 transition_fn=lambda state, action: START.clone(), num_envs=N)
    with pytest.raises(TypeError, match=r"model_state: a batched env needs a tensor or numpy array model state"):
        env.reset()

    def transposed(options=None):
        return START.T.clone(), START.clone()

    env = GymVectorWorldModelEnv(None, OBS_SPACE, ACT_SPACE, reset_fn=transposed,
                                 transition_fn=lambda state, action: START.clone(), num_envs=N)
    with pytest.raises(ValueError, match=r"model_state: a batched env needs a model state with leading dims \(5,\), got shape \(2, 5\)"):
        env.reset()
