"""``close()`` drops the model state the env holds (so its memory can be freed) but keeps the
model, on the TorchRL env, the Gymnasium env and the vector / SB3 exports."""

from __future__ import annotations

import gc
import weakref

import pytest

from harness import UNBATCHED, Driver, on_paths
from reliability_models import N, OpaqueState, Scripted, action_for, make, opaque_reset, opaque_transition


def _opaque_env(path):
    env = make(path, Scripted(), reset_fn=opaque_reset, transition_fn=opaque_transition)
    driver = Driver(path, env)
    driver.reset(seed=0)
    driver.step(action_for())
    return env, driver


@on_paths(UNBATCHED)
def test_close_drops_the_model_state_but_keeps_the_model(path):
    env, driver = _opaque_env(path)
    state = env._held_state if path == "torchrl" else env.state
    assert isinstance(state, OpaqueState)
    ref = weakref.ref(state)
    model = env.model
    del state, driver
    gc.collect()
    assert ref() is not None  # the env still holds it
    env.close()
    gc.collect()
    assert ref() is None
    assert env.model is model and env.adapter.model is model


@pytest.mark.parametrize("export", ["vector", "sb3"])
def test_close_of_exports_drops_the_batched_state(export):
    envs = make(export, Scripted(), n=N)
    Driver(export, envs).reset(seed=0)
    ref = weakref.ref(envs._snapshot.state)
    envs.close()
    gc.collect()
    assert ref() is None and envs.logic.adapter.model is not None
