"""Stable-Baselines3 export: a ``VecEnv`` of N imagined envs stepped by ONE model call.

Follows SB3's own convention (``DummyVecEnv``): an env that ends is reset within the same
``step_wait``; its last observation is in ``infos[i]["terminal_observation"]``;
``infos[i]["TimeLimit.truncated"]`` says, on every env at every step, whether a time limit ended
it; the info of the new episode is in ``venv.reset_infos[i]``. The model's own info (one dict for
the batch) is split per env: an entry whose leading dim is N gives env ``i`` its row ``i``, any
other entry goes to every env. Stable-Baselines3 is an optional extra
(``pip install torchwm-rl[sb3]``), imported when this module is.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the SB3 export needs stable-baselines3: pip install 'torchwm-rl[sb3]'") from err

from .convert import detach_tree, info_row, observation_row, observation_to_numpy, per_env_infos, rendered_frames
from .episode import EpisodeLogic, Snapshot, num_envs_batch
from .options import env_repr, with_model_options


class SB3VecWorldModelEnv(VecEnv):
    """An SB3 ``VecEnv`` over a batched :class:`~torchwm_rl.episode.EpisodeLogic`.

    ``env_method``/``get_attr``/``set_attr`` act on the one shared model object (all N envs
    share it), so they return N copies of the same answer, as SB3 expects one per env.
    """

    @with_model_options
    def __init__(
        self,
        model: Any,
        observation_space: Any,
        action_space: Any,
        *,
        num_envs: int,
        max_episode_steps: Any = None,
        start_states: Any = None,
        seed: Optional[int] = None,
        **options: Any,
    ):
        """N imagined envs over ``model`` (``num_envs=N``); the keyword arguments are
        :class:`~torchwm_rl.GymWorldModelEnv`'s. ``seed`` seeds the envs' one shared stream, as
        ``WorldModelEnv(..., seed=seed).to_sb3()`` does, which builds the same VecEnv."""
        logic = EpisodeLogic.from_model(type(self).__name__, model, observation_space, action_space,
                                        batch_size=num_envs_batch(num_envs), max_episode_steps=max_episode_steps,
                                        start_states=start_states, options=options)
        logic.seed(seed)
        self._setup(logic)

    @classmethod
    def from_logic(cls, logic: EpisodeLogic) -> "SB3VecWorldModelEnv":
        """A VecEnv over an existing batched episode logic, which it uses as its own
        (``WorldModelEnv.to_sb3()`` passes a fork of its own)."""
        return _VecEnvOverLogic(logic)

    def _setup(self, logic: EpisodeLogic) -> None:
        if len(logic.batch_size) != 1:
            raise ValueError(f"SB3VecWorldModelEnv needs batch_size (N,), got {logic.batch_size}")
        self.logic = logic
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(logic.batch_size[0], logic.adapter.observation_space, logic.adapter.action_space)
        self._snapshot: Optional[Snapshot] = None
        self._actions: Any = None
        self._seed: Optional[int] = None

    def __repr__(self) -> str:  # SB3's VecEnv has none: object's named the private _VecEnvOverLogic
        return env_repr(self, self.logic.adapter, num_envs=self.num_envs, device=self.logic.device)

    def reset(self):
        seed = self._seed
        with torch.no_grad(), self.logic.transaction():
            snapshot, info = self.logic.reset(seed=seed, options=self._options[0] if self._options else None)
            reset_infos = per_env_infos(info, self.num_envs)
            obs = observation_to_numpy(snapshot.observation, self.observation_space)
        # committed after every conversion succeeded: a failed reset leaves the VecEnv as it was
        self._snapshot, self.reset_infos, self._seed = snapshot, reset_infos, None
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._snapshot is None:
            raise RuntimeError("Call reset() before step().")
        with torch.no_grad(), self.logic.transaction():
            snapshot, record = self.logic.step(self._snapshot, self._actions)
            done = record.terminated | record.truncated
            obs = observation_to_numpy(snapshot.observation, self.observation_space)
            dones = done.cpu().numpy().copy()  # a copy: never an alias of the model's tensors
            timeouts = (record.truncated & ~record.terminated).cpu().numpy()
            infos = per_env_infos(record.info, self.num_envs)
            for info, timeout in zip(infos, timeouts.tolist()):  # on every env, as DummyVecEnv
                info["TimeLimit.truncated"] = timeout
            reset_infos = list(self.reset_infos)
            if dones.any():
                for i in np.flatnonzero(dones):
                    infos[i]["terminal_observation"] = observation_row(obs, i)
                snapshot, reset_info = self.logic.reset(mask=done, previous=snapshot)
                obs = observation_to_numpy(snapshot.observation, self.observation_space)
                reset_info = detach_tree(reset_info) if reset_info else {}
                for i in np.flatnonzero(dones):  # as DummyVecEnv: the info of each env's new episode
                    reset_infos[i] = info_row(reset_info, self.num_envs, i)
            if record.nonfinite is not None:
                for i in np.flatnonzero(record.nonfinite.cpu().numpy()):
                    infos[i]["nonfinite"] = True
            if record.uncertainty is not None:
                for info, u, h in zip(infos, record.uncertainty.tolist(), record.halted.tolist()):
                    info["uncertainty"] = float(u)
                    info["halted"] = bool(h)
            rewards = record.reward.cpu().numpy().astype(np.float32)
        # committed only now: a hook or conversion that failed above left the VecEnv as it was
        self._snapshot, self.reset_infos = snapshot, reset_infos
        return obs, rewards, dones, infos

    def seed(self, seed: Optional[int] = None) -> Sequence[None]:
        """Seed the next ``reset`` (SB3 semantics); the N envs share one seeded generator."""
        if seed is not None:
            self._seed = int(seed)
            self.logic.seed(seed)
        return [None] * self.num_envs

    def close(self) -> None:
        self._snapshot = None

    def get_images(self) -> Sequence[Optional[np.ndarray]]:
        if self._snapshot is None:
            return [None] * self.num_envs
        return rendered_frames(self.logic.adapter, self._snapshot)

    def _targets(self, indices) -> list:
        return list(self._get_indices(indices))

    def _owner(self, name: str) -> Any:
        """Attributes of the VecEnv itself first, then of the shared model."""
        return self if hasattr(self, name) else self.logic.adapter.model

    def get_attr(self, attr_name: str, indices=None) -> list:
        value = getattr(self._owner(attr_name), attr_name)
        return [value for _ in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Writes where :meth:`get_attr` reads: the VecEnv's own attribute if it has one, else
        the shared model's."""
        self._targets(indices)
        setattr(self._owner(attr_name), attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        targets = self._targets(indices)
        method = getattr(self._owner(method_name), method_name)
        result = method(*method_args, **method_kwargs)
        return [result for _ in targets]

    def env_is_wrapped(self, wrapper_class: type, indices=None) -> list:
        return [False for _ in self._targets(indices)]


class _VecEnvOverLogic(SB3VecWorldModelEnv):
    """:meth:`SB3VecWorldModelEnv.from_logic`'s VecEnv: built over an existing episode logic."""

    def __init__(self, logic: EpisodeLogic):
        self._setup(logic)
