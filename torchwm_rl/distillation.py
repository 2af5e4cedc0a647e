"""Distilling a planner into a policy inside the model: DAgger with imagined states.

A planner that imagines many futures per step (:class:`torchwm_rl.planning.DiscreteCEMPlanner`)
acts well but slowly; a small policy acting on the latent features is fast but has to learn
where to go. :func:`distil` trains the policy (a :class:`Student`) to imitate the planner:

1. round 0: ``labels[0]`` model states are drawn from ``bank`` (e.g. posterior latents of real
   frames, as :func:`torchwm_rl.latent.encode_frames` gives them) and labelled with the
   planner's action;
2. every round the student is fit from scratch on all labels so far (cross-entropy);
3. for each round ``r >= 1``: the student so far visits new states (DAgger: its own state
   distribution), by default by acting greedily inside the imagined env
   (:func:`imagined_states`, from ``starts`` states drawn from the bank); ``labels[r]`` of the
   states it visits are drawn (all of them, with a warning, when it visits fewer), labelled and
   added, and step 2 repeats.

Nothing real is used but the bank: the labels and the new states come from imagination. The
caller's ``numpy`` generator draws the states and the global torch generator initialises and
batches the student, so a run is deterministic given both seeds and the thread count.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

__all__ = ["Student", "merge_members", "label", "imagined_states", "distil"]


def _is_count(value, least: int) -> bool:
    """``value`` is an int (Python or numpy, not a bool) of at least ``least``."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= least


class Student:
    """A greedy MLP policy on latent features, fit by cross-entropy on the planner's labels.

    The network is ``Linear-ELU-Linear-ELU-Linear`` (features -> logits). It is fit on the
    features standardised by the labelled set's mean and std (Adam, ``steps`` minibatches of
    256), each minibatch with Gaussian noise of std ``noise`` added to its standardised features;
    the standardisation is then folded into the first layer, so :attr:`net` maps raw features to
    logits on its own (the form ``policy.safetensors`` stores).

    With ``members > 1``, that many networks are fit one after another (each its own
    initialisation and minibatches) and merged into one network of the same form that gives
    their mean logits (:func:`merge_members`: hidden width ``members * hidden``).

    Why the noise: the student acts on posterior latents of real frames, which differ a little
    from the latents it was labelled on; fit on exact latents, its real return swung between
    about 325 and 500 with the initialisation alone on one label set of the pixel demo, and with
    ``noise=0.3`` three initialisations scored 451-500 there (README, "Pixels"). Why the members:
    with the noise a single fit still swings (one seed of the demo: 422.6 real where other fits
    on the same labels reach 500); the mean of several fits swings less."""

    def __init__(self, features: torch.Tensor, actions: torch.Tensor, steps: int = 1500, hidden: int = 128,
                 n_actions: int = 2, noise: float = 0.3, members: int = 1):
        if len(features) < 2:  # the std of one row is nan: every weight would be nan
            raise ValueError(f"Student: fitting needs at least 2 labelled states, got {len(features)}")
        if not _is_count(members, 1):
            raise ValueError(f"Student: members must be an int >= 1, got {members!r}")
        mean, std = features.mean(0), features.std(0) + 1e-3
        x = (features - mean) / std
        nets = [self._fit(x, actions, steps, hidden, n_actions, noise) for _ in range(int(members))]
        self.net = nets[0] if len(nets) == 1 else merge_members(nets)
        self.net.eval().requires_grad_(False)
        first = self.net[0]
        first.bias -= first.weight @ (mean / std)  # W (f - m) / s + b = (W / s) f + (b - W m / s)
        first.weight /= std
        self.train_accuracy = float((self.actions(features) == actions).float().mean())

    @staticmethod
    def _fit(x: torch.Tensor, actions: torch.Tensor, steps: int, hidden: int, n_actions: int,
             noise: float) -> nn.Sequential:
        net = nn.Sequential(nn.Linear(x.shape[-1], hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                            nn.Linear(hidden, n_actions))
        opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
        for _ in range(steps):
            rows = torch.randint(len(x), (256,))
            inputs = x[rows] + noise * torch.randn(len(rows), x.shape[-1]) if noise else x[rows]
            loss = nn.functional.cross_entropy(net(inputs), actions[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    def __call__(self, features: torch.Tensor) -> int:
        """The action for features ``[1, F]`` (:func:`torchwm_rl.pixel_reality.filter_episode`'s
        policy form)."""
        return int(self.actions(features).reshape(()))

    def actions(self, features: torch.Tensor) -> torch.Tensor:
        """The greedy actions for a batch of features ``[n, F]`` -> ``[n]``."""
        return self.net(features).argmax(-1)


@torch.no_grad()
def merge_members(nets: Sequence[nn.Sequential]) -> nn.Sequential:
    """One ``Linear-ELU-Linear-ELU-Linear`` network whose logits are the mean of ``nets``' logits
    (each of that form, the same sizes): the first layers stacked, the middle ones block-diagonal,
    the last ones side by side and divided by ``len(nets)``. A policy file stores it as it stores
    one network (``hidden`` is then ``len(nets)`` times each member's). The result has the
    members' dtype and device; building it draws nothing from the global torch generator."""
    if not nets:
        raise ValueError("merge_members: no networks to merge")
    form = [nn.Linear, nn.ELU, nn.Linear, nn.ELU, nn.Linear]
    first = nets[0]

    def signature(net):  # what every member must share: weight shapes, dtype, device
        return [tuple(net[j].weight.shape) for j in (0, 2, 4)], net[0].weight.dtype, net[0].weight.device

    for i, net in enumerate(nets):
        if [type(layer) for layer in net] != form:
            raise ValueError(f"merge_members: network {i} is {[type(layer).__name__ for layer in net]}; every member "
                             f"must be Linear-ELU-Linear-ELU-Linear")
    expected = signature(first)
    for i, net in enumerate(nets):
        if signature(net) != expected:
            raise ValueError(f"merge_members: network {i} has (weight shapes, dtype, device) {signature(net)}, "
                             f"network 0 {expected}; members must match (the merge would cast or fail)")
    m, (h1, f), (h2, _), (a, _) = len(nets), first[0].weight.shape, first[2].weight.shape, first[4].weight.shape
    like = {"dtype": expected[1], "device": expected[2]}
    # skip_init: the weights are all copied in below, so no initialisation (and no draw) is needed
    wide = nn.Sequential(nn.utils.skip_init(nn.Linear, f, m * h1, **like), nn.ELU(),
                         nn.utils.skip_init(nn.Linear, m * h1, m * h2, **like), nn.ELU(),
                         nn.utils.skip_init(nn.Linear, m * h2, a, **like))
    wide[0].weight.copy_(torch.cat([n[0].weight for n in nets]))
    wide[0].bias.copy_(torch.cat([n[0].bias for n in nets]))
    wide[2].weight.copy_(torch.block_diag(*[n[2].weight for n in nets]))
    wide[2].bias.copy_(torch.cat([n[2].bias for n in nets]))
    wide[4].weight.copy_(torch.cat([n[4].weight for n in nets], 1) / m)
    wide[4].bias.copy_(torch.stack([n[4].bias for n in nets]).mean(0))
    return wide


def label(planner: Callable[[TensorDictBase], torch.Tensor], states: TensorDictBase, chunk: int = 64) -> torch.Tensor:
    """The planner's action for each model state (a TensorDict with batch ``[n]`` or a tensor
    ``[n, ...]``), ``chunk`` states per planning call."""
    return torch.cat([planner(states[i:i + chunk]) for i in range(0, len(states), chunk)])


def imagined_states(env, features: Callable[[TensorDictBase], torch.Tensor], student: Student,
                    starts: TensorDictBase, length: int) -> tuple[TensorDictBase, float]:
    """The model states the greedy ``student`` visits in the imagined ``env`` (batch ``[n]``; build
    it with ``continue_threshold`` so that an end is a clear call, not a draw) from ``starts``
    (batch ``[n]``): ``length`` steps with no reset, none from a row's first imagined end on.
    ``features`` maps states to the policy's observation. Returns the states (batch ``[m]``,
    step-major) and the mean number of steps alive."""
    key = getattr(env, "state_key", "model_state")
    start = TensorDict({key: starts.clone(), "observation": features(starts)}, starts.shape[:1])
    out = env.rollout(length, lambda td: td.set("action", student.actions(td["observation"])), tensordict=start,
                      auto_reset=False, break_when_any_done=False)
    alive = out.get(("next", "done"))[..., 0].long().cumsum(1) == 0  # [n, length]: no end so far
    if not alive.any():
        raise RuntimeError("imagined_states: every imagined rollout ended at its first step, so there are no new "
                           "states to label; the student is too weak to survive a step: label more states before "
                           "it plays (a larger first round)")
    return out.get(("next", key)).transpose(0, 1)[alive.T], float(alive.sum(1).float().mean())


@torch.no_grad()
def distil(planner: Callable[[TensorDictBase], torch.Tensor], features: Callable[[TensorDictBase], torch.Tensor],
           bank: TensorDictBase, labels: Sequence[int], rng: np.random.Generator, *,
           new_states: Optional[Callable[[Student, int], TensorDictBase]] = None, env=None, starts: int = 64,
           length: int = 200, fit_steps: int = 1500, fit_noise: float = 0.3, final_members: int = 1, chunk: int = 64,
           on_round: Optional[Callable[[dict, Student], None]] = None) -> tuple[Student, list[dict]]:
    """Distil ``planner`` into a :class:`Student` (see the module docs); returns the last
    round's student and one record per round.

    Args:
        planner: ``states [n] -> actions [n]`` (e.g. a :class:`~torchwm_rl.planning.DiscreteCEMPlanner`).
        features: ``states -> features [n, F]``, the student's input (e.g. ``model.features``).
        bank: the start states (batch ``[B]``): round 0's states, and the imagined rollouts' starts.
        labels: states labelled in each round (``len(labels)`` rounds; round 0 first).
        rng: draws the states (a ``numpy.random.Generator``).
        new_states: ``(student, round) -> states`` for rounds after 0; default: the states the
            student visits in ``env`` (:func:`imagined_states`) from ``starts`` states drawn from
            the bank, at most ``length`` steps each.
        env: the imagined env with batch ``[starts]`` (for the default ``new_states``).
        fit_steps: the student's minibatches per fit.
        fit_noise: the std of the noise on its standardised features in the fit (:class:`Student`).
        final_members: the last round's student is this many fits merged (``Student(members=...)``);
            the earlier rounds' are one fit each (they only pick the states to label).
        chunk: states per planning call.
        on_round: called with each round's record and student, after the round's new states are
            labelled (e.g. for a progress line or an evaluation; it must draw from neither ``rng``
            nor the global torch generator, or the next rounds change).

    Each record has ``round``, ``labels`` (the student's, so far), ``train_accuracy``,
    ``new_labels`` (labelled after the fit, for the next round; 0 in the last), ``seconds`` (wall,
    since the call) and, for rounds that made new states with the default,
    ``imagined_steps_alive`` (the student's mean steps before an imagined end in those rollouts),
    ``imagined_states`` (the states they visited) and ``imagined_steps`` (the steps imagined).
    """
    import warnings

    counts = list(labels)
    if not counts or not all(_is_count(n, 1) for n in counts) or counts[0] < 2:
        raise ValueError(f"distil: labels must be a non-empty list of ints >= 1 (states labelled per round), the "
                         f"first at least 2 (a student is fit on them); got {counts}")
    if not _is_count(final_members, 1):
        raise ValueError(f"distil: final_members must be an int >= 1 (fits merged into the last student), got "
                         f"{final_members!r}")
    if len(bank) < max(counts[0], starts if new_states is None else 0):
        raise ValueError(f"distil: the bank has {len(bank)} states, fewer than the first round's labels "
                         f"({counts[0]}) or the imagined rollouts' starts ({starts})")
    if new_states is None:
        if env is None or tuple(env.batch_size) != (starts,):
            raise ValueError(f"distil: the default new_states imagines in env, which must have batch [{starts}] "
                             f"(starts); got {None if env is None else tuple(env.batch_size)}")
    t0 = time.perf_counter()

    def draw(states, n):
        return states[torch.as_tensor(rng.permutation(len(states))[:n])]

    states = draw(bank, counts[0])
    actions, feats = label(planner, states, chunk), features(states)
    records = []
    for r in range(len(counts)):
        with torch.enable_grad():
            student = Student(feats, actions, fit_steps, noise=fit_noise,
                              members=final_members if r + 1 == len(counts) else 1)
        rec = {"round": r, "labels": len(actions), "train_accuracy": round(student.train_accuracy, 4),
               "new_labels": 0}
        if r + 1 < len(counts):
            if new_states is None:
                new, alive = imagined_states(env, features, student, draw(bank, starts), length)
                rec |= {"imagined_steps_alive": alive, "imagined_states": len(new), "imagined_steps": starts * length}
            else:
                new = new_states(student, r)
            if len(new) < counts[r + 1]:
                warnings.warn(f"distil: round {r} gave {len(new)} new states, fewer than the {counts[r + 1]} to label; "
                              "labelling all of them", stacklevel=2)
            new = draw(new, counts[r + 1])
            rec["new_labels"] = len(new)
            actions = torch.cat([actions, label(planner, new, chunk)])
            feats = torch.cat([feats, features(new)])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        records.append(rec)
        if on_round is not None:
            on_round(rec, student)
    return student, records
