"""The demo end to end with tiny budgets (no timed assertions, no return targets: a 2-batch run
cannot learn CartPole; the full-budget figures are measured separately and reported in README)."""

import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from torchwm_rl.app.demo import DemoConfig, run_demo
from torchwm_rl.app.runs import format_table
from torchwm_rl.serialization import load_weights, read_metadata

TINY = dict(frames=2048, num_envs=16, steps_per_batch=64, epochs=2, episodes=2, eval_envs=4)


@pytest.mark.slow
def test_cli_demo_json_last_line_and_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torchwm_rl", "demo", "--frames", "2048", "--episodes", "2",
         "--num-envs", "16", "--seed", "3", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # quiet under --json: just the JSON object
    result = json.loads(lines[-1])
    for key in ("real_mean_return", "imagined_mean_return", "wall_seconds"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result["episodes"] == 2 and result["imagined_frames"] >= 2048
    assert "it/s" not in proc.stderr and "frame/s" not in proc.stderr  # no progress bar
    assert (out / "policy.safetensors").is_file() and (out / "results.json").is_file()
    assert (out / "results.png").is_file() and result["plot_path"] == str(out / "results.png")
    weights = load_weights(out / "policy.safetensors")
    assert weights["0.weight"].shape == (64, 4) and weights["4.weight"].shape == (2, 64)
    assert read_metadata(out / "policy.safetensors")["task"] == "cartpole"
    saved = _strict_json((out / "results.json").read_text())
    assert saved["result"]["real_mean_return"] == result["real_mean_return"]
    assert len(saved["reality_check"]["real_returns"]) == 2
    # batches in which no training episode ended, or no evaluation ran, have no value: null
    history = saved["history"]
    assert any(h["eval_return"] is None for h in history)
    assert all(h["eval_return"] is None or math.isfinite(h["eval_return"]) for h in history)
    # the policy is an ordinary file: readable by the group and others under the usual umask
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "policy.safetensors").stat().st_mode) == 0o666 & ~umask


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as JSON parsers outside Python do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_safe_writes_null_for_missing_values():
    from torchwm_rl.app.runs import json_safe

    data = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": np.float32(2.5), "d": torch.tensor([1.0, math.nan])}
    text = json.dumps(json_safe(data), allow_nan=False)
    assert _strict_json(text) == {"a": None, "b": [1.0, None, None], "c": 2.5, "d": [1.0, None]}
    with pytest.raises(ValueError):
        _strict_json(json.dumps({"a": math.nan}))  # what the demo wrote before


def test_unknown_task_is_one_line_listing_the_tasks_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    from torchwm_rl import zoo
    from torchwm_rl.app.cli import main

    proc = subprocess.run([sys.executable, "-m", "torchwm_rl", "demo", "acrobot"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)  # as a user runs it
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"torchwm-rl demo: unknown task 'acrobot'; available: {', '.join(zoo.available())}"]
    monkeypatch.chdir(tmp_path)
    assert main(["train-model", "acrobot"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"torchwm-rl train-model: unknown task 'acrobot'; available: {', '.join(zoo.available())}"]
    assert list(tmp_path.iterdir()) == []  # no empty run folder


def test_run_demo_refuses_an_unknown_task_before_making_the_folder(tmp_path):
    from torchwm_rl.zoo import UnknownModelError

    with pytest.raises(UnknownModelError, match="available: cartpole, cartpole-pixels, pendulum"):
        run_demo(DemoConfig(task="acrobot", out=str(tmp_path / "run"), progress=False), log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_task_list_comes_from_the_zoo_registry(monkeypatch, capsys):
    from torchwm_rl import zoo
    from torchwm_rl.app.cli import main

    monkeypatch.setitem(zoo._REGISTRY, "acrobot", ("torchwm_rl.zoo.cartpole", "Acrobot-v1"))
    assert zoo.canonical("Acrobot-v1") == "acrobot"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "acrobot, cartpole, cartpole-pixels, pendulum" in capsys.readouterr().out


def test_demo_wall_clock_starts_with_the_demo_command(monkeypatch):
    """wall_seconds counts from the demo command's own start, not from the process start (which,
    in a one-line set-up command, is where pip installs were counted)."""
    import time

    import torchwm_rl.app.demo as demo
    from torchwm_rl.app.cli import main

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda cfg, t0=None, **kw: seen.update(t0=t0) or {})
    before = time.perf_counter()
    assert main(["demo", "--no-plot"]) == 0
    assert before <= seen["t0"] <= time.perf_counter()


def test_cli_version_and_help_texts(capsys):
    from torchwm_rl import __version__
    from torchwm_rl.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    helps = {}
    for command in ("demo", "train-model", "check"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    assert "train a policy only inside it" in helps["demo"] and "real Gymnasium env" in helps["demo"]
    assert "which bundled world model to train in (one of: cartpole" in helps["demo"]
    assert "--seed SEED seeds" in helps["demo"]
    assert "which bundled world model to rebuild" in helps["train-model"]
    assert "--seed SEED seeds" in helps["train-model"] and "--seed SEED seed for" in helps["check"]


def test_load_policy_rebuilds_the_saved_network(tmp_path):
    from torchwm_rl.app.demo import build_actor_critic, load_policy
    from torchwm_rl.serialization import save_weights

    from torchrl.data import Categorical

    _, _, net = build_actor_critic(4, 2, Categorical(2), hidden=64)
    path = save_weights(net, tmp_path / "policy.safetensors",
                        {"kind": "torchwm_rl.demo.ppo_policy/1", "hidden": 64, "obs_dim": 4, "n_actions": 2})
    loaded = load_policy(path)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), net(x).detach())
    with pytest.raises(ValueError, match="not a torchwm-rl demo policy"):
        load_policy(save_weights(net, tmp_path / "other.safetensors"))


@pytest.mark.slow
def test_demo_is_deterministic_given_seed(tmp_path):
    runs = [run_demo(DemoConfig(seed=7, out=str(tmp_path / f"r{i}"), progress=False,
                                save_plot=False, **TINY), log=lambda m: None) for i in range(2)]
    for key in ("real_mean_return", "imagined_mean_return", "imagined_frames", "model_error_step1"):
        assert runs[0][key] == runs[1][key], key
    a = load_weights(tmp_path / "r0" / "policy.safetensors")
    b = load_weights(tmp_path / "r1" / "policy.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_demo_without_matplotlib_skips_the_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    messages = []
    result = run_demo(DemoConfig(seed=0, out=str(tmp_path), progress=False, **TINY), log=messages.append)
    assert result["plot_path"] is None and not (tmp_path / "results.png").exists()
    assert any("matplotlib is not installed" in m for m in messages)
    assert any("real return" in m for m in messages)  # the table is still printed


def test_format_table():
    table = format_table([("a", "1"), ("longer key", "22")])
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1


def test_the_old_demo_import_path_still_works_with_a_deprecation_warning():
    """The README of earlier versions showed ``from torchwm_rl.demo import load_policy``; the demo
    moved to torchwm_rl.app.demo, and the old path is an alias that warns."""
    import importlib
    import sys

    import torchwm_rl.app.demo as moved

    sys.modules.pop("torchwm_rl.demo", None)
    with pytest.warns(DeprecationWarning, match="torchwm_rl.app.demo"):
        old = importlib.import_module("torchwm_rl.demo")
    assert old.load_policy is moved.load_policy and old.run_demo is moved.run_demo


# ------------------------------------------------------ progress output (issue 27, item 5)
def test_progress_prints_about_every_tenth_of_the_budget_and_the_last_line():
    from torchwm_rl.app.progress import Progress

    lines = []
    progress = Progress(1024, lines.append)
    for frames in range(64, 1024 + 1, 64):
        progress.update(frames, "text")
    assert 9 <= len(lines) <= 11, lines
    assert lines[-1].startswith("    1,024 / 1,024 frames (100%)") and lines[-1].endswith("text")
    progress.finish(1024, "text")
    assert len(lines) <= 11  # already printed
    early = []
    stopped = Progress(1024, early.append)
    stopped.update(64, "a")
    stopped.finish(64 * 3, "b")  # a run that stopped before its next line still shows where it stopped
    assert early[-1].startswith("      192 / 1,024 frames ( 19%)") and early[-1].endswith("b")
    silent = []
    Progress(10, silent.append, enabled=False).update(10, "x")
    assert silent == []


def test_returns_are_described_with_what_is_known_never_nan():
    from torchwm_rl.app.progress import describe_returns

    assert describe_returns(12.25, 3.0) == "training episodes that ended in the last batch: mean return 12.2"
    assert describe_returns(math.nan, -40.0, "since the last line") == (
        "no training episode ended since the last line; mean return so far of those running: -40.0")
    assert describe_returns(math.nan, math.nan) == "no training episode ended in the last batch"


def test_an_early_stop_says_why():
    from torchwm_rl.app.demo_cartpole import SOLVED_STREAK, stop_reason

    history = [{"frames": 72_704, "solved_streak": SOLVED_STREAK - 1},
               {"frames": 73_728, "solved_streak": SOLVED_STREAK}]
    assert stop_reason(history, 300_032, 64, 500) == (
        "stopped early at 73,728 of up to 300,032 frames: in 2 greedy evaluations in a row, every one of the 64 "
        "imagined episodes survived to the time limit (500 steps)")
    assert stop_reason(history[:1], 300_032, 64, 500) is None and stop_reason([], 300_032, 64, 500) is None


def test_torchrl_info_lines_are_silenced_within_a_demo_and_restored_after():
    import logging

    from torchwm_rl.app.progress import quiet_torchrl_info

    logger = logging.getLogger("torchrl")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        with quiet_torchrl_info():
            assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


@pytest.mark.slow
@pytest.mark.parametrize("task, args", [
    ("cartpole", ["--frames", "2048", "--num-envs", "16"]),
    ("pendulum", ["--frames", "600", "--num-envs", "8"]),
])
def test_demo_output_shows_no_nan_no_torchrl_info_and_no_init_frames_warning(tmp_path, task, args):
    """Failed before: `imagined return nan` lines (pendulum), `greedy_eval=nan` (CartPole), the
    `init_random_frames ... not exactly a multiple` warning and `[torchrl][INFO]` lines."""
    proc = subprocess.run([sys.executable, "-m", "torchwm_rl", "demo", task, *args, "--episodes", "1", "--seed", "3",
                           "--out", str(tmp_path), "--no-plot"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    progress = [line for line in proc.stdout.splitlines() if " frames (" in line]
    assert progress and progress[-1].split(" frames (")[1].startswith("100%)"), proc.stdout
    assert not [line for line in progress if "nan" in line], proc.stdout
    assert "[torchrl][INFO]" not in output and "not exactly a multiple" not in output, output[-3000:]
    if task == "cartpole":
        assert "greedy policy: not evaluated yet" in progress[0], proc.stdout


# ------------------------------------------------------ the pixel demo (issue 22, item 7)
@pytest.mark.slow
def test_cli_demo_cartpole_pixels_json_line_picture_and_results(tmp_path):
    """`torchwm-rl demo cartpole-pixels --json` with a tiny budget (4 labels: rounds of 2, 1, 1): one
    strict-JSON line with the other demos' keys, results.json, results.png and a policy file
    load_policy reads that acts as the student the reality check scored."""
    pytest.importorskip("pygame")
    from torchwm_rl.app.demo import load_policy

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torchwm_rl", "demo", "cartpole-pixels", "--frames", "4", "--num-envs", "4",
         "--episodes", "2", "--seed", "1", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = _strict_json(lines[-1])
    for key in ("real_mean_return", "imagined_mean_return", "wall_seconds"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result["task"] == "cartpole-pixels" and result["episodes"] == 2 and result["labels"] == 4
    # every imagined step counted: the planner's 128 x 40 x 2 per label, and 2 rounds of 4 x 200 student steps
    assert result["imagined_frames"] == 4 * 128 * 40 * 2 + 2 * 4 * 200
    assert result["real_frames_for_training"] > 20  # the bank: 20 random-action real episodes
    assert set(result["pixel_error_by_horizon"]) == {"1", "5", "15", "50", "100"}
    assert isinstance(result["pixel_error_by_horizon"]["1"], float)  # real episodes last at least 1 step
    assert set(result["probe_r2"]) == {"x", "x_dot", "theta", "theta_dot"}
    assert sum(result["real_ends"].values()) == 2
    assert (out / "results.png").is_file() and result["plot_path"] == str(out / "results.png")
    saved = _strict_json((out / "results.json").read_text())
    assert saved["result"]["real_mean_return"] == result["real_mean_return"]
    assert len(saved["reality_check"]["real_returns"]) == 2 and saved["distil"]["labels_per_round"] == [2, 1, 1]
    assert [h["labels"] for h in saved["history"]] == [2, 3, 4]
    assert [h["frames"] for h in saved["history"]] == [3 * 10240 + 800, 4 * 10240 + 1600, 4 * 10240 + 1600]
    net = load_policy(out / "policy.safetensors")
    assert isinstance(net[1], torch.nn.ELU) and net(torch.zeros(3, 144)).shape == (3, 2)
    assert net[0].out_features == 5 * 128  # the student: 5 fits of hidden 128, merged into one network
    # the saved student is the one the check scored: replaying real episode 1 with it gives its return
    import gymnasium as gym

    from torchwm_rl import zoo
    from torchwm_rl.pixel_reality import filter_episode

    real = gym.make("CartPole-v1", render_mode="rgb_array")
    episode = filter_episode(zoo.load("cartpole-pixels"), lambda f: int(net(f).argmax(-1)), real, seed=1)
    assert episode.ret == saved["reality_check"]["real_returns"][0]


def test_labels_per_round_splits_the_pixel_demos_budget():
    from torchwm_rl.app.demo_cartpole_pixels import labels_per_round

    assert labels_per_round(2560, 10) == [256] * 10
    assert labels_per_round(4, 10) == [2, 1, 1] and labels_per_round(2, 10) == [2]
    assert labels_per_round(1025, 10) == [103] * 5 + [102] * 5
    assert labels_per_round(11, 10) == [2] + [1] * 9
    for total in (1, 0, 2.5):
        with pytest.raises(ValueError, match="--frames is the number of planner-labelled latents"):
            labels_per_round(total, 10)


def test_policy_files_name_their_activation_and_an_unknown_one_is_refused(tmp_path):
    from torchwm_rl.app.demo import load_policy
    from torchwm_rl.app.demo_cartpole import _mlp
    from torchwm_rl.serialization import save_weights

    for activation, module in (("ELU", torch.nn.ELU), (None, torch.nn.Tanh)):
        meta = {"kind": "torchwm_rl.demo.mlp_policy/1", "hidden": 8, "obs_dim": 3, "n_actions": 2}
        net = _mlp(3, 2, 8, module)
        path = save_weights(net, tmp_path / f"{activation}.safetensors",
                            meta | ({"activation": activation} if activation else {}))
        loaded = load_policy(path)
        assert isinstance(loaded[1], module)
        x = torch.randn(5, 3)
        assert torch.equal(loaded(x), net(x))
    bad = save_weights(_mlp(3, 2, 8), tmp_path / "bad.safetensors",
                       {"kind": "torchwm_rl.demo.mlp_policy/1", "hidden": 8, "obs_dim": 3, "n_actions": 2,
                        "activation": "GELU"})
    with pytest.raises(ValueError, match="unknown activation 'GELU'"):
        load_policy(bad)


def test_a_task_without_a_demo_is_refused_in_one_line_before_making_a_folder(tmp_path, capsys, monkeypatch):
    """The NO_DEMO table (cartpole-pixels was in it before it got its demo)."""
    import torchwm_rl.app.demo as demo
    from torchwm_rl.app.cli import main

    monkeypatch.setitem(demo.NO_DEMO, "cartpole-pixels", "cartpole-pixels has no demo yet")
    assert main(["demo", "cartpole-pixels", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "torchwm-rl demo: cartpole-pixels has no demo yet"
    with pytest.raises(NotImplementedError, match="cartpole-pixels has no demo yet"):
        run_demo(DemoConfig(task="cartpole_pixels", out=str(tmp_path / "run"), progress=False), log=lambda m: None)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert demo.NO_DEMO == {} and "cartpole-pixels" in demo.DEMOS  # every zoo model has a demo now
