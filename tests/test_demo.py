"""The demo end to end with tiny budgets (no timed assertions, no return targets: a 2-batch run
cannot learn CartPole; the full-budget figures are measured separately and reported in README)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from torchwm_rl.demo import DemoConfig, format_table, run_demo
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
    saved = json.load(open(out / "results.json"))
    assert saved["result"]["real_mean_return"] == result["real_mean_return"]
    assert len(saved["reality_check"]["real_returns"]) == 2


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
