"""Past one machine: TorchRL's ``Collector(..., backend="ray")`` over worker-built world-model
envs, on a local 2-CPU Ray cluster. Skipped when Ray is not installed (``pip install
'torchwm-rl[ray]'``).

The weights reach the workers through Ray's object store (``ray.put``); the env factory, a
``functools.partial`` holding the object reference, is what gets shipped to each worker, and
it builds the model there. That is the same code that runs against a real cluster with
``ray.init(address=...)``.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

ray = pytest.importorskip("ray")

from tensordict.nn import TensorDictModule  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402

from torchwm_rl import WorldModelEnv  # noqa: E402
from models import VectorModel, reset_world_model, transition_world_model, vector_spaces  # noqa: E402

pytestmark = pytest.mark.slow

NUM_ENVS, HORIZON = 4, 3


def make_env_from_object_store(weights_ref) -> WorldModelEnv:
    """Runs on a Ray worker: fetch the weights from the object store, build the env."""
    state_dict = ray.get(weights_ref)  # a nested ObjectRef is not resolved by Ray: fetch it
    model = VectorModel(seed=0)
    model.load_state_dict(state_dict)
    model.eval().requires_grad_(False)  # a frozen world model; see tutorials/README.md
    obs_space, act_space = vector_spaces()
    return WorldModelEnv(
        model, obs_space, act_space, reset_fn=reset_world_model, transition_fn=transition_world_model,
        max_episode_steps=HORIZON, batch_size=(NUM_ENVS,),
    )


@pytest.fixture(scope="module")
def local_cluster():
    # Ray workers do not inherit the driver's sys.path: make the test modules importable there
    # (on a real cluster, ship your code with runtime_env={"working_dir": ...} instead)
    here = os.path.dirname(__file__)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_collector_collects_from_worker_built_envs(local_cluster):
    weights = VectorModel(seed=7).state_dict()
    weights_ref = ray.put(weights)
    torch.manual_seed(0)
    policy = TensorDictModule(torch.nn.Linear(6, 2), in_keys=["observation"], out_keys=["action"])
    frames_per_batch = NUM_ENVS * 2 * HORIZON
    collector = Collector(
        functools.partial(make_env_from_object_store, weights_ref),
        policy,
        backend="ray",
        num_collectors=2,
        frames_per_batch=frames_per_batch,
        total_frames=2 * frames_per_batch,
        backend_options={"remote_configs": {"num_cpus": 1, "memory": 512 * 1024**2}},
    )
    try:
        collector.update_policy_weights_(policy)  # the policy's weights go to every worker
        batches = [batch.clone() for batch in collector]
    finally:
        collector.shutdown()
    assert len(batches) == 2
    local = VectorModel(seed=0)
    local.load_state_dict(weights)
    for batch in batches:
        assert batch.numel() == frames_per_batch
        with torch.no_grad():  # the remote transitions were computed with the shipped weights
            expected = local.predict_next_state(batch["model_state"], batch["action"])
        torch.testing.assert_close(batch["next", "model_state"], expected)
        assert batch["next", "truncated"].any()
