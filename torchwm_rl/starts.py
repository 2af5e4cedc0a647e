"""Start states read from a TorchRL replay buffer that keeps growing (MBPO's branched starts).

``WorldModelEnv(..., start_states=buffer)`` with a ``torchrl.data.ReplayBuffer`` draws every
reset's start states from what the buffer holds AT THAT RESET: the rows the online loop added
since the env was built are candidates too, with no rebuild. Rows are drawn uniformly, with
replacement, with the env's own seeded generator (``EpisodeLogic.generator``), so the same
seed and the same buffer contents give the same starts; the buffer's own sampler (and its
random stream) is not used.

The buffer holds TensorDicts with an ``"observation"`` entry (what TorchRL's collectors and
``GymEnv`` write) and optionally a ``"state"`` entry (the model state, when it is not the
observation), or plain tensors (each row is both the observation and the state). Sampled rows
are checked against the observation space at each reset (a static bank is checked once, at
construction; this one grows).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from tensordict import TensorDictBase

from .validation import flatten_observation, nonfinite_rows, to_observation


def is_replay_buffer(value: Any) -> bool:
    """Whether ``value`` is a TorchRL ``ReplayBuffer`` (imported only if torchrl.data is)."""
    try:
        from torchrl.data import ReplayBuffer
    except ImportError:  # pragma: no cover - torchrl is a dependency
        return False
    return isinstance(value, ReplayBuffer)


class ReplayStarts:
    """The live bank over ``buffer`` (see the module docs)."""

    def __init__(self, buffer: Any, observation_space: Any, device: torch.device, check_finite: bool):
        self.buffer = buffer
        self.observation_space = observation_space
        self.device = device
        self.check_finite = check_finite
        if len(buffer) == 0:
            raise ValueError(
                "start_states: the replay buffer is empty; extend it with real transitions before building "
                "the env (the env's specs come from one reset at construction)"
            )

    def __len__(self) -> int:
        return len(self.buffer)

    def sample(self, shape: tuple, generator: torch.Generator) -> tuple[Any, Any, Optional[Any]]:
        """``(rows' observation as stored, observation cast to the space, state or None)`` of
        ``shape`` rows drawn from the buffer's contents."""
        size = len(self.buffer)
        if size == 0:
            raise ValueError("start_states: the replay buffer is empty; a reset needs at least one row")
        index = torch.randint(size, shape, generator=generator)
        rows = self.buffer[index.reshape(-1)]
        if isinstance(rows, TensorDictBase):
            if "observation" not in rows.keys():
                raise KeyError(
                    f"start_states: the replay buffer's rows have no 'observation' (they have "
                    f"{sorted(map(str, rows.keys()))}); store the observations under 'observation' "
                    "(and the model state, if it is not the observation, under 'state')"
                )
            observation = rows.get("observation")
            state = rows.get("state") if "state" in rows.keys() else None
            if isinstance(state, TensorDictBase):
                state = state.reshape(*shape).to(self.device)
        else:
            observation, state = rows, None
        observation = observation.reshape(*shape, *observation.shape[1:])
        if state is not None and isinstance(state, torch.Tensor):
            state = state.reshape(*shape, *state.shape[1:]).to(self.device)
        checked = check_start_observations(
            observation, self.observation_space, tuple(shape), self.device, self.check_finite,
            lambda bad: f"in the replay buffer's row(s) {index.reshape(shape)[bad].flatten().tolist()}", state)
        return observation, checked, state


def check_start_observations(observation: Any, space: Any, shape: tuple, device: torch.device, check_finite: bool,
                             where: Callable[[torch.Tensor], str], state: Any = None) -> Any:
    """Start observations (a bank, or rows drawn from one) converted to the observation space,
    ``shape`` rows; with ``check_finite``, NaN/inf in them or in a floating leaf of the given
    model ``state`` (a latent behind a uint8 image, whose cast hides NaN) is an error naming the
    keys and ``where(bad rows)`` (which rows of the bank they are)."""
    from .adapter import _state_leaves  # the one walker of state leaves (the step's NaN check uses it)

    checked = to_observation(observation, space, shape, device, "start_states")
    if check_finite:
        leaves = flatten_observation(checked)
        if state is not None:
            leaves.update(_state_leaves(state))
        bad, keys = nonfinite_rows(leaves, shape)
        if bad is not None:
            raise ValueError(f"start_states: NaN/inf in {keys} {where(bad)}")
    return checked
