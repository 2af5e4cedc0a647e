"""The tutorials in this repository's ``tutorials/`` folder run, and the tutorial text only shows
code that runs. (The user's TorchWM tutorial is tested by ``test_torchwm_tutorial.py``.)

* Every script in tutorials/ runs end to end with ``--budget tiny`` in a fresh interpreter.
  ``point_mass.py`` (the stand-in world model and adapters) is a module the scripts import,
  not a script: it runs as part of every script.
* Every fenced ``python`` snippet in tutorials/README.md appears verbatim (up to a uniform
  indentation) in one of the tutorial files (scripts or modules), so no snippet in the docs
  goes unexecuted.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
README = TUTORIALS / "README.md"
MODULES = {"point_mass.py", "cartpole_pixels_common.py"}  # imported by the scripts, never run on their own
SOURCES = sorted(TUTORIALS.glob("*.py"))
SCRIPTS = [path for path in SOURCES if path.name not in MODULES]
RETURN_LINE = re.compile(r"mean return before\s+(-?[\d.]+)\s+after\s+(-?[\d.]+)")


# warnings a tutorial must not trigger: each was fixed at its cause (the collector told the
# policy needs no InitTracker; whole batches of frames), so a user's run stays clean
UNWANTED = ["auto_register_policy_transforms", "not exactly divisible", "FutureWarning"]


def run_script(name: str, *args: str, stderr: bool = False):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)  # warnings stay visible, as in a user's terminal
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / name), "--budget", "tiny", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=TUTORIALS.parent,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return (proc.stdout, proc.stderr) if stderr else proc.stdout


def returns_in(stdout: str) -> list[tuple[float, float]]:
    found = [(float(a), float(b)) for a, b in RETURN_LINE.findall(stdout)]
    for before, after in found:
        # an episode lasts at most 50 steps with a per-step reward in [-sqrt(2), 0]
        assert all(-50 * math.sqrt(2) <= r <= 0 for r in (before, after)), stdout
    return found


@pytest.mark.slow
def test_sb3_tutorial_trains_mlp_multiinput_cnn_and_discrete():
    pytest.importorskip("stable_baselines3")
    stdout = run_script("sb3_ppo.py", "--kinds", "vector", "dict", "image", "discrete")
    assert [line.split()[1] for line in stdout.splitlines() if RETURN_LINE.search(line)] == [
        "MlpPolicy", "MultiInputPolicy", "CnnPolicy", "MlpPolicy",
    ]
    assert len(returns_in(stdout)) == 4
    # progress while training: each run reports its last step (with SB3's ep_rew_mean)
    for kind in ("vector", "dict", "image", "discrete"):
        assert re.search(rf"^  {kind}: +256/256 steps  ep_rew_mean ", stdout, re.M), stdout


@pytest.mark.slow
def test_torchrl_tutorial_trains_ppo_on_vectors_and_images_and_sac():
    stdout, stderr = run_script("torchrl_ppo.py", "--kinds", "vector", "image", stderr=True)
    labels = [" ".join(line.split()[:2]) for line in stdout.splitlines() if RETURN_LINE.search(line)]
    assert labels == ["PPO vector", "PPO image", "SAC vector"]
    assert "GymWrapper route: observation (4,)" in stdout
    assert len(returns_in(stdout)) == 3
    for label in labels:  # progress while training, up to the last batch
        assert f"  {label}:     256/256 frames" in stdout, stdout
    assert not [w for w in UNWANTED if w in stderr], stderr[-3000:]
    assert "[torchrl][INFO]" not in stdout + stderr, stdout[-3000:]  # check_env_specs, LazyTensorStorage


def test_full_budgets_are_whole_batches():
    """TorchRL's collector warns, and collects extra frames, when total_frames is not a whole
    number of batches: every budget of the TorchRL tutorial is."""
    sys.path.insert(0, str(TUTORIALS))
    try:
        import torchrl_ppo
    finally:
        sys.path.remove(str(TUTORIALS))
    for name, (num_envs, frames_per_batch, total_frames, _) in torchrl_ppo.BUDGETS.items():
        assert total_frames % frames_per_batch == 0 and frames_per_batch % num_envs == 0, name


@pytest.mark.slow
def test_cleanrl_tutorial_runs_top_to_bottom():
    stdout = run_script("cleanrl_ppo.py")
    iterations = [line for line in stdout.splitlines() if line.startswith("iteration")]
    assert len(iterations) == 4  # 512 steps / (8 envs x 16 steps)
    episodes = int(re.search(r"episodes (\d+)", stdout).group(1))
    assert episodes > 0  # the time limit (50 steps) or the goal ended some imagined episodes


@pytest.mark.slow
def test_cleanrl_tutorial_prints_progress_about_every_tenth_of_the_run():
    """Failed before: one line per iteration (73 lines for the full budget's 73 iterations)."""
    stdout = run_script("cleanrl_ppo.py", "--total-timesteps", str(20 * 8 * 16))  # 20 iterations
    iterations = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("iteration")]
    assert iterations == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20], stdout


@pytest.mark.slow
@pytest.mark.parametrize("path", ["parallel-env", "collectors", "async-vector-env", "subproc-vec-env", "ray"])
def test_multiprocess_tutorial_paths(path):
    if path == "ray":
        pytest.importorskip("ray")
    if path == "subproc-vec-env":
        pytest.importorskip("stable_baselines3")
    stdout, stderr = run_script("multiprocess_workers.py", "--paths", path, stderr=True)
    assert stdout.strip(), "each path prints what it collected"
    # no collector reprs dumped by Ray (it labels actor logs with the actor's repr), no warnings
    assert "td_out=" not in stderr + stdout and "policy=TensorDictModule" not in stderr + stdout, stderr[-3000:]
    assert not [w for w in UNWANTED if w in stderr], stderr[-3000:]


@pytest.mark.slow
def test_bring_your_own_model_tutorial_walks_every_step_on_acrobot(tmp_path):
    """Collect, fit, wrap, check, train (SB3 PPO), reality check and plot, with a tiny budget."""
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "report.png"
    stdout, stderr = run_script("bring_your_own_model.py", "--plot", str(plot), stderr=True)
    steps = [line.split(".")[0] for line in stdout.splitlines() if line[:1].isdigit() and line[1:3] == ". "]
    assert steps == [str(i) for i in range(1, 8)], stdout
    assert "OK: all checks passed" in stdout
    assert re.search(r"real return -?[\d.]+ \+/- [\d.]+ .*\(2 episodes, horizon 500\)", stdout), stdout
    assert re.search(r"step 1: [\d.e-]+ \(2 of 2 episodes\)", stdout), stdout
    assert plot.stat().st_size > 0
    assert not [w for w in UNWANTED if w in stderr], stderr[-3000:]
    assert "[torchrl][INFO]" not in stdout + stderr


@pytest.mark.slow
@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_planning_tutorial_acts_in_the_real_env(planner):
    stdout, stderr = run_script("planning.py", "--planner", planner, stderr=True)
    found = re.search(rf"{planner.upper()} MPC real returns: \[([\d.]+)\]", stdout)
    assert found, stdout
    # one real CartPole-v1 episode capped at 20 steps: a return in [1, 20]
    assert 1 <= float(found.group(1)) <= 20, stdout
    assert "random policy real returns" in stdout
    assert "Traceback" not in stderr, stderr[-3000:]


def json_results(stdout: str) -> list[dict]:
    import json

    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_cartpole_pixels_dreamer_tutorial_trains_in_imagination_and_checks_reality_from_pixels():
    """TorchRL's DreamerV3 losses from real-frame starts (4 updates), then one real episode."""
    pytest.importorskip("pygame")
    stdout, stderr = run_script("cartpole_pixels_dreamer.py", stderr=True)
    assert re.search(r"^update +4/4 +imagined return over 5 steps", stdout, re.M), stdout
    (result,) = json_results(stdout)
    assert result["starts"] > 0 and len(result["real_returns"]) == 1
    assert 1 <= result["real_mean_return"] <= 500 and result["real_ends"][0] in ("theta", "x", "time")
    assert not [w for w in UNWANTED if w in stderr], stderr[-3000:]
    assert "requires_grad=True to a scalar" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_cartpole_pixels_sb3_tutorial_trains_latent_and_cnn_policies():
    pytest.importorskip("pygame")
    pytest.importorskip("stable_baselines3")
    stdout, stderr = run_script("cartpole_pixels_sb3.py", "--mode", "latent", "pixels", stderr=True)
    results = json_results(stdout)
    assert [r["mode"] for r in results] == ["latent", "pixels"], stdout
    assert results[1]["eval_frame"] == "decoded"
    for r in results:
        assert r["steps"] == 128 and 1 <= r["real_mean_return"] <= 500 and len(r["real_returns"]) == 1
    assert not [w for w in UNWANTED if w in stderr], stderr[-3000:]


def test_cartpole_pixels_frames_need_the_small_cnn():
    """SB3's NatureCNN cannot take a 1 x 32 x 120 frame (its convs leave 0 rows), which is why the
    CnnPolicy tutorial passes SmallCNN; SmallCNN gives its features for a batch of them."""
    sb3 = pytest.importorskip("stable_baselines3")
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3.common.torch_layers import NatureCNN

    space = gym.spaces.Box(0, 255, (1, 32, 120), np.uint8)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        NatureCNN(space)
    sys.path.insert(0, str(TUTORIALS))
    try:
        import cartpole_pixels_sb3
    finally:
        sys.path.remove(str(TUTORIALS))
    assert issubclass(cartpole_pixels_sb3.SmallCNN, sb3.common.torch_layers.BaseFeaturesExtractor)
    assert cartpole_pixels_sb3.SmallCNN(space)(torch.zeros(3, 1, 32, 120)).shape == (3, 256)


def test_sac_target_entropy_is_one_envs_action_dims():
    """SACLoss's automatic target entropy is -(action dims) of one env: -2 for the tutorial's
    2-dim action, whatever the number of envs (the batched spec gave -2 * num_envs)."""
    sys.path.insert(0, str(TUTORIALS))
    try:
        import torchrl_ppo
    finally:
        sys.path.remove(str(TUTORIALS))
    env = torchrl_ppo.make_env("vector", 8, 0)
    actor = torchrl_ppo.make_actor(env, "vector")
    from torchrl.modules import MLP, ValueOperator

    qvalue = ValueOperator(MLP(in_features=6, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
    loss = torchrl_ppo.make_sac_loss(env, actor, qvalue)
    assert env.action_spec.shape == (8, 2)
    assert float(loss.target_entropy) == -2.0


def test_every_tutorial_script_is_run_by_this_file():
    tested = {"sb3_ppo.py", "torchrl_ppo.py", "cleanrl_ppo.py", "multiprocess_workers.py", "planning.py",
              "bring_your_own_model.py", "cartpole_pixels_dreamer.py", "cartpole_pixels_sb3.py"}
    assert {script.name for script in SCRIPTS} == tested


def test_tutorial_modules_are_imported_not_run():
    """A file in MODULES skips the script runs above, so it must really be a module: it exists,
    has no ``__main__`` entry point, and a tested script imports it (and so executes it)."""
    for name in MODULES:
        assert (TUTORIALS / name).is_file(), f"MODULES lists a missing file: {name}"
        assert "__main__" not in (TUTORIALS / name).read_text(), f"{name} is a script: run it in a test"
        module = name.removesuffix(".py")
        importers = [script.name for script in SCRIPTS if f"from {module} import" in script.read_text()]
        assert importers, f"no tutorial script imports {module}"


# ------------------------------------------------------------------------- docs snippets
def python_snippets(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def appears_verbatim(snippet: str, source: str) -> bool:
    """``snippet``'s lines occur consecutively in ``source``, all shifted by one indentation."""
    want = snippet.rstrip("\n").splitlines()
    lines = source.splitlines()
    first = want[0]
    for i, line in enumerate(lines):
        if line.strip() != first.strip() or not line.endswith(first):
            continue
        indent = line[: len(line) - len(first)]
        if indent.strip():
            continue
        block = lines[i : i + len(want)]
        if len(block) == len(want) and all(
            got == indent + w if w.strip() else not got.strip() for got, w in zip(block, want)
        ):
            return True
    return False


def test_appears_verbatim_detects_changed_and_reindented_code():
    source = "def f():\n    x = 1\n\n    return x\n"
    assert appears_verbatim("x = 1\n\nreturn x\n", source)
    assert not appears_verbatim("x = 2\n\nreturn x\n", source)
    assert not appears_verbatim("x = 1\n  return x\n", source)


def test_every_readme_snippet_is_copied_from_a_tutorial_script():
    snippets = python_snippets(README.read_text())
    assert len(snippets) >= 8, "the tutorial shows each library's path in code"
    sources = {path.name: path.read_text() for path in SOURCES}
    missing = [s for s in snippets if not any(appears_verbatim(s, src) for src in sources.values())]
    assert not missing, "README snippets not found verbatim in tutorials/*.py:\n\n" + "\n---\n".join(missing)


def test_readme_links_point_to_existing_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if not target.startswith("http"):
            assert (TUTORIALS / target).exists(), f"broken link in tutorials/README.md: {target}"
