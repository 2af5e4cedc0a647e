"""What a step gives in the corner cases of issue 13: TorchRL's ``"_step"`` mask on a direct
``env.step(td)``, bfloat16/float16 latents on every path, and the final observation of an
episode truncated by ``nan_policy="truncate"`` (what a bootstrapping learner reads)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from torchrl.envs import EnvBase

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

BOX = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
N = 3


def _counting_env(**kwargs):
    return WorldModelEnv(
        None, BOX, ACT,
        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
        transition_fn=lambda state, action: {"state": state + 1.0, "observation": state + 1.0,
                                             "reward": (state + 1.0).sum(-1)},
        batch_size=(N,), **kwargs)


# ---------------------------------------------------------------------------- "_step"
def test_a_direct_step_with_a_step_mask_leaves_the_masked_out_rows_as_they_were():
    env = _counting_env(max_episode_steps=10)
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    td = env.step(td)["next"].clone()  # every env at step 1
    td["action"] = torch.zeros(N, 2)
    td["_step"] = torch.tensor([True, False, True])
    out = env.step(td)
    nxt = out["next"]
    # stepped rows moved on
    assert nxt["observation"][[0, 2], 0].tolist() == [2.0, 2.0]
    assert nxt["elapsed_steps"][[0, 2], 0].tolist() == [2, 2]
    assert nxt["reward"][[0, 2], 0].tolist() == [4.0, 4.0]
    # the masked-out row is TorchRL's skipped step: its state, observation and count as they were
    assert nxt["observation"][1].tolist() == [1.0, 1.0]
    assert nxt["model_state"][1].tolist() == [1.0, 1.0]
    assert nxt["elapsed_steps"][1, 0].item() == 1
    assert nxt["reward"][1, 0].item() == 2.0  # TorchRL's skipped step copies what the input has
    assert not nxt["done"][1, 0].item()


def test_a_step_mask_row_never_raises_for_a_nan_it_does_not_take():
    def transition(state, action):
        nxt = state + 1.0
        nxt[1] = float("nan")  # env 1 is past its domain; it is masked out
        return {"state": nxt, "observation": nxt, "reward": nxt.sum(-1)}

    env = WorldModelEnv(None, BOX, ACT, reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
                        transition_fn=transition, batch_size=(N,))
    td = env.reset()
    td["action"] = torch.zeros(N, 2)
    td["_step"] = torch.tensor([True, False, True])
    nxt = env.step(td)["next"]
    assert nxt["observation"][1].tolist() == [0.0, 0.0]
    assert torch.isfinite(nxt["observation"]).all()


def test_break_when_all_done_keeps_ended_envs_where_they_ended():
    env = WorldModelEnv(
        None, BOX, ACT,
        reset_fn=lambda batch_size=(): torch.zeros(*batch_size, 2),
        transition_fn=lambda state, action: {"state": state + 1.0, "observation": state + 1.0,
                                             "terminated": (state[..., 0] + 1.0) >= torch.tensor([1.0, 3.0, 2.0])},
        batch_size=(N,))
    td = env.rollout(5, break_when_any_done=False, break_when_all_done=True)
    final = td["next", "observation"][:, -1, 0].tolist()
    assert final == [1.0, 3.0, 2.0]  # each env stops at its own end


# ------------------------------------------------------------- nan_policy="truncate"
def _nan_hooks(separate_state: bool):
    """Counting dynamics; env 1's third step is NaN. With ``separate_state`` the observation is
    twice the state (so it is not the state)."""

    def reset(batch_size=()):
        state = torch.zeros(*batch_size, 2)
        return (state, 2 * state) if separate_state else state

    def transition(state, action):
        nxt = state + 1.0
        obs = 2 * nxt if separate_state else nxt.clone()
        if obs.ndim == 2:
            obs[1] = torch.where(nxt[1, 0] == 3.0, float("nan"), obs[1])
        elif nxt[0] == 3.0:
            obs = obs * float("nan")
        return {"state": nxt, "observation": obs, "reward": nxt.sum(-1)}

    return dict(reset_fn=reset, transition_fn=transition, nan_policy="truncate")


def _last_finite(separate_state: bool) -> list:
    return [4.0, 4.0] if separate_state else [2.0, 2.0]  # the observation at step 2


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast-rollout", "EnvBase.rollout"])
def test_truncate_hands_out_the_last_finite_observation_torchrl(separate_state, fast):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    policy = lambda td: td.set("action", torch.zeros(N, 2))  # noqa: E731
    td = (env.rollout(3, policy, break_when_any_done=False) if fast
          else EnvBase.rollout(env, 3, policy, break_when_any_done=False))
    nxt = td["next"][:, 2]
    assert nxt["truncated"][:, 0].tolist() == [False, True, False]
    assert nxt["nonfinite"][:, 0].tolist() == [False, True, False]
    assert nxt["observation"][1].tolist() == _last_finite(separate_state)
    scale = 2.0 if separate_state else 1.0
    assert nxt["observation"][0].tolist() == [3.0 * scale] * 2  # other envs untouched


@pytest.mark.parametrize("decode", [False, True], ids=["no-decode_fn", "decode_fn"])
def test_truncate_under_a_transformed_env_never_transforms_an_observation_twice(decode):
    """A TransformedEnv hands the base env the *transformed* observation: the base env must
    not return it as its own final observation (the transform would apply a second time). With
    decode_fn, or without one from the ``"last_observation"`` the env carries (a state entry no
    observation transform touches), the final observation is the last finite one, transformed
    once."""
    from torchrl.envs import ObservationNorm, TransformedEnv

    extra = {"decode_fn": lambda model, state: 2 * state} if decode else {}
    base = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(True), **extra)
    env = TransformedEnv(base, ObservationNorm(loc=1.0, scale=10.0, in_keys=["observation"], standard_normal=False))
    policy = lambda td: td.set("action", torch.zeros(N, 2))  # noqa: E731
    td = env.rollout(3, policy, break_when_any_done=False)
    nxt = td["next"][:, 2]
    assert nxt["truncated"][:, 0].tolist() == [False, True, False]
    raw = _last_finite(True)
    assert nxt["observation"][1].tolist() == [1.0 + 10.0 * v for v in raw]  # transformed once
    assert nxt["observation"][0].tolist() == [1.0 + 10.0 * 6.0] * 2  # other envs untouched


def test_truncate_under_cat_frames_stacks_the_last_finite_frame_once():
    """CatFrames stacks the base env's observations: a truncated row's final frame is the last
    finite observation (the frame it started from), never a stacked one fed back, nor 0."""
    from torchrl.envs import CatFrames, TransformedEnv

    base = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(True))
    env = TransformedEnv(base, CatFrames(N=2, dim=-1, in_keys=["observation"]))
    td = env.rollout(3, _policy, break_when_any_done=False)
    nxt = td["next"][:, 2]
    assert nxt["truncated"][:, 0].tolist() == [False, True, False]
    assert nxt["observation"][1].tolist() == _last_finite(True) * 2  # frames: step 2's, then step 2's again
    assert nxt["observation"][0].tolist() == [4.0, 4.0, 6.0, 6.0]  # other envs: steps 2 and 3


def test_truncate_reads_a_direct_steps_observation_only_when_the_env_handed_it_out():
    """env.step on a tensordict the env gave (or a copy of it): the final observation is the
    env's own ``"last_observation"``; an observation set by the caller (a transform, a replay
    buffer) is never handed out as the env's: the row still reads the last finite one."""
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(True))
    td = env.reset()
    for _ in range(2):
        td = env.step(td.set("action", torch.zeros(N, 2)))["next"]
    # a copy of the last observation the env handed out (a worker's buffer, a stacked trajectory)
    copied = td.clone(False).set("observation", td["observation"] + 0.0)
    out = env.step(copied.set("action", torch.zeros(N, 2)))["next"]
    assert out["observation"][1].tolist() == _last_finite(True)
    own = env.step(td.clone(False).set("action", torch.zeros(N, 2)))["next"]
    assert own["truncated"][:, 0].tolist() == [False, True, False]
    assert own["observation"][1].tolist() == _last_finite(True)
    foreign = td.clone(False).set("observation", td["observation"] + 1.0)
    out = env.step(foreign.set("action", torch.zeros(N, 2)))["next"]
    assert out["observation"][1].tolist() == _last_finite(True)


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
def test_truncate_hands_out_the_last_finite_observation_gym(separate_state):
    env = GymWorldModelEnv(None, BOX, ACT, **_nan_hooks(separate_state))
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.zeros(2, np.float32))
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and info["nonfinite"]
    np.testing.assert_array_equal(obs, np.array(_last_finite(separate_state), np.float32))


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_truncate_hands_out_the_last_finite_observation_vector(separate_state, mode):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    venv = env.to_gymnasium(autoreset_mode=mode)
    venv.reset(seed=0)
    for _ in range(2):
        venv.step(np.zeros((N, 2), np.float32))
    obs, reward, terminated, truncated, info = venv.step(np.zeros((N, 2), np.float32))
    assert truncated.tolist() == [False, True, False]
    final = obs[1] if mode is AutoresetMode.NEXT_STEP else info["final_obs"][1]
    np.testing.assert_array_equal(final, np.array(_last_finite(separate_state), np.float32))


@pytest.mark.parametrize("separate_state", [False, True], ids=["obs-is-state", "separate-state"])
def test_truncate_hands_out_the_last_finite_observation_sb3(separate_state):
    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(separate_state))
    venv = env.to_sb3()
    venv.reset()
    for _ in range(2):
        venv.step(np.zeros((N, 2), np.float32))
    obs, rewards, dones, infos = venv.step(np.zeros((N, 2), np.float32))
    assert dones.tolist() == [False, True, False]
    assert infos[1]["TimeLimit.truncated"] and infos[1]["nonfinite"]
    np.testing.assert_array_equal(infos[1]["terminal_observation"],
                                  np.array(_last_finite(separate_state), np.float32))
    np.testing.assert_array_equal(obs[1], np.zeros(2, np.float32))  # the env restarted


# ------------------------------------------------------------ bfloat16 / float16 latents
class LowPrecision:
    """A latent of ``dtype`` (bfloat16 or float16), checked on every call: the model gets back
    exactly the dtype it returned. Observation and reward come in ``obs_dtype``; the info
    carries a per-env value in the latent's dtype."""

    def __init__(self, dtype, obs_dtype=torch.float32):
        self.dtype, self.obs_dtype = dtype, obs_dtype
        self.seen = []

    def reset_fn(self, model, seed=None, options=None, batch_size=()):
        state = torch.full((*batch_size, 2), 0.5, dtype=self.dtype)
        return state, state.to(self.obs_dtype)

    def transition_fn(self, model, state, action):
        self.seen.append(state.dtype)
        nxt = state + 0.25  # exact in both dtypes
        return {"state": nxt, "observation": nxt.to(self.obs_dtype), "reward": nxt.sum(-1).to(self.obs_dtype),
                "info": {"latent_norm": nxt.sum(-1)}}


LOW = [torch.bfloat16, torch.float16]


def _low_env(model, batch=(), **kwargs):
    return WorldModelEnv(None, BOX, ACT, reset_fn=model.reset_fn, transition_fn=model.transition_fn,
                         batch_size=batch, **kwargs)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-rollout", "EnvBase.rollout"])
@pytest.mark.parametrize("batch", [(), (N,)], ids=["unbatched", "batched"])
def test_low_precision_latents_stay_in_their_dtype_torchrl(dtype, fast, batch):
    model = LowPrecision(dtype)
    env = _low_env(model, batch)
    assert env.state_spec["model_state"].dtype == dtype
    policy = lambda td: td.set("action", torch.zeros(*td.batch_size, 2))  # noqa: E731
    td = (env.rollout(3, policy) if fast else EnvBase.rollout(env, 3, policy))
    assert td["model_state"].dtype == dtype and td["next", "model_state"].dtype == dtype
    assert set(model.seen) == {dtype}
    t = torch.arange(1, 4, dtype=torch.float32)
    expected = (0.5 + 0.25 * t).reshape(*[1] * len(batch), 3).expand(*batch, 3)
    torch.testing.assert_close(td["next", "model_state"][..., 0], expected.to(dtype), rtol=0, atol=0)
    assert td["next", "observation"].dtype == torch.float32
    torch.testing.assert_close(td["next", "observation"][..., 0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_latents_on_the_gymnasium_env(dtype):
    model = LowPrecision(dtype)
    env = GymWorldModelEnv(None, BOX, ACT, reset_fn=model.reset_fn, transition_fn=model.transition_fn)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0.5, 0.5]
    obs, reward, _, _, info = env.step(np.zeros(2, np.float32))
    assert obs.dtype == np.float32 and obs.tolist() == [0.75, 0.75] and reward == 1.5
    state = info["model_state"]
    if dtype is torch.bfloat16:  # numpy has no bfloat16: a detached torch copy of its dtype
        assert isinstance(state, torch.Tensor) and state.dtype == dtype and not state.requires_grad
        assert isinstance(info["latent_norm"], torch.Tensor) and info["latent_norm"].item() == 1.5
        assert state.tolist() == [0.75, 0.75]
        state.add_(100.0)  # a copy: the env's state is not changed
        assert env.state.tolist() == [0.75, 0.75]
    else:
        assert isinstance(state, np.ndarray) and state.dtype == np.float16 and state.tolist() == [0.75, 0.75]
    assert env.state.dtype == dtype and set(model.seen) == {dtype}
    env.step(np.zeros(2, np.float32))
    assert env.state.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_low_precision_latents_on_the_vector_export(dtype, mode):
    model = LowPrecision(dtype)
    venv = _low_env(model, (N,)).to_gymnasium(autoreset_mode=mode)
    venv.reset(seed=0)
    obs, reward, _, _, info = venv.step(np.zeros((N, 2), np.float32))
    assert obs.dtype == np.float32 and obs.tolist() == [[0.75, 0.75]] * N
    assert reward.tolist() == [1.5] * N
    assert venv.state.dtype == dtype and set(model.seen) == {dtype}
    norms = info["latent_norm"]
    assert [float(v) for v in norms] == [1.5] * N and info["_latent_norm"].all()


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_latents_on_the_sb3_export(dtype):
    model = LowPrecision(dtype)
    venv = _low_env(model, (N,)).to_sb3()
    venv.reset()
    obs, rewards, dones, infos = venv.step(np.zeros((N, 2), np.float32))
    assert obs.dtype == np.float32 and obs.tolist() == [[0.75, 0.75]] * N
    assert rewards.tolist() == [1.5] * N
    assert [float(info["latent_norm"]) for info in infos] == [1.5] * N
    assert set(model.seen) == {dtype}


@pytest.mark.parametrize("obs_dtype", LOW, ids=str)
@pytest.mark.parametrize("kind", ["torchrl", "gym", "vector", "sb3"])
def test_low_precision_observations_and_rewards_convert_exactly(obs_dtype, kind):
    model = LowPrecision(torch.float32, obs_dtype)
    if kind == "gym":
        env = GymWorldModelEnv(None, BOX, ACT, reset_fn=model.reset_fn, transition_fn=model.transition_fn)
        env.reset(seed=0)
        obs, reward, *_ = env.step(np.zeros(2, np.float32))
    elif kind == "torchrl":
        td = _low_env(model, (N,)).rollout(1, lambda td: td.set("action", torch.zeros(N, 2)))
        obs, reward = td["next", "observation"][:, 0], td["next", "reward"][:, 0, 0]
        assert obs.dtype == torch.float32 and reward.dtype == torch.float32
    else:
        env = _low_env(model, (N,))
        venv = env.to_gymnasium() if kind == "vector" else env.to_sb3()
        venv.reset() if kind == "sb3" else venv.reset(seed=0)
        obs, reward, *_ = venv.step(np.zeros((N, 2), np.float32))
    np.testing.assert_array_equal(np.asarray(obs, dtype=np.float64), 0.75)
    np.testing.assert_array_equal(np.asarray(reward, dtype=np.float64), 1.5)


def _policy(td):
    return td.set("action", torch.zeros(*td.batch_size, 2))


def test_truncate_reads_its_own_observation_through_a_serial_env():
    """A SerialEnv steps the env on a copy of what it handed out (its own buffers): the
    observation is the env's, the truncated row's final observation the last finite one."""
    from torchrl.envs import SerialEnv

    env = SerialEnv(1, lambda: WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(True)))
    td = env.rollout(3, _policy, break_when_any_done=False)
    assert td["next", "truncated"][0, 1, 2, 0].item()
    assert td["next", "observation"][0, 1, 2].tolist() == _last_finite(True)
    env.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast-rollout", "EnvBase.rollout"])
def test_truncate_reads_its_own_observation_when_a_rollout_is_continued(fast):
    """A rollout continued from the last step of a stacked trajectory (a copy of what the env
    handed out) gives the truncated row its last finite observation."""
    from torchrl.envs.utils import step_mdp

    env = WorldModelEnv(None, BOX, ACT, batch_size=(N,), **_nan_hooks(True))
    start = step_mdp(EnvBase.rollout(env, 2, _policy, break_when_any_done=False)[:, -1])
    rollout = env.rollout if fast else lambda *a, **k: EnvBase.rollout(env, *a, **k)
    td = rollout(1, _policy, auto_reset=False, tensordict=start, break_when_any_done=False)
    assert td["next", "truncated"][:, 0, 0].tolist() == [False, True, False]
    assert td["next", "observation"][1, 0].tolist() == _last_finite(True)


SQUARE = gym.spaces.Box(-np.inf, np.inf, shape=(2, 2), dtype=np.float32)


def _square_hooks():
    def reset(batch_size=()):
        return torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]])

    def transition(state, action):
        return {"state": state + 1.0, "observation": torch.full((2, 2), float("nan")), "reward": state.sum()}

    return dict(reset_fn=reset, transition_fn=transition, nan_policy="truncate")


@pytest.mark.parametrize("kind", ["transposed view", "in-place under inference_mode"])
def test_truncate_never_transforms_twice_a_view_or_an_unversioned_in_place_write(kind):
    """A transform returning a view of the env's observation with other strides (a transpose
    of a square one), or writing into it in place under inference_mode (no version counter),
    gives the env a transformed observation at its own address: the env's ``"last_observation"``
    is its own copy, so the truncated row's final observation is the start's, transformed once."""
    from torchrl.envs import Transform, TransformedEnv

    class T(Transform):
        def _apply_transform(self, obs):
            return obs.transpose(-1, -2) if kind == "transposed view" else obs.mul_(10.0)

        def _reset(self, tensordict, tensordict_reset):
            return self._call(tensordict_reset)

    env = TransformedEnv(WorldModelEnv(None, SQUARE, ACT, **_square_hooks()),
                         T(in_keys=["observation"], out_keys=["observation"]))
    ctx = torch.no_grad() if kind == "transposed view" else torch.inference_mode()
    with ctx:
        td = env.rollout(1, _policy)
    assert td["next", "truncated"][0, 0].item()
    start = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    once = start.T if kind == "transposed view" else start * 10.0
    assert td["next", "observation"][0].tolist() == once.tolist()
