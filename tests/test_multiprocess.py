"""Multi-process use: every worker builds its own env and loads its own model copy.

Each path gets a factory (a module-level function + ``functools.partial``, so it pickles by
reference under ``spawn``/``forkserver``) that builds the model INSIDE the worker and loads the
weights from a file. The assertions check that the worker envs really run the saved weights
(a transition recomputed locally with those weights matches the worker's output) and that the
multi-process result equals the single-process one where the library promises it.

The env classes themselves also pickle (``pickle`` and ``cloudpickle``) into working,
independent copies, for libraries that ship built envs instead of factories.

A model with trainable parameters works in TorchRL's ParallelEnv workers unchanged: worker steps
copy outputs into shared memory, and a grad-tracking output used to kill the worker ("Autograd
not support dtype: Long"). Graphs cannot cross processes, so the env detaches there.

Worker counts are 2 and budgets tiny; the process tests are ``slow`` (process start-up).
"""

from __future__ import annotations

import functools
import pickle

import cloudpickle
import gymnasium
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import MultiAsyncCollector, MultiSyncCollector
from torchrl.envs import EnvCreator, ParallelEnv

from torchwm_rl import GymWorldModelEnv, WorldModelEnv
from models import VectorModel, reset_world_model, transition_world_model, vector_spaces

NUM_ENVS, HORIZON = 4, 3


def load_model(weights_path: str) -> VectorModel:
    """Build the architecture, then load the trained weights (runs inside each worker)."""
    model = VectorModel(seed=0)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return model.eval().requires_grad_(False)


def make_torchrl_env(weights_path: str, num_envs: int = NUM_ENVS) -> WorldModelEnv:
    obs_space, act_space = vector_spaces()
    return WorldModelEnv(
        load_model(weights_path), obs_space, act_space, reset_fn=reset_world_model,
        transition_fn=transition_world_model, max_episode_steps=HORIZON, batch_size=(num_envs,),
    )


def make_gym_env(weights_path: str, seed: int) -> GymWorldModelEnv:
    obs_space, act_space = vector_spaces()
    return GymWorldModelEnv(
        load_model(weights_path), obs_space, act_space, reset_fn=reset_world_model,
        transition_fn=transition_world_model, max_episode_steps=HORIZON, seed=seed,
    )


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory) -> str:
    """Weights that differ from the architecture's default init (seed 0)."""
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(VectorModel(seed=7).state_dict(), path)
    return str(path)


def assert_transitions_use(weights_path: str, data) -> None:
    """Every non-reset transition in ``data`` was computed with the saved weights."""
    model = load_model(weights_path)
    with torch.no_grad():
        expected = model.predict_next_state(data["model_state"], data["action"])
    torch.testing.assert_close(data["next", "model_state"], expected)
    assert not torch.allclose(expected, VectorModel(seed=0).predict_next_state(data["model_state"], data["action"]))


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("export", ["torchrl", "gymnasium-vector", "sb3", "gymnasium-single"])
def test_env_classes_pickle_and_step_the_same(weights_path, dumps, export):
    """Libraries that ship built envs to workers (or copy them) get a working, independent copy."""
    if export == "sb3":
        pytest.importorskip("stable_baselines3")
    env = make_torchrl_env(weights_path)
    obj = {
        "torchrl": lambda: env,
        "gymnasium-vector": env.to_gymnasium,
        "sb3": env.to_sb3,
        "gymnasium-single": lambda: make_gym_env(weights_path, seed=0),
    }[export]()
    copy = pickle.loads(dumps(obj))
    action = np.stack([vector_spaces()[1].sample()] * NUM_ENVS)
    if export == "torchrl":
        td = obj.reset(seed=1)
        td_copy = copy.reset(seed=1)
        td["action"] = td_copy["action"] = torch.as_tensor(action)
        torch.testing.assert_close(copy.step(td_copy)["next", "observation"], obj.step(td)["next", "observation"])
        return
    if export == "sb3":
        obj.seed(1), copy.seed(1)
        np.testing.assert_allclose(copy.reset(), obj.reset())
        np.testing.assert_allclose(copy.step(action)[0], obj.step(action)[0])
        return
    if export == "gymnasium-single":
        action = action[0]
    np.testing.assert_allclose(copy.reset(seed=1)[0], obj.reset(seed=1)[0])
    np.testing.assert_allclose(copy.step(action)[0], obj.step(action)[0])
    assert copy.logic is not obj.logic


def small_policy():
    torch.manual_seed(0)
    obs_dim = vector_spaces()[0].shape[0]
    act_dim = vector_spaces()[1].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(obs_dim, act_dim), torch.nn.Tanh())
    return TensorDictModule(net, in_keys=["observation"], out_keys=["action"])


@pytest.mark.slow
def test_parallel_env_of_batched_worker_envs(weights_path):
    env = ParallelEnv(2, EnvCreator(functools.partial(make_torchrl_env, weights_path)))
    try:
        env.set_seed(0)
        rollout = env.rollout(2 * HORIZON + 1, break_when_any_done=False)
        assert rollout.batch_size == torch.Size([2, NUM_ENVS, 2 * HORIZON + 1])
        assert_transitions_use(weights_path, rollout)
        # the time limit ends every episode after HORIZON steps and the worker resets it
        steps = rollout["next", "elapsed_steps"][0, 0, :, 0].tolist()
        assert steps == [1, 2, 3, 1, 2, 3, 1]
        assert rollout["next", "truncated"][..., HORIZON - 1, 0].all()
        # the two workers were seeded differently, so they imagine different episodes
        assert not torch.allclose(rollout["observation"][0, :, 0], rollout["observation"][1, :, 0])
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("collector_class", [MultiSyncCollector, MultiAsyncCollector])
def test_multi_process_collectors_with_worker_built_envs(weights_path, collector_class):
    make_env = functools.partial(make_torchrl_env, weights_path)
    frames_per_batch = 2 * NUM_ENVS * HORIZON
    collector = collector_class(
        [make_env, make_env], small_policy(), frames_per_batch=frames_per_batch,
        total_frames=2 * frames_per_batch,
    )
    try:
        batches = list(collector)
    finally:
        collector.shutdown()
    assert len(batches) == 2
    for batch in batches:
        assert batch.numel() == frames_per_batch
        assert_transitions_use(weights_path, batch)
        assert batch["next", "truncated"].any()  # time-limit endings cross the process boundary


def _gym_thunk(weights_path: str, seed: int):
    return functools.partial(make_gym_env, weights_path, seed)


def _run(envs, actions):
    envs.reset(seed=3)
    out = []
    for action in actions:
        obs, reward, terminated, truncated, _ = envs.step(action)
        out.append((obs, reward, terminated, truncated))
    return out


@pytest.mark.slow
def test_gymnasium_async_vector_env_matches_sync(weights_path):
    thunks = [_gym_thunk(weights_path, seed) for seed in (0, 1)]
    actions = [np.stack([vector_spaces()[1].sample()] * 2) for _ in range(2 * HORIZON + 2)]
    sync = gymnasium.vector.SyncVectorEnv(thunks)
    async_ = gymnasium.vector.AsyncVectorEnv(thunks, context="spawn")
    try:
        expected, got = _run(sync, actions), _run(async_, actions)
    finally:
        async_.close()
        sync.close()
    for (e_obs, e_rew, e_term, e_trunc), (obs, rew, term, trunc) in zip(expected, got):
        np.testing.assert_allclose(obs, e_obs, rtol=1e-6)
        np.testing.assert_allclose(rew, e_rew, rtol=1e-6)
        np.testing.assert_array_equal(term | trunc, e_term | e_trunc)
    assert any(trunc.any() for *_, trunc in got)  # an episode ended and was autoreset
    # worker envs run the saved weights: the first step follows the loaded model
    local = make_gym_env(weights_path, 0)
    obs, _ = local.reset(seed=3)
    np.testing.assert_allclose(local.step(actions[0][0])[0], got[0][0][0], rtol=1e-6)


@pytest.mark.slow
def test_sb3_subproc_vec_env_matches_dummy_and_trains(weights_path):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    thunks = [_gym_thunk(weights_path, seed) for seed in (0, 1)]
    dummy, subproc = DummyVecEnv(thunks), SubprocVecEnv(thunks, start_method="spawn")
    try:
        for venv in (dummy, subproc):
            venv.seed(5)
        obs_d, obs_s = dummy.reset(), subproc.reset()
        np.testing.assert_allclose(obs_s, obs_d, rtol=1e-6)
        for _ in range(HORIZON):
            action = np.stack([vector_spaces()[1].sample()] * 2)
            obs_d, rew_d, done_d, info_d = dummy.step(action)
            obs_s, rew_s, done_s, info_s = subproc.step(action)
            np.testing.assert_allclose(obs_s, obs_d, rtol=1e-6)
            np.testing.assert_allclose(rew_s, rew_d, rtol=1e-6)
            np.testing.assert_array_equal(done_s, done_d)
        assert done_s.all() and all(info["TimeLimit.truncated"] for info in info_s)
        assert "terminal_observation" in info_s[0]
        model = PPO("MlpPolicy", subproc, n_steps=8, batch_size=16, n_epochs=1, seed=0)
        before = [p.detach().clone() for p in model.policy.parameters()]
        model.learn(total_timesteps=16)
        assert model.num_timesteps == 16
        assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    finally:
        subproc.close()
        dummy.close()


# ------------------------------------------------------------- a trainable model in ParallelEnv
def make_trainable_env():
    obs, act = vector_spaces()
    model = VectorModel()
    assert any(p.requires_grad for p in model.parameters())
    return WorldModelEnv(model, obs, act, reset_fn=reset_world_model, transition_fn=transition_world_model,
                         batch_size=(4,), max_episode_steps=5, seed=0)


@pytest.mark.slow
def test_parallel_env_with_trainable_model():
    env = ParallelEnv(2, make_trainable_env)
    try:
        td = env.rollout(6, break_when_any_done=False)
    finally:
        env.close()
    assert tuple(td.batch_size) == (2, 4, 6)
    assert torch.isfinite(td["next", "reward"]).all()
    assert (td["next", "elapsed_steps"] <= 5).all()


def test_reset_outputs_carry_no_graph_but_steps_do():
    env = make_trainable_env()
    td = env.reset()
    assert not td["observation"].requires_grad and not td["model_state"].requires_grad
    td["action"] = torch.zeros(4, 2, requires_grad=True)
    out = env.step(td)
    assert out["next", "reward"].requires_grad


# --------------------------------------------------------------------- one env, two threads
class _Gate:
    """Hooks whose next transition call (after :meth:`arm`) signals ``entered`` and waits for
    ``release``: a step held inside the model while another thread calls the env."""

    def __init__(self):
        import threading

        self.entered, self.release, self.armed = threading.Event(), threading.Event(), False

    def arm(self):
        self.armed = True

    def reset(self, model, seed, options, generator):
        mask = (options or {}).get("reset_mask")
        return torch.zeros(*(() if mask is None else mask.shape), 2)

    def transition(self, model, state, action, generator):
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(30)  # a bound, so a broken guard fails the test instead of hanging
        return {"state": state + 1.0, "observation": state + 1.0, "reward": state.sum(-1)}


def _gated_env(kind, gate):
    space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    hooks = dict(reset_fn=gate.reset, transition_fn=gate.transition)
    if kind == "gym":
        return GymWorldModelEnv(None, space, space, **hooks)
    env = WorldModelEnv(None, space, space, batch_size=() if kind == "torchrl" else (2,), **hooks)
    return {"torchrl": env, "vector": env.to_gymnasium() if kind == "vector" else None,
            "sb3": env.to_sb3() if kind == "sb3" else None}[kind]


@pytest.mark.parametrize("kind", ["torchrl", "gym", "vector", "sb3"])
def test_one_env_stepped_from_two_threads_at_once_is_refused(kind):
    """A step (or reset) that starts while another thread's step of the same env runs raises,
    naming the env and what to do; the running step completes normally, and the env is usable
    again afterwards. (Without the guard the second step ran and one of the two was lost.)"""
    import threading

    gate = _Gate()
    env = _gated_env(kind, gate)
    if kind == "torchrl":
        td = env.reset()
        step = lambda: env.step(td.clone().set("action", torch.zeros(2)))  # noqa: E731
        reset = env.reset
    else:
        env.reset() if kind == "sb3" else env.reset(seed=0)
        action = np.zeros((2,) if kind == "gym" else (2, 2), np.float32)
        step, reset = (lambda: env.step(action)), (lambda: env.reset())
    results = []
    gate.arm()
    worker = threading.Thread(target=lambda: results.append(step()))
    worker.start()
    try:
        assert gate.entered.wait(30)
        for call in (step, reset):
            with pytest.raises(RuntimeError, match=r"another thread.*one env per thread.*ParallelEnv"):
                call()
    finally:
        gate.release.set()
        worker.join(30)
    assert len(results) == 1  # the first thread's step returned normally
    step()  # the env is free again
