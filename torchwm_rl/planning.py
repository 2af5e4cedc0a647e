"""Planning inside an imagined env whose termination is a probability: discrete CEM scored by
the expected number of imagined steps alive.

:class:`DiscreteCEMPlanner` picks an action for each of a batch of model states (latents):

1. ``candidates`` action sequences of ``horizon`` steps are drawn per state (each step 1 with a
   per-step probability, 0.5 at first);
2. all of them are imagined in ONE batched ``env.rollout`` of the library's env over the model
   (``auto_reset=False``, started from the states), built by the caller's ``make_env(rows)``;
3. a sequence's score is :func:`expected_steps_alive`: the sum over its steps of the product of
   the env's ``continue_prob`` so far (the continue head's convention: ``continue_fn`` in
   :class:`torchwm_rl.ModelAdapter`), nothing counted from the first imagined end on;
4. the per-step probabilities become the mean of the best ``1/elite`` sequences (clamped to
   [0.05, 0.95]) and 1-3 repeat, ``iters`` times in all; the first action of the best sequence of
   the last iteration is returned.

Why not TorchRL's ``torchrl.modules.CEMPlanner``: it samples Gaussian action sequences for a
continuous action and scores them by summed reward, while this scores a Discrete(2) action by
the continue head's probability (a reward of 1 per step, as CartPole's, weighted by the chance
the episode is still running). ``tutorials/planning.py`` shows TorchRL's planner on a continuous
relaxation of the state-vector CartPole model.

The env should imagine deterministically given the actions (e.g. the prior's mean,
``sample=False``) and draw no terminations (a tiny ``continue_threshold``, such as
:data:`NO_DRAWN_ENDS`): the score already weighs each step by its continue probability. The
planner's own ``torch.Generator`` (seeded) draws the candidates, so it is deterministic given
``seed`` and the thread count.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from tensordict import TensorDict, TensorDictBase

__all__ = ["DiscreteCEMPlanner", "PlayActions", "expected_steps_alive", "NO_DRAWN_ENDS"]

#: a planning env's ``continue_threshold``: no imagined step ends unless the continue head all
#: but rules it out (the score uses ``continue_prob`` itself)
NO_DRAWN_ENDS = 1e-6


class PlayActions:
    """A rollout policy that plays ``actions[:, t]`` at its ``t``-th call (one sequence per row)."""

    def __init__(self, actions: torch.Tensor):
        self.actions, self.t = actions, 0

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        td.set("action", self.actions[:, self.t])
        self.t += 1
        return td


def expected_steps_alive(out: TensorDictBase) -> torch.Tensor:
    """Per row of a planning rollout ``out`` (batch ``[R, H]``, with ``("next", "continue_prob")``
    and ``("next", "done")``): the sum over steps of the product of ``continue_prob`` up to that
    step, counting nothing from the first imagined end on (a row that ended was restarted by the
    env: what follows is another episode). Returns ``[R]``."""
    if ("next", "continue_prob") not in out.keys(True):
        raise KeyError("expected_steps_alive: the rollout has no ('next', 'continue_prob'); plan in an env over a "
                       "model with a continue head (WorldModelEnv(..., continue_fn=...))")
    prob = out.get(("next", "continue_prob"))[..., 0]
    done = out.get(("next", "done"))[..., 0]
    before_end = (done.long().cumsum(1) - done.long()) == 0  # the step itself may be the end
    return (prob.cumprod(1) * before_end).sum(1)


class DiscreteCEMPlanner:
    """Discrete CEM over a Discrete(2) action (see the module docs).

    Args:
        make_env: ``rows -> env``: the imagined :class:`~torchwm_rl.WorldModelEnv` with batch
            ``[rows]`` whose model states (its ``state_key``, ``"model_state"`` by default) the
            states are, with a Discrete(2) integer action and a continue head (called once per
            distinct row count; the env is kept).
        candidates: action sequences per state and iteration.
        horizon: steps per sequence.
        iters: CEM iterations.
        elite: the best ``1/elite`` of the candidates refit the probabilities.
        seed: seeds the planner's generator (the candidate draws).
        warm_rows: 0, or the number of rows (e.g. real episodes) whose last probabilities, shifted
            by one step, start their next call (``rows`` then names them).
    """

    def __init__(self, make_env: Callable[[int], object], candidates: int = 128, horizon: int = 40, iters: int = 2,
                 elite: int = 8, seed: int = 0, warm_rows: int = 0):
        for name, value in (("candidates", candidates), ("horizon", horizon), ("iters", iters), ("elite", elite)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiscreteCEMPlanner: {name} must be an int >= 1, got {value!r}")
        if isinstance(warm_rows, bool) or not isinstance(warm_rows, int) or warm_rows < 0:
            raise ValueError(f"DiscreteCEMPlanner: warm_rows must be an int >= 0, got {warm_rows!r}")
        self.make_env, self.K, self.H, self.iters = make_env, candidates, horizon, iters
        self.top = max(candidates // elite, 1)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.probs = torch.full((warm_rows, horizon), 0.5) if warm_rows else None
        self._envs: dict[int, object] = {}

    def _env(self, rows: int):
        if rows not in self._envs:
            from torchrl.data import Categorical

            env = self.make_env(rows)
            spec = env.action_spec
            n = getattr(getattr(spec, "space", None), "n", None)
            if not isinstance(spec, Categorical) or n != 2 or tuple(spec.shape) != tuple(env.batch_size):
                raise ValueError(f"DiscreteCEMPlanner plans a Discrete(2) integer action (a Categorical(2) spec of "
                                 f"shape [rows]); make_env({rows}) gave an env whose action spec is "
                                 f"{type(spec).__name__}(n={n}) of shape {list(spec.shape)}")
            self._envs[rows] = env
        return self._envs[rows]

    @torch.no_grad()
    def __call__(self, states: TensorDictBase | torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The planned action (long, ``[n]``) for each of the model states ``states`` (a TensorDict
        with batch ``[n]``, or a tensor ``[n, ...]``: the env's ``state_key`` entry per row);
        ``rows`` (``[n]`` indices) name their warm-start rows when ``warm_rows`` was given."""
        lead = tuple(states.shape[:1]) if isinstance(states, torch.Tensor) else tuple(states.batch_size)
        if len(lead) != 1:
            raise ValueError(f"DiscreteCEMPlanner: states must be a TensorDict with a 1-dim batch [n] or a tensor "
                             f"[n, ...]; got batch {lead}")
        n, K, H = lead[0], self.K, self.H
        if self.probs is not None:
            if rows is None or len(rows) != n:
                raise ValueError(f"DiscreteCEMPlanner: with warm_rows, pass rows (one index per state, {n}); got "
                                 f"{None if rows is None else len(rows)}")
            probs = self.probs[rows]
        elif rows is not None:
            raise ValueError("DiscreteCEMPlanner: rows name warm-start rows, but the planner was built with no "
                             "warm_rows")
        else:
            probs = torch.full((n, H), 0.5)
        env = self._env(n * K)
        key = getattr(env, "state_key", "model_state")
        if isinstance(states, torch.Tensor):  # a plain tensor state [n, ...]
            starts = states[:, None].expand(n, K, *states.shape[1:]).reshape(n * K, *states.shape[1:])
        else:
            starts = states[:, None].expand(n, K).reshape(n * K)
        for _ in range(self.iters):
            actions = (torch.rand(n, K, H, generator=self.generator) < probs[:, None]).long()
            out = env.rollout(H, PlayActions(actions.reshape(n * K, H)),
                              tensordict=TensorDict({key: starts.clone()}, [n * K]),
                              auto_reset=False, break_when_any_done=False)
            score = expected_steps_alive(out).reshape(n, K)
            best = score.topk(self.top, dim=1).indices
            elite = torch.gather(actions, 1, best[..., None].expand(-1, -1, H)).float()
            probs = elite.mean(1).clamp(0.05, 0.95)
        choice = torch.gather(actions, 1, score.argmax(1)[:, None, None].expand(-1, 1, H))[:, 0, 0]
        if self.probs is not None:
            self.probs[rows] = torch.cat([probs[:, 1:], torch.full((n, 1), 0.5)], 1)
        return choice
