"""The ``torchwm-rl`` command answers ``--help``, ``--version`` and argument errors without
importing torch, TorchRL, Gymnasium or the app's demos (each of which costs seconds): those are
imported inside the subcommand's handler only. Checked by what a fresh interpreter has imported,
never by timing."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchrl", "tensordict", "gymnasium", "torchwm_rl.app.demo", "torchwm_rl.app.check", "torchwm_rl.app.mbpo",
         "torchwm_rl.app.train_model", "torchwm_rl.app.demo_cartpole", "torchwm_rl.app.demo_pendulum",
         "torchwm_rl.app.runs", "torchwm_rl.app.sac", "torchwm_rl.env")

_SCRIPT = """
import sys
from torchwm_rl.app.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
heavy = {heavy!r}
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print("EXIT", code)
print("LOADED", loaded)
"""


def _run(argv):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(argv=argv, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("EXIT", "LOADED")))
    return lines, proc


@pytest.mark.parametrize("argv, code", [
    (["--help"], "0"),
    (["--version"], "0"),
    (["demo", "--help"], "0"),
    (["train-model", "--help"], "0"),
    (["check", "--help"], "0"),
    (["mbpo", "--help"], "0"),
    (["mbpo", "--no-such-flag"], "2"),
    (["demo", "--no-such-flag"], "2"),
    (["check"], "2"),  # missing MODULE:FACTORY
    (["demo", "acrobot"], "2"),  # not in the zoo: refused before anything heavy is imported
    ([], "2"),
])
def test_cli_answers_without_importing_torch(argv, code):
    lines, proc = _run(argv)
    assert lines.get("EXIT") == code, proc.stdout + proc.stderr
    assert lines.get("LOADED") == "[]", f"{argv} imported {lines.get('LOADED')}"


def test_python_dash_m_help_does_not_import_torch():
    """``python -m torchwm_rl --help``, through the real entry point: ``-X importtime`` lists
    every module imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "torchwm_rl", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train-model" in proc.stdout, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torchwm_rl.app.cli" in imported  # the listing is what we think it is
    assert not {m for m in imported if m.split(".")[0] in ("torch", "torchrl", "tensordict", "gymnasium")}


def test_package_imports_public_names_on_first_use():
    """``import torchwm_rl`` is cheap; the public names and submodules still resolve."""
    script = ("import sys, torchwm_rl\n"
              "assert 'torch' not in sys.modules, 'import torchwm_rl imported torch'\n"
              "from torchwm_rl import WorldModelEnv, GymWorldModelEnv, GymVectorWorldModelEnv, ModelAdapter\n"
              "from torchwm_rl import reality_check\n"
              "assert WorldModelEnv.__module__ == 'torchwm_rl.env'\n"
              "assert torchwm_rl.zoo.available() and torchwm_rl.gym.GymWorldModelEnv is GymWorldModelEnv\n"
              "assert set(torchwm_rl.__all__) <= set(dir(torchwm_rl))\n"
              "try:\n    torchwm_rl.no_such_name\nexcept AttributeError as exc:\n    print('ATTR', exc)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ATTR module 'torchwm_rl' has no attribute 'no_such_name'" in proc.stdout
