"""The bundled Pendulum ensemble, train-model pendulum, and the SAC demo with a tiny budget."""

import json
import math
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchwm_rl import zoo
from torchwm_rl.zoo import pendulum


def test_bundled_ensemble_is_small_and_has_five_members():
    model = zoo.load("pendulum")
    assert model.members >= 5
    assert pendulum.WEIGHTS_PATH.stat().st_size < 2_000_000
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_every_member_matches_real_pendulum_one_step():
    model = zoo.load("pendulum")
    real = gym.make("Pendulum-v1").unwrapped
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(50):
        state = np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-6, 6)])
        u = rng.uniform(-2, 2)
        real.reset(seed=0)
        real.state = state.copy()
        obs, r, *_ = real.step(np.array([u], np.float32))
        members = model(torch.tensor(pendulum.observation(state), dtype=torch.float32)[None],
                        torch.tensor([[u]], dtype=torch.float32))
        assert members.shape == (model.members, 1, 3)
        errors.append((members[:, 0] - torch.tensor(obs)).norm(dim=-1).max().item())
        expected_reward = -pendulum.cost(torch.tensor(pendulum.observation(state))[None].float(),
                                         torch.tensor([[u]]))
        assert float(expected_reward) == pytest.approx(r, abs=1e-4)
    assert np.median(errors) < 0.05


def test_env_reports_uncertainty_and_set_real_state_round_trips():
    env = zoo.make_env("pendulum", batch_size=4, seed=0, uncertainty_penalty=1.0)
    td = env.rollout(5, break_when_any_done=False)
    assert td["next", "uncertainty"].shape == (4, 5, 1) and bool((td["next", "uncertainty"] > 0).all())
    real = gym.make("Pendulum-v1")
    real.reset(seed=0)
    obs = np.array([np.cos(1.0), np.sin(1.0), 0.5])
    pendulum.set_real_state(real, obs)
    np.testing.assert_allclose(real.unwrapped.state, [1.0, 0.5])


def test_train_model_is_reproducible_and_loadable(tmp_path):
    kwargs = dict(seed=3, n_transitions=2_000, epochs=1, verbose=False)
    a = zoo.train_model("pendulum", path=tmp_path / "a.safetensors", **kwargs)
    b = zoo.train_model("pendulum", path=tmp_path / "b.safetensors", **kwargs)
    ma, mb = zoo.load("pendulum", path=a), zoo.load("pendulum", path=b)
    for key, value in ma.state_dict().items():
        assert torch.equal(value, mb.state_dict()[key]), key
    assert ma.metadata["members"] == "5" and ma.metadata["n_transitions"] == "2000"


@pytest.mark.slow
def test_cli_demo_pendulum_tiny_budget_json_and_determinism(tmp_path):
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        proc = subprocess.run(
            [sys.executable, "-m", "torchwm_rl", "demo", "pendulum", "--frames", "1500", "--episodes", "2",
             "--num-envs", "8", "--seed", "4", "--out", str(out), "--json"],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, proc.stdout
        result = json.loads(lines[-1])
        for key in ("real_mean_return", "imagined_mean_return", "wall_seconds"):
            assert isinstance(result[key], float) and math.isfinite(result[key]), key
        assert (out / "policy.safetensors").is_file() and (out / "results.png").is_file()
        saved = json.loads((out / "results.json").read_text())
        assert len(saved["reality_check"]["real_returns"]) == 2
        assert len(saved["uncertainty"]["real"]) == len(saved["reality_check"]["real_trajectory"]) - 1
        results.append(result)
    # same seed, same machine: the same numbers (the time budget is in frames, never seconds)
    for key in ("real_mean_return", "imagined_mean_return", "imagined_frames"):
        assert results[0][key] == results[1][key], key


@pytest.mark.slow
def test_load_policy_reads_the_demo_pendulum_policy_and_replays_its_real_episode(tmp_path):
    """The file `demo pendulum` writes loads with torchwm_rl.app.demo.load_policy, and the loaded
    policy is the one reality_check scored: from the saved start state it reproduces the saved
    real trajectory of episode 0 on Pendulum-v1."""
    from torchwm_rl.app.demo import DemoConfig, SACGreedyPolicy, load_policy, run_demo

    out = tmp_path / "run"
    run_demo(DemoConfig(task="pendulum", frames=600, episodes=1, num_envs=8, seed=3, out=str(out),
                        progress=False, save_plot=False), log=lambda _: None)
    policy = load_policy(out / "policy.safetensors")
    assert isinstance(policy, SACGreedyPolicy)
    saved = json.loads((out / "results.json").read_text())["reality_check"]
    real_traj = np.array(saved["real_trajectory"])
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    pendulum.set_real_state(env, real_traj[0])
    obs, replay = real_traj[0], [real_traj[0]]
    with torch.no_grad():
        for _ in range(len(real_traj) - 1):
            action = policy(torch.as_tensor(obs, dtype=torch.float32))
            assert action.shape == (1,) and -2.0 <= float(action) <= 2.0
            obs, *_ = env.step(action.numpy())
            replay.append(obs)
    np.testing.assert_allclose(np.array(replay), real_traj, atol=1e-4)


def test_load_policy_refuses_other_files_naming_the_kind(tmp_path):
    from torchwm_rl.app.demo import load_policy
    from torchwm_rl.app.sac import _mlp
    from torchwm_rl.serialization import save_weights

    net = _mlp(3, 2, 16)
    with pytest.raises(ValueError, match=r"not a torchwm-rl demo policy \(metadata kind 'something'"):
        load_policy(save_weights(net, tmp_path / "a.safetensors", {"kind": "something"}))
    with pytest.raises(ValueError, match="without action bounds"):
        load_policy(save_weights(net, tmp_path / "b.safetensors",
                                 {"kind": "torchwm_rl.demo.sac_policy/1", "hidden": 16, "obs_dim": 3,
                                  "n_actions": 1, "task": "elsewhere"}))
    # files written before the bounds were stored: the Pendulum task's own bounds, [-2, 2]
    old = load_policy(save_weights(net, tmp_path / "c.safetensors",
                                   {"kind": "torchwm_rl.demo.sac_policy/1", "hidden": 16, "obs_dim": 3,
                                    "n_actions": 1, "task": "pendulum"}))
    x = torch.randn(5, 3)
    torch.testing.assert_close(old(x), 2.0 * torch.tanh(net(x)[:, :1]))
