"""The MBPO loop (torchwm_rl.app.mbpo) and its model-free baseline, with tiny budgets: the
loop runs through the same code as the benchmark runs, and its result says what happened."""

from __future__ import annotations

import json

import pytest

from torchwm_rl.app.mbpo import MBPOConfig, run, write_results

TINY = dict(real_steps=120, warmup_steps=60, refit_every=30, eval_every=60, eval_episodes=1, final_eval_episodes=1,
            rollouts_per_step=8, updates_per_step=1, members=3, elites=2, model_hidden=16, model_layers=2,
            max_fit_epochs=2, hidden=16, batch_size=32, progress=False)


@pytest.mark.slow
def test_mbpo_refits_on_schedule_and_reports_its_result(tmp_path):
    result = run(MBPOConfig(**TINY))
    assert result["algorithm"] == "MBPO" and result["real_steps"] == 120
    assert [f["step"] for f in result["fits"]] == [60, 90, 120]  # the first refit ends the warm-up, then every 30
    assert [c["real_steps"] for c in result["curve"]] == [60, 120]
    assert result["steps_to_target"] is None or result["steps_to_target"] in (60, 120)
    baseline = run(MBPOConfig(**TINY, model_free=True))
    assert baseline["algorithm"] == "SAC" and baseline["fits"] == []
    result["baseline"] = baseline
    write_results(result, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"real_mean_return", "real_steps", "steps_to_target", "wall_seconds"} <= set(saved)
    assert (tmp_path / "results.png").is_file()


def test_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task: expected one of"):
        run(MBPOConfig(task="CartPole-v1"))


def test_cli_refuses_an_unknown_task_with_exit_code_2(capsys):
    from torchwm_rl.app.cli import main

    assert main(["mbpo", "CartPole-v1", "--json"]) == 2
    assert "task: expected one of ('Pendulum-v1', 'InvertedPendulum-v5'), got 'CartPole-v1'" in capsys.readouterr().err
