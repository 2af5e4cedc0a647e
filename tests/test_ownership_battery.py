"""The ownership battery (issue 25): hooks that alias, write in place and reuse buffers, and a
caller that refills one action buffer, on every front end, against a reference loop.

Hypothesis draws a front end (TorchRL ``env.rollout``, ``EnvBase.rollout``, ``env.step``, the
Gymnasium env, the vector and SB3 exports), a model-state structure (tensor, dict, TensorDict),
a state dtype (float32, float64), a return form (a separate state, or only the observation: the
state is then the observation as the model returned it, before the cast to the space's
float32) and a way the hooks misbehave:

* ``fresh``: new tensors every call (the well-behaved model);
* ``inplace``: the transition writes the next state into the state it was given and returns it;
* ``obs_is_state`` / ``obs_view``: the observation is the state tensor itself, or a view of it;
* ``reused_buffer``: the model writes every output (reset state, next state, reward) into one
  buffer of its own and returns that buffer each time;
* ``keeps_action``: the next state keeps the action tensor it was given, by reference (an RSSM
  input, a smoothness penalty).

The caller always refills ONE action buffer (a numpy array on the Gymnasium and SB3 paths, one
tensor written by the policy on the TorchRL paths). Everything a path hands out (observations,
model states, rewards, actions) is kept by reference and read only at the end: each must equal
the reference loop, which copies everything. A time limit of 3 steps exercises resets.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
N = 3
STEPS = 7
LIMIT = 3
START = 0.25
PATHS = ["rollout", "envbase", "step", "step-unbatched", "gym", "vector", "sb3"]
ALIASING = ["fresh", "inplace", "obs_is_state", "obs_view", "reused_buffer", "keeps_action"]


def dynamics(x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The next state, out of place (the reference loop's; the in-place hooks do the same
    float operations in the same order)."""
    return x * 1.1 + 0.1 * action.to(x.dtype) + 1 / 3


class Mischief:
    """A world model whose hooks misbehave as ``aliasing`` says (see the module docs)."""

    def __init__(self, aliasing: str, kind: str, dtype: torch.dtype, separate_state: bool):
        self.aliasing, self.kind, self.dtype, self.separate = aliasing, kind, dtype, separate_state
        self.buffer = None  # the one buffer of "reused_buffer"
        self.reward_buffer = None

    def _state(self, x: torch.Tensor, action: torch.Tensor):
        if not self.separate or self.kind == "tensor":
            return x
        entries = {"x": x, "last_action": action}
        return TensorDict(entries, batch_size=x.shape[:-1]) if self.kind == "tensordict" else entries

    def _x(self, state):
        return state if isinstance(state, torch.Tensor) else state["x"]

    def reset(self, model, seed=None, options=None, batch_size=()):
        x = torch.full((*batch_size, 2), START, dtype=self.dtype)
        if self.aliasing == "reused_buffer":
            if self.buffer is None or self.buffer.shape != x.shape:
                self.buffer = x.clone()
            x = self.buffer.copy_(x)
        state = self._state(x, torch.zeros(*batch_size, 2))
        if not self.separate:
            return x  # the observation is the state
        return {"state": state, "observation": self._observation(x)}

    def _observation(self, x: torch.Tensor) -> torch.Tensor:
        if self.aliasing == "obs_is_state":
            return x
        if self.aliasing == "obs_view":
            return x.view(x.shape)
        return x.clone() if self.aliasing == "reused_buffer" else x

    def transition(self, model, state, action):
        x = self._x(state)
        if self.aliasing == "inplace":
            nxt = x.mul_(1.1).add_(0.1 * action.to(x.dtype)).add_(1 / 3)
        elif self.aliasing == "reused_buffer":
            if self.buffer is None or self.buffer.shape != x.shape:
                self.buffer = x.clone()
            nxt = self.buffer.copy_(dynamics(x, action))
        else:
            nxt = dynamics(x, action)
        reward = nxt.sum(-1).float()
        if self.aliasing == "reused_buffer":
            if self.reward_buffer is None or self.reward_buffer.shape != reward.shape:
                self.reward_buffer = reward.clone()
            reward = self.reward_buffer.copy_(reward)
        if not self.separate:
            return {"observation": nxt, "reward": reward}
        kept = action if self.aliasing == "keeps_action" else action.clone()
        return {"state": self._state(nxt, kept), "observation": self._observation(nxt), "reward": reward}


def reference(actions: np.ndarray, separate: bool, kind: str, dtype: torch.dtype) -> list:
    """[(next observation, reward, next state or None)] per step, from a loop that copies
    everything; ``actions`` is ``[T, *B, 2]``; the episode restarts after every LIMIT steps."""
    out = []
    x = torch.full((*actions.shape[1:-1], 2), START, dtype=dtype)
    for t, action in enumerate(torch.as_tensor(actions)):
        x = dynamics(x.clone(), action.clone())
        state = x.clone() if (kind == "tensor" or not separate) else {"x": x.clone(), "last_action": action.clone()}
        out.append((x.float(), x.sum(-1).float(), state))
        if (t + 1) % LIMIT == 0:
            x = torch.full_like(x, START)
    return out


def _env(path: str, model: Mischief):
    kwargs = dict(reset_fn=model.reset, transition_fn=model.transition, max_episode_steps=LIMIT)
    if path == "gym":
        return GymWorldModelEnv(model, OBS, ACT, **kwargs)
    env = WorldModelEnv(model, OBS, ACT, batch_size=() if path == "step-unbatched" else (N,), **kwargs)
    if path == "vector":
        return env.to_gymnasium()
    if path == "sb3":
        return env.to_sb3()
    return env


class RefillingPolicy:
    """A TorchRL policy that writes every action into ONE tensor and hands out that tensor."""

    def __init__(self, actions: np.ndarray):
        self.actions, self.t, self.buffer = torch.as_tensor(actions), 0, None

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        action = self.actions[self.t]
        self.buffer = action.clone() if self.buffer is None else self.buffer.copy_(action)
        self.t += 1
        td.set("action", self.buffer)
        return td


def run(path: str, model: Mischief, actions: np.ndarray) -> list:
    """[(next observation, reward, next state or None, action the path recorded or None)] per
    step, each kept as the path handed it out (no copy) and read after the whole run."""
    env = _env(path, model)
    steps = []
    if path in ("rollout", "envbase"):
        rollout = (env.rollout if path == "rollout" else lambda *a, **k: EnvBase.rollout(env, *a, **k))
        td = rollout(STEPS, RefillingPolicy(actions), break_when_any_done=False)
        for t in range(STEPS):
            nxt = td[..., t]["next"]
            state = nxt.get("model_state", None)
            # TorchRL's own EnvBase.rollout keeps the tensors a policy writes, as for any env:
            # only the env's fast rollout is asked to own the recorded actions
            action = td[..., t]["action"] if path == "rollout" else None
            steps.append((nxt["observation"], nxt["reward"].squeeze(-1), state, action))
        return steps
    if path.startswith("step"):
        td, buffer = env.reset(), None
        for action in torch.as_tensor(actions):
            buffer = action.clone() if buffer is None else buffer.copy_(action)
            td.set("action", buffer)
            td = env.step(td)
            nxt = td["next"]
            # td["action"] is the caller's own entry here (the env records nothing): not checked
            steps.append((nxt["observation"], nxt["reward"].squeeze(-1), nxt.get("model_state", None), None))
            td = env.reset() if bool(nxt["done"].all()) else step_mdp(td)
        return steps
    buffer = np.zeros_like(actions[0])
    if path == "sb3":
        env.reset()
        for action in actions:
            buffer[...] = action
            env.step_async(buffer)
            obs, reward, dones, infos = env.step_wait()
            final = np.stack([infos[i]["terminal_observation"] if dones[i] else obs[i] for i in range(N)])
            steps.append((final, reward, None, None))
        return steps
    env.reset(seed=0)
    ended = False
    for action in actions:
        if ended and path == "vector":  # next-step autoreset: this step only resets
            buffer[...] = 0.0
            env.step(buffer)
        buffer[...] = action
        obs, reward, terminated, truncated, info = env.step(buffer)
        ended = bool(np.all(np.asarray(terminated) | np.asarray(truncated)))
        steps.append((obs, reward, info.get("model_state") if path == "gym" else None, None))
        if ended and path == "gym":
            env.reset()
    return steps


def _assert_state(got, expected, dtype, where):
    if isinstance(expected, torch.Tensor):
        got = torch.as_tensor(got)
        assert got.dtype == dtype, (where, "state dtype", got.dtype, dtype)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m: f"{where}: state {m}")
        return
    for key, value in expected.items():
        _assert_state(got[key], value, value.dtype, (where, key))


def check(path, aliasing, kind, dtype, separate):
    model = Mischief(aliasing, kind, dtype, separate)
    batch = () if path in ("gym", "step-unbatched") else (N,)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(STEPS, *batch, 2)).astype(np.float32)
    got = run(path, model, actions)
    expected = reference(actions, separate, kind, dtype)
    assert len(got) == len(expected)
    for t, ((obs, reward, state, action), (exp_obs, exp_reward, exp_state)) in enumerate(zip(got, expected)):
        where = f"{path}, {aliasing}, step {t}"
        np.testing.assert_array_equal(np.asarray(torch.as_tensor(obs)), exp_obs.numpy(), err_msg=f"{where}: observation")
        np.testing.assert_array_equal(np.asarray(torch.as_tensor(reward)).astype(np.float32), exp_reward.numpy(),
                                      err_msg=f"{where}: reward")
        if state is not None:
            _assert_state(state, exp_state, dtype, where)
        if action is not None:
            np.testing.assert_array_equal(np.asarray(torch.as_tensor(action)), actions[t], err_msg=f"{where}: action")


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@settings(max_examples=120, **SETTINGS)
@given(
    path=st.sampled_from(PATHS),
    aliasing=st.sampled_from(ALIASING),
    kind=st.sampled_from(["tensor", "dict", "tensordict"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    separate=st.booleans(),
)
def test_every_path_hands_out_what_the_reference_loop_computes(path, aliasing, kind, dtype, separate):
    # only-the-observation models have a tensor state; aliasing the observation needs a
    # separate state, and keeping the action needs a state with room for it
    assume(separate or (kind == "tensor" and aliasing in ("fresh", "inplace", "reused_buffer")))
    assume(aliasing != "keeps_action" or kind != "tensor")
    check(path, aliasing, kind, dtype, separate)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aliasing", ["inplace", "reused_buffer"])
def test_float64_state_given_only_as_the_observation_is_not_rounded(path, aliasing):
    """The state of a model that returns only its (float64) observation is that value as
    returned, not its float32 cast: a fixed, readable case of the battery."""
    check(path, aliasing, "tensor", torch.float64, separate=False)


@pytest.mark.parametrize("path", PATHS)
def test_state_written_in_place_does_not_rewrite_recorded_states(path):
    check(path, "inplace", "tensordict", torch.float32, separate=True)


def _alternating_policy(extra_key_at=None):
    """Two buffers refilled in turn (step i's action is i / 100); ``extra_key_at``: from that
    call on the policy also writes an "extra" key (the steps no longer fit the first step's
    layout: the trajectory is kept as lists of steps from there)."""
    buffers = [torch.zeros(N, 2), torch.zeros(N, 2)]
    calls = iter(range(100))

    def policy(td):
        i = next(calls)
        td.set("action", buffers[i % 2].fill_(i / 100))
        if extra_key_at is not None and i >= extra_key_at:
            td.set("extra", torch.zeros(N))
        return td

    return policy


def test_a_policy_alternating_between_two_buffers_is_recorded_right():
    """Two buffers refilled in turn: each step's action is copied into the preallocated
    trajectory when it is recorded, so the later refill does not change it (before the
    preallocated trajectory the record kept the policy's tensor and the rollout refused it)."""
    env = _env("rollout", Mischief("fresh", "tensor", torch.float32, separate_state=True))
    out = env.rollout(5, _alternating_policy(), break_when_any_done=False)
    expected = torch.arange(5, dtype=torch.float32).div(100)[None, :, None].expand(N, 5, 2)
    torch.testing.assert_close(out["action"], expected, rtol=0, atol=0)


def test_a_policy_alternating_between_two_buffers_is_refused_where_steps_are_kept_as_they_are():
    """Steps that do not fit the first step's buffers (here a key that appears at step 2) are kept
    as the policy gave them, stacked at the end: there a buffer refilled after it was recorded
    would change the record, so the rollout says so instead of returning that value (step 2's
    action is copied, as the first step kept as is always is; step 3's buffer is refilled at 5)."""
    env = _env("rollout", Mischief("fresh", "tensor", torch.float32, separate_state=True))
    with pytest.raises(RuntimeError, match=r"wrote into the 'action' tensor it returned at step 3"):
        env.rollout(6, _alternating_policy(extra_key_at=2), break_when_any_done=False)


# ------------------------------------------- the dtype of a state that is the observation


def _numpy_model_env(reset_dtype):
    def reset_fn(model, seed=None, options=None, batch_size=()):
        return np.full((*batch_size, 1), 1.0, dtype=reset_dtype)

    def transition(model, state, action):
        s = np.asarray(state, dtype=np.float64) * (1 + 1e-9)  # a numpy model computes in float64
        return {"observation": s, "reward": (s[..., 0] - 1.0) * 1e9}

    space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    return WorldModelEnv(None, space, gym.spaces.Box(-1, 1, (1,), np.float32), reset_fn=reset_fn,
                         transition_fn=transition, seed=0)


def test_a_state_keeps_the_dtype_of_the_first_reset_so_every_path_steps_the_same_numbers():
    """A reset that gives float32 and steps that give float64: the state stays float32 (its spec)
    on every path. Failed after the uncast-state change: env.step drifted in float64 while
    SerialEnv's preallocated float32 buffers rounded every step, and check_env_specs failed."""
    from torchrl.envs import SerialEnv
    from torchrl.envs.utils import check_env_specs

    def rewards(env, batched):
        td, out = env.reset(), []
        for _ in range(4):
            td["action"] = torch.zeros(1, 1) if batched else torch.zeros(1)
            nxt = env.step(td)["next"]
            out.append(float(nxt["reward"].reshape(-1)[0]))
            td = nxt
        return out, nxt["model_state"].dtype

    direct, dtype = rewards(_numpy_model_env(np.float32), False)
    serial, _ = rewards(SerialEnv(1, lambda: _numpy_model_env(np.float32)), True)
    assert direct == serial and dtype == torch.float32
    check_env_specs(_numpy_model_env(np.float32))


def test_float32_start_states_are_widened_for_a_float64_state_and_narrowing_is_refused():
    env = _numpy_model_env(np.float64)  # numpy's default: a float64 state
    assert env.state_spec["model_state"].dtype == torch.float64
    start = TensorDict({"model_state": torch.full((4, 1), 0.5)}, [4])  # float32, as replay buffers store
    out = env.rollout(2, tensordict=start, auto_reset=False)
    assert out["model_state"].dtype == torch.float64 and out["model_state"][:, 0].eq(0.5).all()
    assert start["model_state"].dtype == torch.float32  # the caller's tensordict is left as it was
    narrow = _numpy_model_env(np.float32)
    with pytest.raises(TypeError, match=r"'model_state': expected dtype torch.float32 \(the model's state\), "
                                        r"got torch.float64"):
        narrow.rollout(2, tensordict=TensorDict({"model_state": torch.zeros(4, 1, dtype=torch.float64)}, [4]),
                       auto_reset=False)
