"""A model with trainable parameters works in TorchRL's ParallelEnv workers unchanged.

Worker steps copy outputs into shared memory; a grad-tracking output used to kill the worker
("Autograd not support dtype: Long"). Graphs cannot cross processes, so the env detaches there.
"""

import pytest
import torch
from torchrl.envs import ParallelEnv

from models import VectorModel, reset_world_model, transition_world_model, vector_spaces
from torchwm_rl import WorldModelEnv


def make_env():
    obs, act = vector_spaces()
    model = VectorModel()
    assert any(p.requires_grad for p in model.parameters())
    return WorldModelEnv(model, obs, act, reset_fn=reset_world_model, transition_fn=transition_world_model,
                         batch_size=(4,), max_episode_steps=5, seed=0)


@pytest.mark.slow
def test_parallel_env_with_trainable_model():
    env = ParallelEnv(2, make_env)
    try:
        td = env.rollout(6, break_when_any_done=False)
    finally:
        env.close()
    assert tuple(td.batch_size) == (2, 4, 6)
    assert torch.isfinite(td["next", "reward"]).all()
    assert (td["next", "elapsed_steps"] <= 5).all()


def test_reset_outputs_carry_no_graph_but_steps_do():
    env = make_env()
    td = env.reset()
    assert not td["observation"].requires_grad and not td["model_state"].requires_grad
    td["action"] = torch.zeros(4, 2, requires_grad=True)
    out = env.step(td)
    assert out["next", "reward"].requires_grad
