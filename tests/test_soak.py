"""The soak benchmark (``benchmarks/soak.py``) still runs on each path with a tiny budget (its
real run is in the closing note; no timing asserted here)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("path", ["torchrl", "vector", "sb3"])
def test_soak_script_runs(path, capsys):
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", script)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    threads = torch.get_num_threads()
    try:
        code = soak.main(["--path", path, "--steps", "47", "--num-envs", "64", "--min-len", "3",
                          "--max-len", "6", "--report", "3", "--tolerance-mb", "1000"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0 and "RSS at start" in out and "RSS at end" in out and "verdict: no growth" in out
    ends = int(out.split(" episode ends")[0].rsplit(", ", 1)[-1].replace(",", ""))
    assert ends >= 64 * 47 // 6  # every env hit its time limit several times
