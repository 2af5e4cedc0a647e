"""Stable-Baselines3 export: a ``VecEnv`` of N imagined envs stepped by ONE model call.

Follows SB3's own convention (``DummyVecEnv``): an env that ends is reset within the same
``step_wait``; its last observation is in ``infos[i]["terminal_observation"]``;
``infos[i]["TimeLimit.truncated"]`` says, on every env at every step, whether a time limit ended
it; the info of the new episode is in ``venv.reset_infos[i]``. The model's own info (one dict for
the batch) is split per env: an entry whose leading dim is N gives env ``i`` its row ``i``, any
other entry goes to every env. With ``continue_fn``, ``infos[i]["continue_prob"]`` is env ``i``'s
probability of continuing (a float; see ``ModelAdapter``). Stable-Baselines3 is an optional extra
(``pip install torchwm-rl[sb3]``), imported when this module is.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the SB3 export needs stable-baselines3: pip install 'torchwm-rl[sb3]'") from err

from .convert import detach_tree, info_row, observation_row, observation_to_numpy, per_env_infos, rendered_frames
from .episode import EpisodeLogic, Snapshot, num_envs_batch
from .options import env_repr, with_model_options

#: the render modes of the export: rgb_array frames (SB3's render() tiles them; its "human"
#: mode shows that tiled image with OpenCV)
RENDER_MODES = (None, "rgb_array")


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
        render_mode: Optional[str] = None,
        seed: Optional[int] = None,
        **options: Any,
    ):
        """N imagined envs over ``model`` (``num_envs=N``); the keyword arguments are
        :class:`~torchwm_rl.GymWorldModelEnv`'s. ``seed`` seeds the envs' one shared stream, as
        ``WorldModelEnv(..., seed=seed).to_sb3()`` does, which builds the same VecEnv.
        ``render_mode="rgb_array"``: ``render()`` returns the N envs' frames tiled into one
        image (SB3's ``VecEnv.render``, which ``VecVideoRecorder`` records)."""
        logic = EpisodeLogic.from_model(type(self).__name__, model, observation_space, action_space,
                                        batch_size=num_envs_batch(num_envs), max_episode_steps=max_episode_steps,
                                        start_states=start_states, options=options)
        logic.seed(seed)
        self._setup(logic, render_mode)

    @classmethod
    def from_logic(cls, logic: EpisodeLogic, render_mode: Optional[str] = None) -> "SB3VecWorldModelEnv":
        """A VecEnv over an existing batched episode logic, which it uses as its own
        (``WorldModelEnv.to_sb3()`` passes a fork of its own)."""
        return _VecEnvOverLogic(logic, render_mode)

    def _setup(self, logic: EpisodeLogic, render_mode: Optional[str] = None) -> None:
        if len(logic.batch_size) != 1:
            raise ValueError(f"SB3VecWorldModelEnv needs batch_size (N,), got {logic.batch_size}")
        if render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
        self.logic = logic
        self.render_mode = render_mode  # read by VecEnv.__init__ through get_attr
        super().__init__(logic.batch_size[0], logic.adapter.observation_space, logic.adapter.action_space)
        self._snapshot: Optional[Snapshot] = None
        self._actions: Any = None
        self._seed: Optional[int] = None

    def __repr__(self) -> str:  # SB3's VecEnv has none: object's named the private _VecEnvOverLogic
        return env_repr(self, self.logic.adapter, num_envs=self.num_envs, device=self.logic.device)

    def reset(self):
        """Reset every env (SB3 semantics), with the seed of :meth:`seed` and the options of
        :meth:`set_options`, both used once. Envs given different options are reset by one
        reset hook call per distinct options dict (the first resets the full batch, each
        other one only its envs, as a partial reset), so every env gets its own options."""
        seed = self._seed
        groups = _option_groups(self._options, self.num_envs)
        with torch.no_grad(), self.logic.transaction():
            options, _ = groups[0]
            snapshot, info = self.logic.reset(seed=seed, options=options)
            reset_infos = per_env_infos(info, self.num_envs)
            for options, rows in groups[1:]:
                mask = torch.as_tensor(rows, device=self.logic.device)
                snapshot, info = self.logic.reset(options=options, mask=mask, previous=snapshot)
                info = detach_tree(info) if info else {}
                for i in np.flatnonzero(rows):
                    reset_infos[i] = info_row(info, self.num_envs, i)
            obs = observation_to_numpy(snapshot.observation, self.observation_space)
            # committed after every conversion succeeded (a failed reset leaves the VecEnv as it
            # was), inside the transaction (another thread cannot step between its end and here)
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
            if record.continue_prob is not None:  # the probability of continuing (see ModelAdapter)
                for info, p in zip(infos, record.continue_prob.tolist()):
                    info["continue_prob"] = float(p)
            rewards = record.reward.cpu().numpy().astype(np.float32)
            # committed only now (a hook or conversion that failed above left the VecEnv as it
            # was), inside the transaction
            self._snapshot, self.reset_infos = snapshot, reset_infos
        return obs, rewards, dones, infos

    def set_options(self, options: Union[None, dict, Sequence[dict]] = None) -> None:
        """Options for the next :meth:`reset` (SB3 semantics): one dict for every env, or a
        list of one dict per env (a list of another length is refused)."""
        if options is not None and not isinstance(options, dict):
            options = list(options)
            if len(options) != self.num_envs or not all(isinstance(o, dict) for o in options):
                raise ValueError(
                    f"set_options: expected a dict, or a list of {self.num_envs} dicts (one per env); got "
                    f"{len(options)} entries of types {sorted({type(o).__name__ for o in options})}"
                )
        super().set_options(options)

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

    def __init__(self, logic: EpisodeLogic, render_mode: Optional[str] = None):
        self._setup(logic, render_mode)


def _option_groups(options: Sequence[dict], n: int) -> list:
    """SB3's per-env options (``VecEnv._options``) as ``[(options, rows), ...]``: each distinct
    options dict once, in order of first use, with the bool mask (shape ``(n,)``) of the envs
    that have it. Dicts are told apart by ``==`` (by identity where ``==`` cannot say, such as
    dicts of arrays)."""
    if not options:
        return [({}, np.ones(n, dtype=bool))]
    groups: list = []
    for i, option in enumerate(options):
        for known, rows in groups:
            if _same(known, option):
                rows[i] = True
                break
        else:
            rows = np.zeros(n, dtype=bool)
            rows[i] = True
            groups.append((option, rows))
    return groups


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # e.g. dicts of arrays: == is elementwise
        return False
