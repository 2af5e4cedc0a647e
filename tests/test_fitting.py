"""torchwm_rl.fitting: the ensemble dynamics model and its trainer (MBPO's model side), and a
refit seen by an env and its exports at their next step."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import WorldModelEnv
from torchwm_rl.fitting import EnsembleDynamics, EnsembleTrainer, Standardizer, rollout_length

OBS_DIM, ACT_DIM = 3, 1
A = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.95]])
B = torch.tensor([[0.5], [0.0], [-0.3]])


def linear_data(n: int, seed: int = 0, shift: float = 0.0):
    """Transitions of obs' = A obs + B a, reward = -|obs'|^2, with obs around ``shift``."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS_DIM, generator=g) + shift
    action = torch.rand(n, ACT_DIM, generator=g) * 2 - 1
    nxt = obs @ A.T + action @ B.T
    return obs, action, nxt, -(nxt**2).sum(-1)


def small_model(members=4, elites=3, seed=0) -> EnsembleDynamics:
    torch.manual_seed(seed)
    return EnsembleDynamics(OBS_DIM, ACT_DIM, members=members, elites=elites, hidden=32, layers=2)


def test_fit_learns_a_linear_system_and_picks_the_best_members_as_elites():
    model = small_model()
    report = EnsembleTrainer(model, lr=3e-3, max_epochs=40, patience=40, seed=0).fit(*linear_data(2000))
    assert report.epochs == 40
    assert max(report.holdout_mse[i] for i in report.elites) < 0.02  # standardized targets: 1.0 is a constant guess
    assert sorted(report.elites) == sorted(np.argsort(report.holdout_mse)[:3].tolist())
    assert model.elites.tolist() == report.elites
    obs, action, nxt, reward = linear_data(200, seed=1)
    with torch.no_grad():
        out = model(obs, action)
    assert out["observation"].shape == (3, 200, OBS_DIM) and out["reward"].shape == (3, 200)
    assert float((out["observation"].mean(0) - nxt).abs().mean()) < 0.1


def test_holdout_early_stopping_stops_after_patience_and_restores_each_members_best_weights():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # no epoch can improve a member's held-out MSE by more than 100%: every epoch is stale
    report = EnsembleTrainer(model, patience=2, improvement=1.0, seed=0).fit(*linear_data(500))
    assert report.epochs == 2
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("hidden", "head")):  # the parameters: back to the best (the initial) weights
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_a_refit_is_deterministic_given_the_seed():
    data = linear_data(600)
    states = []
    for _ in range(2):
        model = small_model(seed=3)
        EnsembleTrainer(model, max_epochs=3, seed=5).fit(*data)
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)


def test_forward_evaluates_only_the_elites_and_gives_the_full_ensembles_elite_rows_exactly():
    model = small_model(members=5, elites=3)
    model.elites.copy_(torch.tensor([4, 0, 2]))  # not the first members, not in order
    obs, action, _, _ = linear_data(64, seed=2)
    with torch.no_grad():
        full = model.targets.inverse(model.members_forward(model._inputs(obs, action).expand(5, 64, 4)))
        out = model(obs, action)
    expected = full[model.elites]  # every member's prediction, then the elites' rows
    assert torch.equal(out["observation"], obs + expected[..., :OBS_DIM])
    assert torch.equal(out["reward"], expected[..., OBS_DIM])
    (model(obs, action)["observation"].sum()).backward()  # gradients reach only the elites' weights
    grad = model.hidden[0].weight.grad
    assert grad[[1, 3]].abs().max() == 0 and grad[[0, 2, 4]].abs().amax(dim=(1, 2)).min() > 0


def test_the_standardizers_move_with_the_data_in_place():
    model = small_model()
    mean = model.inputs.mean  # the tensor an env's model holds
    trainer = EnsembleTrainer(model, max_epochs=1, seed=0)
    trainer.fit(*linear_data(400, shift=0.0))
    first = mean.clone()
    trainer.fit(*linear_data(400, shift=5.0))
    assert model.inputs.mean is mean
    assert float((mean[:OBS_DIM] - first[:OBS_DIM]).min()) > 4.0


def _env(model, n):
    return WorldModelEnv(
        model,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        reset_fn=lambda m, seed=None, options=None, batch_size=(): torch.full((*batch_size, OBS_DIM), 0.5),
        batch_size=(n,), propagation="mean", **model.env_kwargs(),
    )


def test_after_a_refit_every_path_steps_the_new_weights_at_its_next_step():
    """An env, its Gymnasium vector export and its SB3 export, all built BEFORE the refit,
    step the refit model at their next step: the same as the model called directly."""
    n = 4
    model = small_model()
    env = _env(model, n)
    vector, sb3 = env.to_gymnasium(), env.to_sb3()
    td = env.reset()
    vector.reset(seed=0)
    sb3.reset()
    EnsembleTrainer(model, max_epochs=2, seed=0).fit(*linear_data(400, shift=1.0))
    action = np.linspace(-1, 1, n, dtype=np.float32).reshape(n, ACT_DIM)
    start = torch.full((n, OBS_DIM), 0.5)
    with torch.no_grad():
        expected = model(start, torch.as_tensor(action))
        td.set("action", torch.as_tensor(action))
        nxt = env.step(td)["next"]
    exp_obs, exp_reward = expected["observation"].mean(0).numpy(), expected["reward"].mean(0).numpy()
    np.testing.assert_allclose(nxt["observation"].numpy(), exp_obs, rtol=1e-6)
    np.testing.assert_allclose(nxt["reward"].squeeze(-1).numpy(), exp_reward, rtol=1e-6)
    obs, reward, *_ = vector.step(action)
    np.testing.assert_allclose(obs, exp_obs, rtol=1e-6)
    np.testing.assert_allclose(reward, exp_reward, rtol=1e-6)
    sb3.step_async(action)
    obs, reward, _, _ = sb3.step_wait()
    np.testing.assert_allclose(obs, exp_obs, rtol=1e-6)
    np.testing.assert_allclose(reward, exp_reward, rtol=1e-6)


@pytest.mark.parametrize("field, index, bad, message", [
    ("obs", 0, torch.zeros(10, 2), "obs: expected shape (10, 3)"),
    ("action", 1, torch.zeros(10, 2), "action: expected shape (10, 1)"),
    ("next_obs", 2, torch.zeros(10, 4), "next_obs: expected shape (10, 3)"),
    ("reward", 3, torch.zeros(9), "reward: expected shape (10,)"),
])
def test_fit_refuses_transitions_of_the_wrong_shape(field, index, bad, message):
    data = list(linear_data(10))
    data[index] = bad
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EnsembleTrainer(small_model(), max_epochs=1).fit(*data)


def test_fit_needs_a_reward_when_the_model_predicts_one():
    obs, action, nxt, _ = linear_data(10)
    with pytest.raises(ValueError, match="pass reward"):
        EnsembleTrainer(small_model(), max_epochs=1).fit(obs, action, nxt)


def test_standardizer_refuses_data_of_another_width_and_keeps_unit_std_for_constant_features():
    s = Standardizer(2)
    with pytest.raises(ValueError, match=r"expected data of shape \(n, 2\), got \(5, 3\)"):
        s.fit(torch.zeros(5, 3))
    s.fit(torch.stack([torch.arange(5.0), torch.full((5,), 7.0)], -1))
    assert s.std[1] == 1.0 and s.mean[1] == 7.0


def test_elites_must_fit_in_the_ensemble():
    with pytest.raises(ValueError, match="elites must be between 1 and members=3, got 4"):
        EnsembleDynamics(OBS_DIM, ACT_DIM, members=3, elites=4)


@pytest.mark.parametrize("epoch, expected", [(0, 1), (20, 1), (60, 8), (100, 15), (500, 15)])
def test_rollout_length_follows_mbpos_linear_schedule(epoch, expected):
    assert rollout_length(epoch, start=20, end=100, min_length=1, max_length=15) == expected


# --------------------------------------------------------------- starts from a replay buffer


def _buffer(rows: torch.Tensor):
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    buffer = ReplayBuffer(storage=LazyTensorStorage(10_000))
    buffer.extend(TensorDict({"observation": rows}, batch_size=[len(rows)]))
    return buffer


def _bank_env(buffer, n=None, **kwargs):
    return WorldModelEnv(
        lambda s, a: s + a.sum(-1, keepdim=True),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        start_states=buffer, batch_size=() if n is None else (n,), **kwargs,
    )


def _is_row_of(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each of ``values [M, D]``: whether it equals one of ``rows [R, D]`` exactly."""
    return (values[:, None, :] == rows[None]).all(-1).any(-1)


def test_starts_drawn_from_a_replay_buffer_are_rows_it_holds_and_follow_it_as_it_grows():
    first = torch.arange(30.0).reshape(10, OBS_DIM)
    buffer = _buffer(first)
    env = _bank_env(buffer, n=4000, seed=0)
    td = env.reset()
    assert _is_row_of(td["observation"], first).all()
    torch.testing.assert_close(td["model_state"], td["observation"])  # this model's state is its observation
    later = -torch.arange(30.0).reshape(10, OBS_DIM) - 100
    buffer.extend(type(buffer[0:1])({"observation": later}, batch_size=[10]))
    td = env.reset()  # the same env: the rows added since are candidates too
    obs = td["observation"]
    assert _is_row_of(obs, torch.cat([first, later])).all()
    assert _is_row_of(obs, later).any() and _is_row_of(obs, first).any()


def test_replay_buffer_starts_are_reproducible_under_the_seed_and_work_unbatched_and_on_the_exports():
    rows = torch.randn(50, OBS_DIM)
    a = _bank_env(_buffer(rows), n=16, seed=3).reset()["observation"]
    b = _bank_env(_buffer(rows), n=16, seed=3).reset()["observation"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    one = _bank_env(_buffer(rows), seed=3).reset()["observation"]
    assert one.shape == (OBS_DIM,) and _is_row_of(one[None], rows).all()
    vector = _bank_env(_buffer(rows), n=16).to_gymnasium()
    obs, _ = vector.reset(seed=1)
    assert _is_row_of(torch.as_tensor(obs), rows).all()


def test_replay_buffer_starts_are_refused_when_empty_or_without_observations():
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    with pytest.raises(ValueError, match="the replay buffer is empty"):
        _bank_env(ReplayBuffer(storage=LazyTensorStorage(10)), n=2)
    buffer = ReplayBuffer(storage=LazyTensorStorage(10))
    buffer.extend(TensorDict({"obs": torch.zeros(3, OBS_DIM)}, batch_size=[3]))
    with pytest.raises(KeyError, match=r"no 'observation' \(they have \['obs'\]\)"):
        _bank_env(buffer, n=2)
    bad = _buffer(torch.zeros(3, OBS_DIM + 1))
    with pytest.raises(ValueError, match="start_states"):
        _bank_env(bad, n=2)


# --------------------------------------------------------------- a refit that changes the structure


def test_a_refit_that_changes_the_structure_is_refused_before_anything_is_copied():
    model = small_model(members=4, elites=3)
    env = _env(model, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = EnsembleDynamics(OBS_DIM, ACT_DIM, members=5, elites=3, hidden=32, layers=2)  # another ensemble size
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"would change its structure \(hidden.0.weight: the model has "
                                             r"\(4, 4, 32\), the new weights \(5, 4, 32\).*Nothing was loaded"):
            model.load_state_dict(other.state_dict(), strict=strict)
    for key, value in model.state_dict().items():  # not half-loaded: every entry as before
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    td = env.reset()
    td.set("action", torch.zeros(2, ACT_DIM))
    env.step(td)  # and the env still steps
    same = small_model(members=4, elites=3, seed=9)
    model.load_state_dict(same.state_dict())  # a refit of the same structure is loaded
    torch.testing.assert_close(model.head.weight, same.head.weight, rtol=0, atol=0)


def test_a_collector_built_before_a_refit_collects_with_the_new_weights():
    from torchrl.collectors import Collector

    model = small_model()
    env = _env(model, 4)
    collector = Collector(env, None, frames_per_batch=8, total_frames=-1, auto_register_policy_transforms=False)
    batches = iter(collector)
    next(batches)  # collected with the initial weights
    EnsembleTrainer(model, max_epochs=2, seed=0).fit(*linear_data(400, shift=1.0))
    batch = next(batches)
    collector.shutdown()
    with torch.no_grad():
        expected = model(batch["observation"].reshape(-1, OBS_DIM), batch["action"].reshape(-1, ACT_DIM))
    torch.testing.assert_close(batch["next", "observation"].reshape(-1, OBS_DIM), expected["observation"].mean(0),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch["next", "reward"].reshape(-1), expected["reward"].mean(0), rtol=1e-5, atol=1e-6)


def test_nan_start_states_are_refused_naming_their_rows_in_a_bank_and_in_a_replay_buffer():
    rows = torch.zeros(4, OBS_DIM)
    rows[2, 1] = float("nan")
    with pytest.raises(ValueError, match=re.escape("start_states: NaN/inf in ['observation'] at bank row(s) [2]")):
        _bank_env(rows, n=3)
    buffer = _buffer(torch.zeros(3, OBS_DIM))
    env = _bank_env(buffer, n=50, seed=0)
    buffer.extend(type(buffer[0:1])({"observation": torch.full((1, OBS_DIM), float("inf"))}, batch_size=[1]))
    with pytest.raises(ValueError, match=r"start_states: NaN/inf in \['observation'\] in the replay buffer's "
                                         r"row\(s\) \[3(, 3)*\]"):
        env.reset()


def _latent_bank_env(start_states, n=3):
    """A latent model behind a uint8 image: the observation's cast hides a NaN in the state."""
    def transition(state, action):
        nxt = {"deter": state["deter"] + action.float().sum(-1, keepdim=True), "stoch": state["stoch"]}
        return {"state": nxt, "observation": torch.zeros(*action.shape[:-1], 2, 2, dtype=torch.uint8)}

    return WorldModelEnv(
        None, observation_space=gym.spaces.Box(0, 255, (2, 2), np.uint8),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32), transition_fn=transition,
        start_states=start_states, batch_size=(n,), seed=0,
    )


def test_nan_in_a_start_state_behind_a_finite_image_is_refused_in_a_bank_and_in_a_replay_buffer():
    """A static bank and replay-buffer starts check the model state's floating leaves too, not only
    the observations: a NaN latent behind a uint8 image is refused naming the leaf and the row
    (before: a static bank accepted it, and it surfaced only after the first step)."""
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    images = torch.zeros(4, 2, 2, dtype=torch.uint8)
    latent = {"deter": torch.zeros(4, 3), "stoch": torch.zeros(4, 2)}
    latent["stoch"][1, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("start_states: NaN/inf in [\"state['stoch']\"] at bank row(s) [1]")):
        _latent_bank_env({"observation": images, "state": latent})
    _latent_bank_env({"observation": images[[0, 2, 3]], "state": {k: v[[0, 2, 3]] for k, v in latent.items()}}).reset()

    buffer = ReplayBuffer(storage=LazyTensorStorage(100))
    buffer.extend(TensorDict({"observation": images, "state": TensorDict(latent, batch_size=[4])}, batch_size=[4]))
    with pytest.raises(ValueError, match=r"start_states: NaN/inf in \[\"state\['stoch'\]\"\] in the replay buffer's "
                                         r"row\(s\) \[1(, 1)*\]"):
        _latent_bank_env(buffer, n=40).reset()  # the env's construction draws starts already
