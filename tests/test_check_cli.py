"""`torchwm-rl check MODULE:FACTORY`: good factories pass (exit 0), bad ones fail (exit 1) with a
report naming the failing check; plus the CLI plumbing (`python -m torchwm_rl`, train-model)."""

import json
import subprocess
import sys
import textwrap

import pytest

from torchwm_rl.check import check_factory
from torchwm_rl.cli import main

FACTORIES = textwrap.dedent(
    '''
    import gymnasium as gym
    import numpy as np
    import torch

    from torchwm_rl import WorldModelEnv, zoo


    def cartpole():
        return zoo.make_env("cartpole", seed=0, max_episode_steps=30)


    def cartpole_batched():
        return zoo.make_env("cartpole", batch_size=3, seed=0, max_episode_steps=30)


    class Decay(torch.nn.Module):
        def forward(self, state, action):
            return 0.9 * state + 0.1 * action.float()


    def decay():
        return WorldModelEnv(
            Decay(),
            observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            reset_fn=lambda seed=None, options=None: torch.ones(3),
            reward_fn=lambda next_state: -next_state.pow(2).sum(-1),
            max_episode_steps=7,
        )


    class Exploding(torch.nn.Module):
        def forward(self, state, action):
            return state * float("nan")


    def nan_model():
        return WorldModelEnv(
            Exploding(),
            observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            action_space=gym.spaces.Discrete(2),
            reset_fn=lambda seed=None, options=None: torch.zeros(2),
            max_episode_steps=10,
        )


    _rng = np.random.default_rng()


    def unseeded_noise():
        # a stochastic model that ignores the env's seed: the two paths cannot agree
        return WorldModelEnv(
            torch.nn.Identity(),
            observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            action_space=gym.spaces.Discrete(2),
            reset_fn=lambda seed=None, options=None: torch.zeros(2),
            transition_fn=lambda state, action: state + torch.as_tensor(_rng.normal(size=2), dtype=torch.float32),
            max_episode_steps=10,
        )


    def not_an_env():
        return "hello"


    def raises():
        raise RuntimeError("factory blew up")
    '''
)


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    path = tmp_path_factory.mktemp("factories") / "user_envs.py"
    path.write_text(FACTORIES)
    return path


def _status(report):
    return {r.name: r.status for r in report.results}


@pytest.mark.parametrize("name", ["cartpole", "cartpole_batched", "decay"])
def test_good_factories_pass_every_check(factories, name):
    report = check_factory(f"{factories}:{name}", steps=40)
    assert report.ok, report.format()
    status = _status(report)
    assert status == {k: "PASS" for k in
                      ["factory", "torchrl-specs", "rollout", "gymnasium-checker", "sb3-checker", "parity"]}
    assert "OK: all checks passed" in report.format()


def test_nan_model_fails_with_a_clear_reason(factories):
    report = check_factory(f"{factories}:nan_model")
    assert not report.ok
    assert _status(report)["rollout"] == "FAIL"
    assert "NaN" in report.format()


def test_unseeded_stochastic_model_fails_parity(factories):
    report = check_factory(f"{factories}:unseeded_noise")
    assert _status(report)["parity"] == "FAIL"
    assert "differ" in {r.name: r.detail for r in report.results}["parity"]


@pytest.mark.parametrize("target, check, words", [
    ("{f}:not_an_env", "factory", "expected a torchwm_rl.WorldModelEnv"),
    ("{f}:raises", "factory", "factory blew up"),
    ("{f}:missing", "import", "no attribute 'missing'"),
    ("no_such_module_xyz:make", "import", "No module named"),
    ("no-colon", "import", "MODULE:FACTORY"),
])
def test_broken_targets_fail(factories, target, check, words):
    report = check_factory(target.format(f=factories))
    assert not report.ok
    failed = {r.name: r.detail for r in report.results if r.status == "FAIL"}
    assert check in failed and words in failed[check]


def test_cli_exit_codes_and_json(factories, capsys):
    assert main(["check", f"{factories}:decay"]) == 0
    assert "OK: all checks passed" in capsys.readouterr().out
    assert main(["check", f"{factories}:nan_model", "--json"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] is False and any(r["status"] == "FAIL" for r in out["results"])


def test_python_dash_m_check_exits_nonzero_on_failure(factories):
    good = subprocess.run([sys.executable, "-m", "torchwm_rl", "check", f"{factories}:cartpole"],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([sys.executable, "-m", "torchwm_rl", "check", f"{factories}:not_an_env"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "[FAIL] factory" in bad.stdout


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "train-model" in out and "check" in out


def test_cli_train_model_writes_a_loadable_file(tmp_path, monkeypatch, capsys):
    from torchwm_rl import zoo
    from torchwm_rl.zoo import cartpole

    real_train = cartpole.train
    monkeypatch.setattr(cartpole, "train", lambda **kw: real_train(**{**kw, "n_transitions": 2000, "epochs": 1}))
    out = tmp_path / "cp.safetensors"
    assert main(["train-model", "cartpole", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    assert zoo.load("cartpole", path=out).metadata["seed"] == "1"
