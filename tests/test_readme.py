"""The README's Python snippets run as written, and its set-up lines are the ones CI runs (or,
for the torch line, the documented CPU-index form of the same pin)."""

import math
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CI = README.parent / ".ci" / "run"


def snippets() -> list[str]:
    found = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert found, "README has no python snippet"
    return found


def test_readme_python_snippets_run():
    """The API snippets run in order in one namespace, as a user pastes them into one session."""
    namespace: dict = {}
    for code in snippets():
        if "load_policy" in code:
            continue  # needs a demo run: see the test below
        exec(compile(code, str(README), "exec"), namespace)
    rollout = namespace["rollout"]
    assert tuple(rollout.shape) == (256, 50)
    assert namespace["vec_env"].num_envs == 256 and namespace["sb3_env"].num_envs == 256
    # the SB3 snippet: rollouts of n_steps x N, and VecMonitor's episode statistics reach SB3
    model = namespace["model"]
    assert model.n_steps * model.n_envs == 4096 and model.num_timesteps == 4 * 4096
    assert len(model.ep_info_buffer) > 0  # what SB3 logs as ep_rew_mean
    assert all(math.isfinite(info["r"]) for info in model.ep_info_buffer)


@pytest.mark.slow
def test_readme_load_policy_snippet_runs_on_a_demo_policy(tmp_path, monkeypatch, capsys):
    from torchwm_rl.app.demo import DemoConfig, run_demo

    monkeypatch.chdir(tmp_path)
    run_demo(DemoConfig(frames=1024, num_envs=16, steps_per_batch=64, epochs=1, episodes=1, eval_envs=2,
                        progress=False, save_plot=False), log=lambda m: None)  # -> ./torchwm_rl_runs/<time>/
    (code,) = [c for c in snippets() if "load_policy" in c]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert 1 <= namespace["episode_return"] <= 500
    assert f"real CartPole-v1 return: {namespace['episode_return']}" in capsys.readouterr().out


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = CI.read_text()
    test_command = "python -m pytest -q -n 2"
    assert test_command in text and test_command in ci
    assert "torchwm-rl demo" in text
    # the README's torch line is the CPU-index form of the pin CI installs (CI finds a local CPU
    # wheel; the PyTorch index is not reachable there), and says what the plain line does
    pin = re.search(r"pip install -q (torch==[\d.]+)\n", ci).group(1)
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA build" in text
    for step in ("git clone", "cd torchwm-rl", "python3 -m venv .venv", ". .venv/bin/activate"):
        assert step in text, step
    assert 'pip install -e ".[plot]" && torchwm-rl demo' in text
    assert 'pip install -e ".[test]" && python -m pytest -q -n 2' in text
    assert '".[sb3]"' in text  # to_sb3() needs the extra that command 1 lacks


def test_readme_and_results_links_resolve():
    """The README points at benchmarks/RESULTS.md and docs/design-decisions.md for what it no
    longer carries; every relative link in the three files reaches a file that exists."""
    text = README.read_text()
    assert "](benchmarks/RESULTS.md" in text and "](docs/design-decisions.md)" in text
    for doc in (README, README.parent / "benchmarks" / "RESULTS.md", README.parent / "docs" / "design-decisions.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"broken link in {doc.name}: {target}"
