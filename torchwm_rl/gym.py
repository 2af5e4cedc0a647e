"""Gymnasium exports: one env (:class:`GymWorldModelEnv`) and a batched vector env
(:class:`GymVectorWorldModelEnv`).

Both run the same :class:`~torchwm_rl.episode.EpisodeLogic` (and so the same adapter) as the
TorchRL env, always under ``torch.no_grad()``, and convert to numpy once per step.
``torchwm_rl.gym.WorldModelEnv`` is an alias of :class:`GymWorldModelEnv` and
:func:`make_world_model_env` is TorchWM's factory, so code written against TorchWM's Gymnasium
``WorldModelEnv`` runs with only the import changed, and binds its hooks as TorchWM does
(:mod:`torchwm_rl.calling`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import gymnasium
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .adapter import ModelAdapter
from .convert import (
    detach_tree,
    image_hwc,
    merge_vector_infos,
    observation_row,
    observation_to_numpy,
    rendered_frames,
    vector_info,
)
from .episode import EpisodeLogic, Snapshot, num_envs_batch, select_rows
from .options import check_keywords, env_repr, with_model_options

__all__ = ["GymWorldModelEnv", "GymVectorWorldModelEnv", "WorldModelEnv", "make_world_model_env"]


class GymWorldModelEnv(gymnasium.Env):
    """A Gymnasium env over a world model (the tutorial's constructor).

    ``reset`` returns ``(obs, info)`` and ``step`` returns ``(obs, reward, terminated,
    truncated, info)`` with numpy observations of the space's dtype, a Python float reward and
    Python bool flags. As in TorchWM, the reset info is the reset hook's info as it returned it,
    and a step's info is the transition's info plus ``info["model_state"]`` (the latest model
    state) and ``info["elapsed_steps"]`` (the step count of the episode) where the transition's
    info has no such entry; tensors in infos are handed out as detached numpy copies (a dtype
    numpy lacks, such as a bfloat16 latent, as a detached torch copy of that dtype).
    ``env.state`` is the model state. Without a reset source the env still constructs; its
    ``reset`` then says what to provide, and ``step`` before ``reset`` raises ``RuntimeError``.
    Keyword arguments are those of :class:`~torchwm_rl.adapter.ModelAdapter` plus
    ``max_episode_steps``, ``start_states``, ``render_mode`` and ``seed`` (used by the first
    reset that is given no seed). With ``ensemble_size`` (:mod:`torchwm_rl.ensemble`) a step's
    info also has ``info["uncertainty"]`` (float) and ``info["halted"]`` (bool); with
    ``continue_fn``, ``info["continue_prob"]`` (float: the model's probability of continuing,
    from which ``terminated`` was drawn or thresholded; see ``ModelAdapter``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    @with_model_options
    def __init__(
        self,
        model: Any,
        observation_space: Any,
        action_space: Any,
        *,
        max_episode_steps: Optional[int] = None,
        render_mode: Optional[str] = None,
        seed: Optional[int] = None,
        start_states: Any = None,
        **options: Any,
    ):
        logic = EpisodeLogic.from_model(type(self).__name__, model, observation_space, action_space,
                                        max_episode_steps=max_episode_steps, start_states=start_states,
                                        options=options)
        self._setup(logic, render_mode, seed)

    @classmethod
    def from_logic(
        cls, logic: EpisodeLogic, render_mode: Optional[str] = None, seed: Optional[int] = None
    ) -> "GymWorldModelEnv":
        """An env over an existing (unbatched) episode logic, which it uses as its own: its
        streams and seed. Two envs given one logic share them (each reset or step of one moves
        the other's streams); ``WorldModelEnv.to_gymnasium()`` passes a fork, so its exports
        do not."""
        if logic.batch_size:
            raise ValueError("GymWorldModelEnv needs an unbatched logic; use GymVectorWorldModelEnv")
        return _GymEnvOverLogic(logic, render_mode, seed)

    def _setup(self, logic: EpisodeLogic, render_mode: Optional[str], seed: Optional[int]) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.logic = logic
        self.observation_space = logic.adapter.observation_space
        self.action_space = logic.adapter.action_space
        self.render_mode = render_mode
        self.spec = None
        self._snapshot: Optional[Snapshot] = None
        if seed is not None:
            logic.seed(seed)
            self._np_random, self._np_random_seed = seeding.np_random(seed)
            self.action_space.seed(seed)

    @property
    def adapter(self) -> ModelAdapter:
        return self.logic.adapter

    @property
    def model(self) -> Any:
        return self.adapter.model

    @property
    def state(self) -> Any:
        """The current model state, as the model returned it (None before reset)."""
        return None if self._snapshot is None else self._snapshot.state

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        np_random = self._np_random, self._np_random_seed
        super().reset(seed=seed)
        try:
            with torch.no_grad(), self.logic.transaction():
                snapshot, info = self.logic.reset(seed=seed, options=options)
                out = observation_to_numpy(snapshot.observation, self.observation_space), detach_tree(dict(info))
                # committed inside the transaction: another thread cannot step between its end and here
                self._snapshot = snapshot
        except BaseException:  # a failed reset (or conversion) leaves the env (and np_random) as it was
            self._np_random, self._np_random_seed = np_random
            raise
        return out

    def step(self, action: Any):
        if self._snapshot is None:
            raise RuntimeError("Call reset() before step().")
        with torch.no_grad(), self.logic.transaction():
            snapshot, record = self.logic.step(self._snapshot, action)
            info = self._info(record.info, snapshot)
            if record.nonfinite is not None:
                info["nonfinite"] = bool(record.nonfinite)
            if record.uncertainty is not None:
                info["uncertainty"] = float(record.uncertainty)
                info["halted"] = bool(record.halted)
            if record.continue_prob is not None:
                info["continue_prob"] = float(record.continue_prob)
            out = (
                observation_to_numpy(snapshot.observation, self.observation_space),
                float(record.reward),
                bool(record.terminated),
                bool(record.truncated),
                info,
            )
            # only after every conversion succeeded (a failed step leaves no trace), inside the
            # transaction (another thread cannot step between its end and here)
            self._snapshot = snapshot
        return out

    def _info(self, info: dict, snapshot: Snapshot) -> dict:
        info = detach_tree(dict(info))
        if "model_state" not in info:
            info["model_state"] = detach_tree(snapshot.state)
        if "elapsed_steps" not in info:
            info["elapsed_steps"] = int(snapshot.elapsed)
        return info

    def __repr__(self) -> str:
        return env_repr(self, self.adapter)

    def render(self):
        """The decoded image of the current state: ``render_fn``'s output, else the
        observation (channel-first images are returned as HWC)."""
        if self._snapshot is None:
            return None
        with torch.no_grad():
            frame = self.adapter.render(self._snapshot.state, self._snapshot.observation)
        return image_hwc(frame) if isinstance(frame, (torch.Tensor, np.ndarray)) else frame

    def close(self):
        self._snapshot = None
        super().close()


WorldModelEnv = GymWorldModelEnv


def make_world_model_env(world_model: Any, **kwargs: Any) -> GymWorldModelEnv:
    """TorchWM's factory: ``make_world_model_env(model, observation_space=..., action_space=...,
    ...)`` is ``WorldModelEnv(model, ...)``."""
    check_keywords("make_world_model_env", kwargs, [n for n in GymWorldModelEnv.__init__.keywords if n != "model"])
    return GymWorldModelEnv(world_model, **kwargs)


class GymVectorWorldModelEnv(VectorEnv):
    """A Gymnasium vector env of N imagined envs stepped by ONE model call per step.

    ``autoreset_mode``: ``AutoresetMode.NEXT_STEP`` (Gymnasium's default: an env that ended is
    reset on the following ``step``, which returns its reset observation with reward 0),
    ``AutoresetMode.SAME_STEP`` (reset at once; the final observation and info are in
    ``info["final_obs"]`` / ``info["final_info"]``) or ``AutoresetMode.DISABLED`` (no
    autoreset: the caller resets the envs that ended with ``reset(options={"reset_mask":
    mask})`` before the next ``step``, which otherwise raises, as Gymnasium's ``SyncVectorEnv``
    does). ``reset(options={"reset_mask": mask})`` resets only the masked envs; the others keep
    their exact state and step count.

    Infos follow Gymnasium's vector layout (``infos[key]`` one entry per env, ``infos["_key"]``
    which envs have it), as ``SyncVectorEnv`` would merge N single envs' infos: the model's info
    of a batched call is split per env (an entry whose leading dim is N gives env ``i`` row ``i``;
    any other entry goes to every env), envs restarting in a step carry their reset's info, and
    tensors are detached numpy copies. ``envs.state`` is the batched model state. With
    ``continue_fn``, ``infos["continue_prob"]`` holds each env's probability of continuing
    (float32; ``infos["_continue_prob"]`` False for envs restarting in the step).
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    @with_model_options
    def __init__(
        self,
        model: Any,
        observation_space: Any,
        action_space: Any,
        *,
        num_envs: int,
        max_episode_steps: Union[None, int, Sequence[int], torch.Tensor] = None,
        start_states: Any = None,
        autoreset_mode: Union[str, AutoresetMode] = AutoresetMode.NEXT_STEP,
        render_mode: Optional[str] = None,
        seed: Optional[int] = None,
        **options: Any,
    ):
        """N imagined envs over ``model`` (``num_envs=N``); the keyword arguments are
        :class:`GymWorldModelEnv`'s. ``seed`` seeds the envs' one shared stream (and is
        handed to the first reset hook call), as ``WorldModelEnv(..., seed=seed).to_gymnasium()``
        does. ``WorldModelEnv(..., batch_size=(N,)).to_gymnasium()`` builds the same env."""
        logic = EpisodeLogic.from_model(type(self).__name__, model, observation_space, action_space,
                                        batch_size=num_envs_batch(num_envs), max_episode_steps=max_episode_steps,
                                        start_states=start_states, options=options)
        logic.seed(seed)
        self._setup(logic, autoreset_mode, render_mode)

    @classmethod
    def from_logic(
        cls, logic: EpisodeLogic, autoreset_mode: Union[str, AutoresetMode] = AutoresetMode.NEXT_STEP,
        render_mode: Optional[str] = None,
    ) -> "GymVectorWorldModelEnv":
        """A vector env over an existing batched episode logic, which it uses as its own
        (``WorldModelEnv.to_gymnasium()`` passes a fork of its own)."""
        return _VectorEnvOverLogic(logic, autoreset_mode, render_mode)

    def _setup(self, logic: EpisodeLogic, autoreset_mode: Union[str, AutoresetMode], render_mode: Optional[str]) -> None:
        if len(logic.batch_size) != 1:
            raise ValueError(f"GymVectorWorldModelEnv needs batch_size (N,), got {logic.batch_size}")
        mode = AutoresetMode(autoreset_mode)
        self.logic = logic
        self.num_envs = logic.batch_size[0]
        self.single_observation_space = logic.adapter.observation_space
        self.single_action_space = logic.adapter.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.render_mode = render_mode
        self._snapshot: Optional[Snapshot] = None
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=logic.device)

    def __repr__(self) -> str:  # Gymnasium's names the class only: here the private _VectorEnvOverLogic
        return env_repr(self, self.logic.adapter, num_envs=self.num_envs,
                        autoreset_mode=self.autoreset_mode.name, device=self.logic.device)

    @property
    def state(self) -> Any:
        return None if self._snapshot is None else self._snapshot.state

    def _obs(self) -> Any:
        return observation_to_numpy(self._snapshot.observation, self.single_observation_space)

    def reset(self, *, seed: Optional[Union[int, Sequence[int]]] = None, options: Optional[dict] = None):
        """Reset all envs (or ``options["reset_mask"]`` rows). A list of seeds uses its first."""
        if isinstance(seed, (list, tuple)):
            seed = _one_seed(seed, self.num_envs)
        np_random = self._np_random, self._np_random_seed
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        try:
            return self._reset(seed, dict(options or {}))
        except BaseException:  # a failed reset leaves the env (and np_random) as it was
            self._np_random, self._np_random_seed = np_random
            raise

    def _reset(self, seed: Optional[int], options: dict):
        mask = options.pop("reset_mask", None)
        if mask is not None:
            if self._snapshot is None:
                raise RuntimeError("a partial reset (reset_mask) needs a full reset() first")
            mask = _bool_mask(mask, self.num_envs, self.logic.device)
        with torch.no_grad(), self.logic.transaction():
            snapshot, info = self.logic.reset(
                seed=seed, options=options, mask=mask, previous=self._snapshot if mask is not None else None
            )
            rows = np.ones(self.num_envs, dtype=bool) if mask is None else mask.cpu().numpy()
            out = (observation_to_numpy(snapshot.observation, self.single_observation_space),
                   vector_info(detach_tree(info), self.num_envs, rows))
            self._snapshot = snapshot  # committed after every conversion succeeded, inside the transaction
        self._needs_reset = self._needs_reset & ~mask if mask is not None else torch.zeros_like(self._needs_reset)
        return out

    def step(self, actions: Any):
        if self._snapshot is None:
            raise RuntimeError("Call reset() before step().")
        if self.autoreset_mode is AutoresetMode.DISABLED and bool(self._needs_reset.any()):
            ended = np.flatnonzero(self._needs_reset.cpu().numpy()).tolist()
            raise RuntimeError(
                f"autoreset_mode=DISABLED: the envs at index {ended} ended and were not reset; reset them "
                "before the next step with envs.reset(options={'reset_mask': mask}) (mask: bool, shape "
                f"({self.num_envs},), True for those envs), as Gymnasium's SyncVectorEnv requires"
            )
        restarting = self.autoreset_mode is AutoresetMode.NEXT_STEP and bool(self._needs_reset.any())
        restarted, reset_info, final_obs = None, {}, None
        with torch.no_grad(), self.logic.transaction():
            snapshot = self._snapshot
            if restarting:
                # envs that ended last step restart now and their action is ignored. They are
                # reset FIRST, so the one model call for all N envs steps them from their new
                # start (never from a state past an episode end); their result is thrown away.
                # The random streams are then used in the order of the other paths: the step
                # that ended an episode, the reset, the next step.
                restarted = self._needs_reset
                snapshot, reset_info = self.logic.reset(mask=restarted, previous=snapshot)
            stepped, record = self.logic.step(snapshot, actions, restarted)
            reward, terminated, truncated = record.reward, record.terminated, record.truncated
            if restarting:
                stepped = Snapshot(
                    select_rows(restarted, snapshot.state, stepped.state),
                    select_rows(restarted, snapshot.observation, stepped.observation),
                    torch.where(restarted, snapshot.elapsed, stepped.elapsed),
                )
                reward = torch.where(restarted, torch.zeros_like(reward), reward)
                terminated = terminated & ~restarted
                truncated = truncated & ~restarted
            snapshot = stepped
            done = terminated | truncated
            if self.autoreset_mode is AutoresetMode.SAME_STEP and bool(done.any()):
                final_obs = observation_to_numpy(snapshot.observation, self.single_observation_space)
                restarted = done
                snapshot, reset_info = self.logic.reset(mask=done, previous=snapshot)
                done = torch.zeros_like(done)
            observation = observation_to_numpy(snapshot.observation, self.single_observation_space)
            infos = self._step_infos(record, restarted, reset_info, final_obs)
            # copies: the flags must not alias tensors the model may write into later
            out = (observation, reward.double().cpu().numpy(), terminated.cpu().numpy().copy(),
                   truncated.cpu().numpy().copy(), infos)
            # committed only now: a hook, a conversion or an info that failed above left the env
            # (and its random streams) as it was
            self._snapshot, self._needs_reset = snapshot, done
        return out

    def _step_infos(self, record, restarted: Optional[torch.Tensor], reset_info: dict, final_obs: Any) -> dict:
        """Gymnasium's vector info of one step: the transition's info for the envs that
        stepped, the reset's info for the envs that restarted (as ``SyncVectorEnv`` merges its
        envs' infos), and under SAME_STEP ``final_obs``/``final_info`` of the envs that ended."""
        n = self.num_envs
        if not record.info and record.uncertainty is None and record.nonfinite is None and not reset_info \
                and final_obs is None and record.continue_prob is None:
            return {}  # nothing to report (what the general code below gives, without its arrays)
        again = np.zeros(n, dtype=bool) if restarted is None else restarted.cpu().numpy()
        step_info = detach_tree(record.info) if record.info else {}
        if record.uncertainty is not None:  # per env, split like the model's own info entries
            step_info = {**step_info, "uncertainty": record.uncertainty.cpu().numpy(),
                         "halted": record.halted.cpu().numpy()}
        if record.continue_prob is not None:  # float32 per env, as the TorchRL path's
            step_info = {**step_info, "continue_prob": record.continue_prob.cpu().numpy()}
        infos = vector_info(step_info, n, ~again)
        if reset_info:
            infos = merge_vector_infos(infos, vector_info(detach_tree(reset_info), n, again))
        if final_obs is not None:
            infos["final_obs"] = np.full(n, None, dtype=object)
            for i in np.flatnonzero(again):
                infos["final_obs"][i] = observation_row(final_obs, i)
            infos["_final_obs"] = again
            infos["final_info"] = vector_info(step_info, n, again)
            infos["_final_info"] = again.copy()
        if record.nonfinite is not None:
            infos["nonfinite"] = record.nonfinite.cpu().numpy()
            infos["_nonfinite"] = np.ones(n, dtype=bool)
        return infos

    def render(self):
        if self._snapshot is None:
            return None
        return tuple(rendered_frames(self.logic.adapter, self._snapshot))

    def close_extras(self, **kwargs):
        self._snapshot = None


class _GymEnvOverLogic(GymWorldModelEnv):
    """:meth:`GymWorldModelEnv.from_logic`'s env: built over an existing episode logic."""

    def __init__(self, logic: EpisodeLogic, render_mode: Optional[str] = None, seed: Optional[int] = None):
        self._setup(logic, render_mode, seed)


class _VectorEnvOverLogic(GymVectorWorldModelEnv):
    """:meth:`GymVectorWorldModelEnv.from_logic`'s env: built over an existing episode logic."""

    def __init__(self, logic: EpisodeLogic, autoreset_mode: Union[str, AutoresetMode] = AutoresetMode.NEXT_STEP,
                 render_mode: Optional[str] = None):
        self._setup(logic, autoreset_mode, render_mode)


def _one_seed(seeds: Sequence[Any], n: int) -> Optional[int]:
    """The N envs share ONE seeded stream, so a list of seeds can only mean what an int means:
    Gymnasium's ``reset(seed=s)`` seeds env ``i`` with ``s + i``, so ``[s, s+1, ..., s+N-1]`` is
    read as ``s`` (and all None as None); any other list is refused rather than half used."""
    seeds = list(seeds)
    if len(seeds) == n and all(x is None for x in seeds):
        return None
    if len(seeds) == n and all(isinstance(x, int) for x in seeds) and seeds == list(range(seeds[0], seeds[0] + n)):
        return seeds[0]
    raise ValueError(
        f"reset(seed=...): the {n} envs share one seeded stream, so a list must be [s, s+1, ..., s+{n - 1}] "
        f"(as reset(seed=s) seeds them in Gymnasium); got {seeds[:6]}{'...' if len(seeds) > 6 else ''}. Pass an int."
    )


def _bool_mask(mask: Any, n: int, device: torch.device) -> torch.Tensor:
    """``options["reset_mask"]`` as a bool tensor of shape ``(n,)``. Gymnasium's vector API
    takes a bool mask: an int or float mask (``[0, 1, 2]``, indices or weights?) is refused
    rather than read as truthiness."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"reset_mask: expected a bool mask of shape ({n},), got dtype {array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"reset_mask: expected shape ({n},), got {array.shape}")
    return torch.as_tensor(array, device=device)
