"""`torchwm-rl check MODULE:FACTORY`: good factories pass (exit 0), bad ones fail (exit 1) with a
report naming the failing check; plus the CLI plumbing (`python -m torchwm_rl`, train-model)."""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from torchwm_rl.app.check import check_factory
from torchwm_rl.app.cli import main

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


    class Rewarding(torch.nn.Module):
        def forward(self, state, action):
            nxt = 0.9 * state + 0.1 * action.float()
            return {"observation": nxt, "reward": -nxt.pow(2).sum(-1)}


    def dead_reward_fn():
        return WorldModelEnv(
            Rewarding(),
            observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            reset_fn=lambda seed=None, options=None: torch.ones(3),
            reward_fn=lambda next_state: next_state.sum(-1),
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


    class RandomInit(torch.nn.Module):
        # the README's model: fresh random weights at every construction
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4 + 1, 4)

        def forward(self, state, action):
            return state + 0.1 * torch.tanh(self.net(torch.cat([state, action], -1)))


    def random_weights_batched():
        return WorldModelEnv(
            RandomInit(),
            observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
            reset_fn=lambda model, seed=None, options=None: torch.zeros(len(options["reset_mask"]), 4),
            reward_fn=lambda next_state: -next_state.pow(2).sum(-1),
            terminal_fn=lambda next_state: next_state[..., 0].abs() > 2.0,
            max_episode_steps=50,
            batch_size=(256,),
        )


    def gymnasium_single():
        from torchwm_rl.gym import WorldModelEnv as GymWorldModelEnv

        return GymWorldModelEnv(
            RandomInit(),
            gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
            reset_fn=lambda model, seed=None, options=None: torch.zeros(4),
            reward_fn=lambda next_state: -next_state.pow(2).sum(-1),
            max_episode_steps=20,
        )


    def gymnasium_vector():
        return random_weights_batched().to_gymnasium()


    def wrong_reward_shape():
        return WorldModelEnv(
            RandomInit(),
            observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
            reset_fn=lambda model, seed=None, options=None: torch.zeros(len(options["reset_mask"]), 4),
            reward_fn=lambda next_state: -next_state.pow(2),  # (N, 4): one reward per env expected
            max_episode_steps=50,
            batch_size=(8,),
        )


    def _missing_key(next_state):
        raise KeyError("latent")


    def raising_terminal():
        return WorldModelEnv(
            Decay(),
            observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            reset_fn=lambda seed=None, options=None: torch.ones(3),
            terminal_fn=_missing_key,
        )


    def unseeded_noise_batched():
        return WorldModelEnv(
            torch.nn.Identity(),
            observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            action_space=gym.spaces.Discrete(2),
            reset_fn=lambda options=None: torch.zeros(len(options["reset_mask"]), 2),
            transition_fn=lambda state, action: state + torch.as_tensor(
                _rng.normal(size=(len(state), 2)), dtype=torch.float32),
            max_episode_steps=10,
            batch_size=(64,),
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


@pytest.mark.parametrize("name", ["cartpole", "cartpole_batched", "decay", "random_weights_batched",
                                  "gymnasium_single", "gymnasium_vector"])
def test_good_factories_pass_every_check(factories, name):
    report = check_factory(f"{factories}:{name}", steps=40)
    assert report.ok, report.format()
    status = _status(report)
    assert status == {k: "PASS" for k in
                      ["factory", "hooks", "model-mode", "torchrl-specs", "rollout", "gymnasium-checker", "sb3-checker",
                       "parity"]}
    assert "OK: all checks passed" in report.format()
    # the report shows how each hook was bound, e.g. "transition_fn = transition(model<-model, ...)"
    assert re.search(r"note: (transition_fn|model\.?\w*) = \w+\(.*<-", report.format()), report.format()


def test_a_reward_fn_the_transition_overrides_is_reported_as_not_called(factories):
    """Issue 25: ``check`` listed an explicit reward_fn as bound although the transition's own
    reward is used (as in TorchWM) and the hook is never called."""
    report = check_factory(f"{factories}:dead_reward_fn", steps=10)
    assert re.search(r"note: reward_fn = .*NOT CALLED: model returns the reward, which is used", report.format()), \
        report.format()


def test_nan_model_fails_with_a_clear_reason(factories):
    report = check_factory(f"{factories}:nan_model")
    assert not report.ok
    # the first check that steps the model meets the NaN; the later ones are stopped by it
    assert _status(report)["torchrl-specs"] == "FAIL"
    assert {_status(report)[k] for k in ("rollout", "parity")} == {"SKIP"}
    assert report.format().count("NaN") == 1  # reported once, not once per check


def test_factory_is_built_once(tmp_path):
    """A factory whose every call builds a different model (fresh random weights) is checked
    on the one model it built: calling it again would compare two different models."""
    calls = []

    def factory():
        from torchwm_rl import zoo

        calls.append(1)
        return zoo.make_env("cartpole", batch_size=2, seed=0, max_episode_steps=10)

    from torchwm_rl.app.check import check_env

    assert check_env(factory, steps=12).ok
    assert len(calls) == 1


_LONG_LIMIT = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    import torch

    from torchwm_rl import WorldModelEnv


    class Decay(torch.nn.Module):  # never terminates: only the time limit ends an episode
        def forward(self, state, action):
            return 0.9 * state + 0.1 * action.float()


    def make(max_episode_steps=120, batch_size=()):
        return WorldModelEnv(
            Decay(),
            observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            reset_fn=lambda seed=None, options=None, batch_size=(): torch.ones(*batch_size, 3),
            reward_fn=lambda next_state: -next_state.pow(2).sum(-1),
            max_episode_steps=max_episode_steps, batch_size=batch_size,
        )
''')


@pytest.fixture
def long_limit(tmp_path):
    path = tmp_path / "long_limit.py"
    path.write_text(_LONG_LIMIT)
    return path


def test_check_runs_past_the_time_limit_by_default(long_limit):
    """The default check steps past max_episode_steps (here 120, beyond the old fixed 50 steps),
    so its rollout and parity checks see an episode end and the reset after it."""
    report = check_factory(f"{long_limit}:make")
    assert report.ok, report.format()
    results = {r.name: r.detail for r in report.results}
    assert results["rollout"].startswith("130 random-action steps, finite, 1 episode end(s)"), results["rollout"]
    assert "(1 episode end(s))" in results["parity"] and "130 steps" in results["parity"]
    assert "NOT exercised" not in report.format()


def test_check_says_when_resets_were_not_exercised(long_limit, capsys):
    """A --steps shorter than the time limit is run as asked, and the report says what it missed."""
    assert main(["check", f"{long_limit}:make", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    hint = "0 episode end(s)); resets and autoreset were NOT exercised (max_episode_steps=120); run with --steps 130"
    assert "20 random-action steps, finite, 0 episode end(s); resets and autoreset were NOT exercised" in out
    assert hint in out, out


def test_default_steps_bounds(long_limit):
    import importlib.util

    from torchwm_rl.app.check import MAX_STEPS, MIN_STEPS, default_steps

    spec = importlib.util.spec_from_file_location("long_limit", long_limit)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert default_steps(mod.make(max_episode_steps=None)) == MIN_STEPS == 50
    assert default_steps(mod.make(max_episode_steps=7)) == 50
    assert default_steps(mod.make(max_episode_steps=500)) == 510
    assert default_steps(mod.make(max_episode_steps=10**6)) == MAX_STEPS == 1000
    assert default_steps(mod.make(max_episode_steps=[5, 300], batch_size=(2,))) == 310  # the longest env's limit


def test_one_error_is_reported_once_naming_the_hook(factories):
    report = check_factory(f"{factories}:wrong_reward_shape")
    text = report.format()
    failed = [r for r in report.results if r.status == "FAIL"]
    assert [r.name for r in failed] == ["torchrl-specs"], text
    assert "reward_fn" in failed[0].detail and "(8, 4)" in failed[0].detail
    assert "validation.py" not in text
    stopped = [r for r in report.results if r.status == "SKIP"]
    assert [r.name for r in stopped] == ["rollout", "gymnasium-checker", "sb3-checker", "parity"]
    assert all("same error as torchrl-specs" in r.detail for r in stopped)
    assert text.count("(8, 4)") == 1 and "FAILED: 1 check(s) failed (4 more stopped by the same error)" in text


def test_an_exception_inside_a_hook_names_the_hook_and_the_user_line(factories):
    report = check_factory(f"{factories}:raising_terminal")
    (failed,) = [r for r in report.results if r.status == "FAIL"]
    assert "KeyError" in failed.detail and "terminal_fn" in failed.detail
    assert "user_envs.py:" in failed.detail and "_missing_key" in failed.detail


def test_parity_mismatch_is_one_short_line_with_step_env_and_values(factories):
    report = check_factory(f"{factories}:unseeded_noise_batched")
    detail = {r.name: r.detail for r in report.results}["parity"]
    assert _status(report)["parity"] == "FAIL"
    assert detail.startswith("step 0, env ") and "Gymnasium [" in detail and "TorchRL [" in detail
    assert "of 64 envs differ" in detail
    assert "\n" not in detail and len(detail) < 400  # not two 64-row arrays


def test_unseeded_stochastic_model_fails_parity(factories):
    report = check_factory(f"{factories}:unseeded_noise")
    assert _status(report)["parity"] == "FAIL"
    assert "differ" in {r.name: r.detail for r in report.results}["parity"]


@pytest.mark.parametrize("target, check, words", [
    ("{f}:not_an_env", "factory", "expected a torchwm_rl.WorldModelEnv or a torchwm_rl.gym env"),
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


def test_cli_train_model_writes_to_the_current_directory_by_default(tmp_path, monkeypatch, capsys):
    """With no --out, train-model writes ./cartpole.safetensors, leaves the installed package's
    file alone, and prints a line of Python that loads the new file (which works as printed)."""
    import hashlib

    from torchwm_rl import zoo
    from torchwm_rl.zoo import cartpole

    bundled = zoo.weights_path("cartpole")
    before = hashlib.sha256(bundled.read_bytes()).hexdigest()
    real_train = cartpole.train
    monkeypatch.setattr(cartpole, "train", lambda **kw: real_train(**{**kw, "n_transitions": 2000, "epochs": 1}))
    monkeypatch.chdir(tmp_path)
    assert main(["train-model", "cartpole", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "cartpole.safetensors"
    assert written.is_file() and f"wrote {written.resolve()}" in out
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == before
    use = [line for line in out.splitlines() if "use it:" in line]
    assert len(use) == 1, out
    scope: dict = {}
    exec(use[0].split("use it: ", 1)[1], scope)
    env = scope["env"]
    assert env.batch_size == (64,) and env.adapter.model.metadata["seed"] == "3"


_EXITING = {
    "exit_at_import": "import sys\nsys.exit(0)\n",
    "argparse_at_import": "import argparse\nargparse.ArgumentParser().parse_args(['--no-such-flag'])\n",
    "exit_in_factory": "import sys\ndef make():\n    sys.exit(0)\n",
    "interrupt_in_factory": "def make():\n    raise KeyboardInterrupt\n",
    "exit_in_hook": textwrap.dedent("""
        import sys
        import gymnasium as gym
        import numpy as np
        import torch
        from torchwm_rl import WorldModelEnv

        def make():
            box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
            calls = []

            def transition(model, state, action):
                calls.append(1)
                if len(calls) > 1:
                    sys.exit(0)
                return {"state": state, "observation": state}

            return WorldModelEnv(object(), box, box, reset_fn=lambda: torch.zeros(2), transition_fn=transition)
    """),
}


@pytest.mark.parametrize("name", list(_EXITING))
def test_check_never_passes_when_the_users_code_exits(tmp_path, monkeypatch, capsys, name):
    """``sys.exit(0)`` (or argparse, or KeyboardInterrupt) at import, in the factory or in a hook
    is a failed check with exit code 1, not an exit 0 that checked nothing."""
    module = f"exiting_{name}"
    (tmp_path / f"{module}.py").write_text(_EXITING[name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", f"{module}:make"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert ("SystemExit" in out and "if __name__ == '__main__'" in out) or "KeyboardInterrupt" in out


def test_parity_check_handles_nested_dict_observations_with_episode_ends():
    """The batched parity check stacks final observations key by key at every depth (a nested
    Dict space crashed it with KeyError before)."""
    import gymnasium as gym

    from torchwm_rl import WorldModelEnv
    from torchwm_rl.app.check import check_parity

    obs_space = gym.spaces.Dict({"a": gym.spaces.Dict({"a": gym.spaces.Discrete(1)}),
                                 "b": gym.spaces.Box(-9, 9, (2,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(batch_size=()):
        return {"a": {"a": torch.zeros(batch_size, dtype=torch.int64)}, "b": torch.zeros(*batch_size, 2)}

    def transition(state, action):
        b = state["b"] + action
        return {"state": {"a": state["a"], "b": b}, "observation": {"a": state["a"], "b": b},
                "reward": b[..., 0], "terminated": b[..., 0] > 1.0}

    env = WorldModelEnv(None, obs_space, act_space, reset_fn=reset, transition_fn=transition, batch_size=(3,),
                        max_episode_steps=4)
    result = check_parity(env, steps=12)
    assert result.status == "PASS", result.detail
    assert "episode end" in result.detail and "(0 episode end" not in result.detail


class _NormedModel(torch.nn.Module):
    """state' = state + net(state, action), the net with BatchNorm and Dropout."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(8, 2))

    def forward(self, state, action):
        return state + 0.01 * self.net(torch.cat([state, action.float()], -1))


def _normed_env(model, **kwargs):
    import gymnasium as gym

    from torchwm_rl import WorldModelEnv

    return WorldModelEnv(model, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                         gym.spaces.Box(-1, 1, (2,), np.float32),
                         reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(*batch_size, 2),
                         batch_size=(4,), max_episode_steps=5, **kwargs)


def test_a_model_in_training_mode_is_warned_about_in_check_and_at_construction():
    """BatchNorm / Dropout left in training mode (a model fitted and wrapped without eval())
    couple the envs through batch statistics: check reports a WARN naming the modules (it passed
    before, saying nothing) and construction warns once (TrainModeWarning); after model.eval()
    neither does."""
    import warnings

    from torchwm_rl import GymWorldModelEnv
    from torchwm_rl.app.check import check_env
    from torchwm_rl.train_mode import TrainModeWarning, modules_in_training

    model = _NormedModel()
    assert modules_in_training(model) == ["model.net.1 (BatchNorm1d)", "model.net.2 (Dropout)"]
    with pytest.warns(TrainModeWarning, match=r"model\.net\.1 \(BatchNorm1d\), model\.net\.2 \(Dropout\).*model\.eval\(\)"):
        _normed_env(model)
    import gymnasium as gym

    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    with pytest.warns(TrainModeWarning, match="BatchNorm1d"):  # every path: the adapter warns
        GymWorldModelEnv(model, box, box, reset_fn=lambda: torch.zeros(2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainModeWarning)
        report = check_env(lambda: _normed_env(model.train()), steps=6)
    result = {r.name: r for r in report.results}["model-mode"]
    assert result.status == "WARN" and "model.net.1 (BatchNorm1d)" in result.detail, report.format()
    assert "[WARN] model-mode" in report.format() and "(1 warning(s))" in report.format()

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainModeWarning)
        report = check_env(lambda: _normed_env(model), steps=6)
    assert {r.name: r.status for r in report.results}["model-mode"] == "PASS", report.format()
    # a plain object holding the network (not itself a Module) is looked into too
    holder = type("Holder", (), {})()
    holder.net = _NormedModel()
    assert modules_in_training(holder) == ["model.net.net.1 (BatchNorm1d)", "model.net.net.2 (Dropout)"]


_ACTION_ENDS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    import torch
    import torch.nn as nn

    from torchwm_rl import WorldModelEnv


    class Still(nn.Module):
        def forward(self, state, action):
            return state


    def make():
        # an episode ends when the action is above 0.8: how many ends a random rollout sees
        # depends only on the random actions drawn
        return WorldModelEnv(
            Still(),
            observation_space=gym.spaces.Box(-10, 10, (2,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
            reset_fn=lambda seed=None, options=None, batch_size=(): torch.zeros(*batch_size, 2),
            reward_fn=lambda next_state: next_state.sum(-1),
            terminal_fn=lambda action: action[..., 0] > 0.8,
            max_episode_steps=1000, batch_size=(4,),
        )
''')


def test_check_rollout_is_reproducible_from_its_seed(tmp_path):
    """The rollout check's random actions come from its seed, not from the global torch RNG:
    the same seed gives the same report whatever the caller's RNG state, and the caller's RNG
    is left as it was (before, the episode-end count changed from run to run)."""
    path = tmp_path / "action_ends.py"
    path.write_text(_ACTION_ENDS)
    details = []
    for global_seed in (1, 2, 3):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        report = check_factory(f"{path}:make", steps=60)
        assert report.ok, report.format()
        assert torch.equal(torch.get_rng_state(), before)
        details.append({r.name: r.detail for r in report.results}["rollout"])
    assert len(set(details)) == 1, details
    assert re.match(r"60 random-action steps, finite, [1-9]\d* episode end\(s\)", details[0]), details[0]
