"""The MBPO loop (torchwm_rl.app.mbpo) and its model-free baseline, with tiny budgets: the
loop runs through the same code as the benchmark runs, and its result says what happened."""

from __future__ import annotations

import json

import pytest
import torch

from torchwm_rl.app.mbpo import MBPOConfig, _SAC, evaluate, run, write_results

TINY = dict(real_steps=120, warmup_steps=60, refit_every=30, eval_every=60, eval_episodes=1, final_eval_episodes=1,
            rollouts_per_step=8, updates_per_step=1, members=3, elites=2, model_hidden=16, model_layers=2,
            max_fit_epochs=2, hidden=16, batch_size=32, progress=False, early_refit_every=None)


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


def _sac(seed=0, **kwargs):
    import gymnasium as gym
    import torch

    from torchwm_rl.spaces import space_to_spec

    torch.manual_seed(seed)
    return _SAC(3, space_to_spec(gym.make("Pendulum-v1").action_space, ()), MBPOConfig(hidden=16, **kwargs))


def test_the_fused_soft_update_gives_torchrls_soft_update_exactly():
    import torch

    fused, stock = _sac(), _sac()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same moved Q weights in both
        for a, b in zip(fused.loss.qvalue_network_params.values(True, True),
                        stock.loss.qvalue_network_params.values(True, True)):
            a.add_(torch.randn(a.shape, generator=g))
            b.copy_(a)
    for _ in range(3):
        fused.soft_update()
        stock.target.step()
    moved = 0
    for key, value in stock.loss.target_qvalue_network_params.items(True, True):
        assert torch.equal(fused.loss.target_qvalue_network_params.get(key), value), key
        moved += 1
    assert moved == len(list(stock.loss.qvalue_network_params.keys(True, True))) > 0
    before = [t.clone() for t in fused._soft_pairs[0]]
    fused.soft_update()
    assert all(not torch.equal(a, b) for a, b in zip(before, fused._soft_pairs[0]))  # the targets do move


def test_the_batched_evaluation_gives_the_returns_of_episodes_played_one_by_one():
    import gymnasium as gym

    sac = _sac(seed=3)
    env = gym.make("Pendulum-v1")
    returns = []
    for i in range(3):
        obs, _ = env.reset(seed=40 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(sac.act(obs, deterministic=True))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    # the actor runs on a batch of observations: float32 rounding may differ in the last bit
    assert evaluate(sac, "Pendulum-v1", 3, seed=40) == pytest.approx(sum(returns) / 3, rel=1e-5)


def test_the_batched_evaluation_counts_each_episode_until_its_own_end():
    import gymnasium as gym
    import numpy as np

    class Lasts(gym.Env):
        """Episode from reset(seed=s) lasts 2 + s % 4 steps, reward 1 per step (then 100 if stepped on)."""

        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.left = 2 + seed % 4 if seed is not None else 100
            return np.zeros(3, np.float32), {}

        def step(self, action):
            self.left -= 1
            return np.zeros(3, np.float32), 1.0 if self.left >= 0 else 100.0, self.left <= 0, False, {}

    gym.register("torchwm-rl-test/Lasts-v0", entry_point=Lasts)
    try:
        # seeds 8..11: 2, 3, 4 and 5 steps
        assert evaluate(_sac(), "torchwm-rl-test/Lasts-v0", 4, seed=8) == (2 + 3 + 4 + 5) / 4
    finally:
        gym.registry.pop("torchwm-rl-test/Lasts-v0")


@pytest.mark.slow
def test_steps_to_target_comes_from_20_episode_evaluations_every_eval_every_steps_from_the_warmups_end():
    # a target every policy reaches: the first evaluation (at the warm-up's end, not before) is
    # steps_to_target; after it the curve goes on every curve_every steps
    result = run(MBPOConfig(**{**TINY, "eval_every": 30, "eval_episodes": 20}, curve_every=60, target=-1e9))
    assert result["steps_to_target"] == 60
    assert [(c["real_steps"], c["episodes"]) for c in result["curve"]] == [(60, 20), (120, 20)]
    # a target no policy reaches: an evaluation every eval_every steps from the warm-up's end
    result = run(MBPOConfig(**{**TINY, "eval_every": 30}, target=1e9, model_free=True))
    assert result["steps_to_target"] is None
    assert [c["real_steps"] for c in result["curve"]] == [60, 90, 120]
    assert MBPOConfig().eval_episodes == MBPOConfig().final_eval_episodes == 20  # the 20-episode evaluation


@pytest.mark.slow
def test_early_refits_and_the_horizon_schedule_count_real_steps():
    result = run(MBPOConfig(**{**TINY, "early_refit_every": 10}, early_refit_until=80, horizon=(60, 120, 1, 3)))
    assert [f["step"] for f in result["fits"]] == [60, 70, 80, 90, 120]
    # rollout_length(step, 60, 120, 1, 3): 1 at the warm-up's end, 3 at 120 real steps
    assert [(c["real_steps"], c["horizon"]) for c in result["curve"]] == [(60, 1), (120, 3)]
    assert {"fit", "rollout", "sac", "eval"} <= set(result["cpu_seconds_by_phase"])


def test_a_real_steps_update_batches_are_disjoint_blocks_of_one_sample_from_each_buffer():
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    from torchwm_rl.app.mbpo import _update_batches

    def buffer(first, rows, batch):
        b = ReplayBuffer(storage=LazyTensorStorage(rows), batch_size=batch, generator=torch.Generator().manual_seed(0))
        b.extend(TensorDict({"observation": torch.arange(first, first + rows).float()[:, None]}, [rows]))
        return b

    real, imagined = buffer(0, 50, 3 * 4), buffer(1000, 500, 3 * 12)
    batches = _update_batches(real, imagined, 3)
    assert len(batches) == 3
    for batch in batches:
        rows = batch["observation"].squeeze(-1)
        assert rows.shape == (16,) and bool((rows[:4] < 50).all()) and bool((rows[4:] >= 1000).all())
    # the same rows as one sample call per buffer, in order
    again_real, again_imagined = buffer(0, 50, 12), buffer(1000, 500, 36)
    want_real, want_imagined = again_real.sample()["observation"], again_imagined.sample()["observation"]
    got = torch.cat([b["observation"] for b in batches])
    assert torch.equal(got, torch.cat([torch.cat([want_real[4 * k:4 * k + 4], want_imagined[12 * k:12 * k + 12]])
                                       for k in range(3)]))
    only_real = _update_batches(buffer(0, 50, 3 * 16), None, 3)
    assert [tuple(b.shape) for b in only_real] == [(16,)] * 3


def test_the_default_refits_follow_the_warmup_every_50_steps_up_to_1000_then_every_200():
    from torchwm_rl.app.mbpo import _refit_due

    cfg = MBPOConfig()
    assert [s for s in range(cfg.warmup_steps, 1601) if _refit_due(s, cfg)] == [*range(200, 1001, 50), 1200, 1400, 1600]
    assert [s for s in range(cfg.warmup_steps, 1601) if _refit_due(s, MBPOConfig(early_refit_every=None))] == [
        200, 400, 600, 800, 1000, 1200, 1400, 1600]


def test_results_json_is_strict_json_when_a_value_is_not_finite(tmp_path):
    """A diverged run (NaN return) or an infinite --target is written as null: bare NaN /
    Infinity is not JSON (json.loads in Python accepts it; most other parsers do not)."""
    result = {"task": "Pendulum-v1", "seed": 0, "algorithm": "MBPO", "target": float("-inf"),
              "real_mean_return": float("nan"), "real_steps": 60, "steps_to_target": None, "wall_seconds": 1.0,
              "curve": [{"real_steps": 60, "real_return": float("nan")}]}
    write_results(result, tmp_path)

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    saved = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert saved["target"] is None and saved["real_mean_return"] is None
    assert saved["curve"] == [{"real_steps": 60, "real_return": None}]


def test_a_halted_imagined_step_gives_sac_the_tasks_absorbing_halt_reward_not_pendulums_best(monkeypatch):
    # MOReL's halting on the online loop: threshold 0 halts every imagined step. Before, the env's
    # default halt_reward 0 went into the model buffer: on Pendulum (every reward <= 0) the BEST
    # reward there is, so SAC learned to seek the states where the members disagree
    import math

    import torchrl.data

    extended = []

    class Recording(torchrl.data.ReplayBuffer):
        def extend(self, data, *args, **kwargs):
            extended.append(data)
            return super().extend(data, *args, **kwargs)

    monkeypatch.setattr(torchrl.data, "ReplayBuffer", Recording)
    cfg = MBPOConfig(**{**TINY, "real_steps": 62, "eval_every": 1000}, threshold=0.0)
    result = run(cfg)
    assert result["halted_fraction"] == 1.0
    imagined = torch.cat([td["next", "reward"] for td in extended])
    worst = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # Pendulum's lowest step reward
    halt = torch.tensor(worst / (1 - cfg.gamma), dtype=torch.float32)  # -813.7 at gamma 0.98
    assert imagined.numel() > 0 and torch.all(imagined == halt), imagined.unique()
    assert cfg.halt_reward_value() == pytest.approx(worst / (1 - cfg.gamma))
    assert all(td["next", "terminated"].all() for td in extended)
    assert MBPOConfig(halt_reward=-5.0).halt_reward_value() == -5.0  # an explicit value wins


def test_the_mopo_penalty_reaches_the_rewards_sac_learns_from(monkeypatch):
    # the same seed with and without --penalty: the first imagined batch (before any SAC update)
    # has the same states, and the penalised rewards are the plain ones minus lam * uncertainty >= 0
    import torchrl.data

    firsts = []

    class Recording(torchrl.data.ReplayBuffer):
        def extend(self, data, *args, **kwargs):
            if len(firsts) < len(runs):
                firsts.append(data.clone())
            return super().extend(data, *args, **kwargs)

    monkeypatch.setattr(torchrl.data, "ReplayBuffer", Recording)
    runs = []
    for penalty in (0.0, 1000.0):
        runs.append(penalty)
        run(MBPOConfig(**{**TINY, "real_steps": 61, "eval_every": 1000}, penalty=penalty))
    plain, penalised = firsts
    assert torch.equal(plain["next", "observation"], penalised["next", "observation"])
    drop = plain["next", "reward"] - penalised["next", "reward"]
    assert (drop >= 0).all() and drop.mean() > 1.0  # 1000 * a typical uncertainty of 0.01-0.1 (a 2-epoch fit)


@pytest.mark.slow
def test_mbpo_runs_on_inverted_pendulum_whose_observations_are_float64():
    # InvertedPendulum-v5's observation space is float64; the loop's networks are float32. The
    # imagined env used to carry the float64 space, and the first imagined rollout failed
    # ("mat1 and mat2 must have the same dtype") inside the actor
    pytest.importorskip("mujoco")
    import gymnasium as gym

    assert gym.make("InvertedPendulum-v5").observation_space.dtype == "float64"
    result = run(MBPOConfig(**dict(TINY, real_steps=90, warmup_steps=60), task="InvertedPendulum-v5"))
    assert result["algorithm"] == "MBPO" and [f["step"] for f in result["fits"]] == [60, 90]
    assert result["real_mean_return"] >= 1  # an InvertedPendulum episode earns 1 per step it stays up


def test_cli_refuses_a_thread_count_below_one_with_exit_code_2(capsys):
    from torchwm_rl.app.cli import main

    assert main(["mbpo", "Pendulum-v1", "--threads", "0", "--json"]) == 2
    assert "threads: expected an int of at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [True, 1.5, "2"])
def test_a_thread_count_that_is_not_an_int_is_refused(threads):
    with pytest.raises(ValueError, match=r"threads: expected an int of at least 1, got "):
        run(MBPOConfig(threads=threads))


@pytest.mark.slow
def test_mbpo_runs_with_the_thread_count_asked_and_restores_the_callers():
    seen, original = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = MBPOConfig(**dict(TINY, real_steps=70, progress=True), threads=2)
        result = run(cfg, log=lambda msg: seen.append(torch.get_num_threads()))  # called at each evaluation
        assert seen and set(seen) == {2}
        assert result["config"]["threads"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(original)


def test_a_run_that_fails_midway_leaves_the_callers_thread_count_as_it_was(monkeypatch):
    import gymnasium

    def broken_make(*args, **kwargs):
        raise RuntimeError("no real env today")

    monkeypatch.setattr(gymnasium, "make", broken_make)  # fails after the run set its thread count
    original = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RuntimeError, match="no real env today"):
            run(MBPOConfig(**TINY, threads=2))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(original)
