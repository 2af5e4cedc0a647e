"""Imagined steps per second, in one process, for one MLP world model and one small policy.

    python benchmarks/throughput.py              # N = 1, 64, 1024; 7 samples per cell; 1e5-step memory run
    python benchmarks/throughput.py --quick      # shorter runs, 1e4-step memory run
    python benchmarks/throughput.py --repeats 3  # each cell the median of 3 whole runs (a shared machine)
    python benchmarks/throughput.py --threads 2  # torch threads (default 1: the numbers compare overheads)
    python benchmarks/throughput.py --device cuda --json throughput.json   # on a GPU; numbers also to JSON

Two models (``--models``): the project's MLP (latent 64 + 8-dim action -> 2 x 256 -> latent)
and issue 24's small one (latent 64 + 1-dim action -> 256 -> latent), each with its table and
its Python function calls per steady-state step (cProfile, N=64) for rows (a), (b), (bm), (f)
and (fm).

Rows (same model, same policy, all under ``torch.no_grad()``):

  (a)  bare loop: ``a = policy(s); s, r, d = model(s, a)``, keeping the trajectory (latent,
       action, reward, done) and stacking it at the end, as Dreamer's imagination does. The limit.
  (a0) the same loop keeping nothing (pure compute), for reference.
  (b)  ``torchwm_rl.WorldModelEnv.rollout(T, policy, break_when_any_done=False)`` (a
       TensorDictModule policy; the stacked [N, T] trajectory with root and "next" entries).
  (bu) (b) with ``nan_policy="ignore"``: without the NaN/inf check, the one per-step guard a
       user can switch off (the RNG guard and the buffer-reuse guard have no switch). What that
       check costs.
  (b0) the same call through TorchRL's general ``EnvBase.rollout`` (what (b) was before its fast
       path; the fast path returns the same tensordict).
  (bt) ``TransformedEnv(env, RewardSum()).rollout(...)``: TorchRL's general path over our step.
  (c)  TorchRL's own ``torchrl.envs.model_based.WorldModelEnv``: its constructor expands the
       reference env's action spec by the batch size, which fails for an 8-dim action at every
       N, so it is "n/a" as shipped; (c*) builds it with a 1-dim reference action spec and sets
       the (N, 8) action and (N, 1) reward specs afterwards, to time its rollout anyway.
  (d)  the Gymnasium vector export (``env.to_gymnasium()``, numpy in and out), CleanRL-style loop.
  (e)  N single ``GymWorldModelEnv`` in ``gymnasium.vector.SyncVectorEnv`` (the tutorial's
       CleanRL pattern), same loop.
  (bm) (b) with ``reset_schedule="every_step"`` (masked resets: no host read per step).
  (bc) (b) with ``compile=True``: the model's hooks through ``torch.compile`` (CUDA graphs on
       CUDA); steady state, the first rollout (the compile) timed apart and printed below the
       table. ``--skip bc ac`` leaves the compiled rows out (compiling takes seconds per N).
  (ac) the hand loop (a) over ``torch.compile(model)``: what a user who compiles would write.
  (f)  a TorchRL ``Collector`` over our env (frames_per_batch = N x T), steps/s of its batches;
  (fm) (f) with ``reset_schedule="every_step"`` and ``track_traj_ids=False``.
  (g)  the same ``Collector`` over TorchRL's own env (c*), its reset drawing the same start
       latents (TorchRL's own env cannot reset without a given latent).

Each cell is the fastest of several samples, interleaved across rows and timed in CPU time of
this process (the machine may be shared: other users' processes would otherwise count, and the
fastest sample is the least noisy estimate of what the code costs). With ``--device cuda``
everything (model, policy, envs) lives on the GPU and cells are wall-clock times with
``torch.cuda.synchronize()`` before each timer read (CPU time means nothing there). Ratios are
against (a). The bytes line gives the memory of the kept trajectory per env-step: the rollout's
output tensordict against the bare loop's stacked tensors.
The memory line steps a batched env (N=64, per-env time limits, partial resets) through
``step_and_maybe_reset`` and prints the resident and peak RSS at 10%, 50% and 100% of the run.
``--breakdown`` prints where one step of the TorchRL path goes, layer by layer. Not a test: it
prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from torchwm_rl import GymWorldModelEnv, WorldModelEnv

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # benchmarks/common.py, also when loaded by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ACTION, HIDDEN, LATENT, LatentMLPWorldModel, latent_policy, peak_rss_mb, rss_mb  # noqa: E402

DEVICE = torch.device("cpu")  # set by --device
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, shape=(LATENT,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(ACTION,), dtype=np.float32)
MODEL = "project"  # set by --models: "project" (the project's MLP) or "small" (issue 24's)


MLPWorldModel = LatentMLPWorldModel  # latent (64) + action (8) -> 2 x 256 ELU -> next latent, reward, done


class SmallMLPWorldModel(nn.Module):
    """Issue 24's small model: latent (64) + a 1-dim action -> 256 ELU -> next latent (64), with
    a reward and a done logit beside it (66 outputs). Where the model's share of a step is small,
    the per-step design shows."""

    def __init__(self, device=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(LATENT + 1, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, LATENT + 2))
        self.device = torch.device("cpu" if device is None else device)
        self.to(self.device)

    def forward(self, latent, action):
        out = self.net(torch.cat([latent, action], -1))
        return torch.tanh(out[..., :LATENT]), out[..., LATENT], out[..., LATENT + 1] > 3.0

    initial = LatentMLPWorldModel.initial


def use_model(kind: str) -> None:
    """Make the rows use the project's model (8-dim action) or the small one (1-dim action)."""
    global MODEL, ACT_SPACE
    MODEL = kind
    ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(ACTION if kind == "project" else 1,), dtype=np.float32)


def make_model() -> nn.Module:
    return MLPWorldModel(DEVICE) if MODEL == "project" else SmallMLPWorldModel(DEVICE)


def make_policy() -> nn.Module:
    if MODEL == "project":
        return latent_policy(DEVICE)
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(LATENT, 64), nn.Tanh(), nn.Linear(64, 1), nn.Tanh()).to(DEVICE)


def reset_fn(model, seed=None, options=None):
    mask = (options or {}).get("reset_mask")
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return model.initial(None if mask is None else int(mask.shape[0]), generator)


def transition_fn(model, state, action):
    latent, reward, terminated = model(state, action)
    return {"state": latent, "observation": latent, "reward": reward, "terminated": terminated}


# ---------------------------------------------------------------------------------- the rows
def bare(model, policy, n, steps, keep=True):
    state = model.initial(n, torch.Generator().manual_seed(0))
    latents, actions, rewards, dones = [], [], [], []
    for _ in range(steps):
        action = policy(state)
        next_state, reward, done = model(state, action)
        if keep:
            latents.append(state), actions.append(action), rewards.append(reward), dones.append(done)
        state = next_state
    if keep:
        return [torch.stack(x, 1) for x in (latents, actions, rewards, dones)]
    return state


#: seconds of the first rollout of a compiled env (compiling included), by model and N: (bc)'s compile time
COMPILE_SECONDS: dict = {}


def ours_compiled(model, policy, n):
    """(bc): (b) with ``compile=True``; its first rollout (the compile) is timed here, apart."""
    env = WorldModelEnv(model, OBS_SPACE, ACT_SPACE, reset_fn=reset_fn, transition_fn=transition_fn,
                        batch_size=(n,), seed=0, compile=True)
    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    start = time.perf_counter()
    env.rollout(3, module, break_when_any_done=False)
    COMPILE_SECONDS.setdefault(MODEL, {}).setdefault(n, time.perf_counter() - start)  # the first (a repeat hits the cache)
    return lambda steps: env.rollout(steps, module, break_when_any_done=False)


def bare_compiled(model, policy, n):
    """(ac): the hand loop (a) over ``torch.compile(model)`` (what a user who compiles writes)."""
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    compiled.initial = model.initial
    bare(compiled, policy, n, 3)
    return lambda steps: bare(compiled, policy, n, steps)


def ours_env(model, n, unguarded=False, masked=False):
    """Our env; ``unguarded``: without the NaN/inf check (``nan_policy="ignore"``), the one
    per-step guard a user can switch off. (Hooks that take ``generator`` skip the swap of
    torch's global RNG, but the env then guards its own generator around them instead, at a
    similar cost, so no configuration steps without an RNG guard.) ``masked``:
    ``reset_schedule="every_step"`` (no host read per step; the reset hook runs every step)."""
    options = {"nan_policy": "ignore"} if unguarded else {}
    if masked:
        options["reset_schedule"] = "every_step"
    return WorldModelEnv(model, OBS_SPACE, ACT_SPACE, reset_fn=reset_fn, transition_fn=transition_fn,
                         batch_size=(n,), seed=0, **options)


def ours_rollout(model, policy, n, general=False, transformed=False, unguarded=False, masked=False):
    env = ours_env(model, n, unguarded, masked)
    if transformed:
        from torchrl.envs import RewardSum, TransformedEnv

        env = TransformedEnv(env, RewardSum())
    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    if general:
        from torchrl.envs import EnvBase

        return lambda steps: EnvBase.rollout(env, steps, module, break_when_any_done=False)
    return lambda steps: env.rollout(steps, module, break_when_any_done=False)


def collector(env, policy, n, in_key, **kwargs):
    """Steps ``steps`` x N env-steps through a TorchRL Collector (batches of N x steps frames);
    ``kwargs`` go to the Collector (``track_traj_ids=False``)."""
    from torchrl.collectors import Collector

    module = TensorDictModule(policy, in_keys=[in_key], out_keys=["action"])
    made = {}

    def run(steps):
        if made.get("steps") != steps:  # one collector per batch length, built outside the timing
            made.update(steps=steps, it=iter(Collector(env, module, frames_per_batch=n * steps, total_frames=-1,
                                                          auto_register_policy_transforms=False, **kwargs)))
        return next(made["it"])
    return run


def torchrl_env(model, n, patch_specs: bool):
    """TorchRL's own WorldModelEnv driving the same MLP. Raises where its constructor cannot
    take an (N, 8) action spec (``patch_specs=False``). Its reset, given no latent, draws the
    same start latents as ours (a Collector resets without one)."""
    from tensordict import TensorDict
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs.model_based import WorldModelEnv as TorchRLWorldModelEnv
    from torchrl.modules import WorldModel

    class Step(nn.Module):
        def forward(self, latent, action):
            nxt, reward, terminated = model(latent, action)
            terminated = terminated.unsqueeze(-1)
            return nxt, reward.unsqueeze(-1), terminated, terminated

    dynamics = TensorDictModule(
        Step(), in_keys=["latent", "action"],
        out_keys=[("next", "latent"), ("next", "reward"), ("next", "terminated"), ("next", "done")],
    )
    # WorldModel requires a reward head; the reward is already computed by the one MLP call
    reward_head = TensorDictModule(nn.Identity(), in_keys=[("next", "reward")], out_keys=[("next", "reward")])
    world_model = WorldModel(TensorDictModule(nn.Identity(), ["observation"], ["latent"]), dynamics, reward_head)
    action_space = ACT_SPACE if not patch_specs else gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    reference = WorldModelEnv(model, OBS_SPACE, action_space, reset_fn=reset_fn, device=DEVICE,
                              transition_fn=lambda m, s, a: s)  # only its specs are read
    class StartingWorldModelEnv(TorchRLWorldModelEnv):
        def _reset(self, tensordict=None, **kwargs):
            if tensordict is None or "latent" not in tensordict.keys():
                tensordict = TensorDict({"latent": model.initial(n, torch.Generator().manual_seed(0))},
                                        batch_size=[n], device=DEVICE)
            return super()._reset(tensordict, **kwargs)

    env = StartingWorldModelEnv(
        world_model, reference, batch_size=(n,), device=DEVICE,
        observation_spec=Composite(latent=Unbounded((n, LATENT), device=DEVICE), shape=(n,), device=DEVICE),
        latent_key="latent",
    )
    if patch_specs:
        env.action_spec = Bounded(-1.0, 1.0, shape=(n, *ACT_SPACE.shape), device=DEVICE)
        env.reward_spec = Unbounded(shape=(n, 1), device=DEVICE)
    return env


def torchrl_rollout(model, policy, n, patch_specs: bool):
    from tensordict import TensorDict

    env = torchrl_env(model, n, patch_specs)
    module = TensorDictModule(policy, in_keys=["latent"], out_keys=["action"])
    start = TensorDict({"latent": model.initial(n, torch.Generator().manual_seed(0))}, batch_size=[n], device=DEVICE)
    return lambda steps: env.rollout(steps, module, tensordict=start.clone(), break_when_any_done=False)


def vector_loop(envs, policy):
    def run(steps):
        obs, _ = envs.reset(seed=0)
        for _ in range(steps):
            action = policy(torch.as_tensor(obs, device=DEVICE)).cpu().numpy()
            obs, reward, terminated, truncated, _ = envs.step(action)
    return run


def ours_vector(model, policy, n):
    return vector_loop(ours_env(model, n).to_gymnasium(), policy)


def sync_singles(model, policy, n):
    def make(i):
        return lambda: GymWorldModelEnv(model, OBS_SPACE, ACT_SPACE, reset_fn=reset_fn,
                                        transition_fn=transition_fn, seed=i)
    return vector_loop(gym.vector.SyncVectorEnv([make(i) for i in range(n)]), policy)


# ----------------------------------------------------------------------------- measurement
def steps_for(n: int, slow_row: bool) -> int:
    """Steps of one timed sample: 256 at N=1, 64 at N=1024 (a rollout's fixed costs, reset and
    setup, are then spread over as many steps as a short imagination horizon); the slow
    SyncVectorEnv row takes fewer."""
    if slow_row:
        return max(2, min(256, 2048 // n))
    return max(64, min(256, 16384 // n))


def clock() -> float:
    """Seconds: process CPU time on the CPU; wall clock after a synchronize on CUDA (the GPU
    works asynchronously, and CPU time would not count its work)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        return time.perf_counter()
    return time.process_time()


def measure(rows: dict, n: int, samples: int) -> dict:
    """Steps/s of each row from its fastest sample (None: the row cannot run).

    Samples of all rows are interleaved, and each is timed by :func:`clock`: on the CPU the CPU
    time of this process (``time.process_time``, page faults included), since on a shared
    machine wall time would also count the other users' processes.
    """
    best = {name: None for name in rows}
    for name, (run, slow) in rows.items():
        if run is not None:
            run(min(steps_for(n, slow), 3))  # warm-up (allocations, first-call paths)
            run(steps_for(n, slow))
    for _ in range(samples):
        for name, (run, slow) in rows.items():
            if run is None:
                continue
            steps = steps_for(n, slow)
            start = clock()
            run(steps)
            elapsed = clock() - start
            if elapsed > 0:
                rate = n * steps / elapsed
                best[name] = rate if best[name] is None else max(best[name], rate)
    return best


def fmt_rate(rate: Optional[float]) -> str:
    return "n/a" if rate is None else f"{rate:,.0f}"


def fmt_ratio(rate: Optional[float], ref: Optional[float]) -> str:
    return "n/a" if rate is None or not ref else f"{rate / ref:.2f}x"


ROWS = [
    ("a", "(a) bare loop, keeps the trajectory (the limit)"),
    ("a0", "(a0) bare loop, keeps nothing"),
    ("b", "(b) torchwm_rl `WorldModelEnv.rollout`"),
    ("bu", "(bu) (b) with `nan_policy=\"ignore\"`"),
    ("bm", "(bm) (b) with `reset_schedule=\"every_step\"`"),
    ("bc", "(bc) (b) with `compile=True` (steady state; compile time below)"),
    ("ac", "(ac) (a) over `torch.compile(model)`"),
    ("b0", "(b0) the same through TorchRL's general `EnvBase.rollout`"),
    ("bt", "(bt) `TransformedEnv(env, RewardSum()).rollout`"),
    ("c", "(c) TorchRL's own WorldModelEnv.rollout"),
    ("c*", "(c*) TorchRL's own, specs set after construction"),
    ("d", "(d) torchwm_rl Gymnasium vector export"),
    ("e", "(e) SyncVectorEnv of N GymWorldModelEnv"),
    ("f", "(f) TorchRL `Collector` over torchwm_rl's env"),
    ("fm", "(fm) (f) masked resets, `track_traj_ids=False`"),
    ("g", "(g) TorchRL `Collector` over TorchRL's own env (c*)"),
]


def throughput_table(sizes, samples: int, skip=(), repeats: int = 1) -> tuple[str, dict]:
    """The table; with ``repeats`` > 1 every cell is the median over that many whole runs (each
    run's cell being its fastest sample), and each ratio the median of the runs' ratios."""
    runs = [_throughput_run(sizes, samples, skip) for _ in range(repeats)]
    notes = set().union(*(notes for _, notes in runs))
    results = {n: {} for n in sizes}
    ratios = {n: {} for n in sizes}
    for n in sizes:
        for key in runs[0][0][n]:
            rates = [r[n].get(key) for r, _ in runs]
            if any(rate is None for rate in rates):
                results[n][key] = None
                continue
            results[n][key] = statistics.median(rates)
            ratios[n][key] = statistics.median(rate / r[n]["a"] for rate, (r, _) in zip(rates, runs))
    lines = ["| path | " + " | ".join(f"N={n} steps/s | ratio" for n in sizes) + " |",
             "|---|" + "---:|---:|" * len(sizes)]
    for key, label in ROWS:
        if all(key not in results[n] for n in sizes):
            continue
        cells = []
        for n in sizes:
            rate = results[n].get(key)
            cells += [fmt_rate(rate), "n/a" if key not in ratios[n] else f"{ratios[n][key]:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    derived = []
    for n in sizes:
        r = results[n]
        parts = [f"N={n}: (b)/(a0) {fmt_ratio(r.get('b'), r.get('a0'))}"]
        for num, den in (("b", "b0"), ("b", "c*"), ("bt", "b0"), ("f", "g"), ("d", "e")):
            if r.get(num) and r.get(den):
                parts.append(f"({num})/({den}) {fmt_ratio(r[num], r[den])}")
        derived.append(", ".join(parts))
    if repeats > 1:
        derived.append(f"medians over {repeats} runs; ratios of (b) per run: " + "; ".join(
            f"N={n}: " + " ".join(f"{r[n]['b'] / r[n]['a']:.2f}" for r, _ in runs if r[n].get("b")) for n in sizes))
    return "\n".join(lines + [""] + sorted(notes) + derived), results


def _throughput_run(sizes, samples: int, skip=()) -> tuple[dict, set]:
    model, policy = make_model(), make_policy()
    results = {}
    notes = set()
    for n in sizes:
        rows: dict[str, tuple[Optional[Callable], bool]] = {
            "a": (lambda steps, n=n: bare(model, policy, n, steps), False),
            "a0": (lambda steps, n=n: bare(model, policy, n, steps, keep=False), False),
            "b": (ours_rollout(model, policy, n), False),
            "bu": (ours_rollout(model, policy, n, unguarded=True), False),
            # (built only when asked for: --skip bm fm times a version without reset_schedule)
            "bm": (ours_rollout(model, policy, n, masked=True) if "bm" not in skip else None, False),
            # (compiled only when asked for: compiling takes seconds per model and N)
            "bc": (ours_compiled(model, policy, n) if "bc" not in skip else None, False),
            "ac": (bare_compiled(model, policy, n) if "ac" not in skip else None, False),
            "b0": (ours_rollout(model, policy, n, general=True), False),
            "bt": (ours_rollout(model, policy, n, transformed=True), False),
            "d": (ours_vector(model, policy, n), False),
            "e": (sync_singles(model, policy, n), True),
            "f": (collector(ours_env(model, n), policy, n, "observation"), False),
            "fm": (collector(ours_env(model, n, masked=True), policy, n, "observation", track_traj_ids=False)
                   if "fm" not in skip else None, False),
        }
        for key, patch in (("c", False), ("c*", True)):
            try:
                rows[key] = (torchrl_rollout(model, policy, n, patch), False)
            except Exception as err:  # TorchRL's constructor refuses the 8-dim action spec
                rows[key] = (None, False)
                notes.add(f"({key}) n/a: {type(err).__name__}: {str(err).splitlines()[0].split(' torch.Size')[0]}...")
        rows["g"] = (collector(torchrl_env(model, n, True), policy, n, "latent"), False)
        for key in skip:
            rows.pop(key, None)
        results[n] = measure(rows, n, samples)
    return results, notes


# ---------------------------------------------------------------------------- memory per step
def tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return sum(tensor_bytes(v) for v in value.values(True, True))


def bytes_per_env_step(n: int = 64, steps: int = 64) -> dict:
    """Bytes of the kept trajectory per env-step: the rollout's output tensordict (root and
    "next" entries) against the bare loop's stacked (latent, action, reward, done)."""
    model, policy = make_model(), make_policy()
    out = {
        "a": tensor_bytes(bare(model, policy, n, steps)) / (n * steps),
        "b": tensor_bytes(ours_rollout(model, policy, n)(steps)) / (n * steps),
    }
    try:
        out["c*"] = tensor_bytes(torchrl_rollout(model, policy, n, True)(steps)) / (n * steps)
    except Exception:  # noqa: BLE001 - a TorchRL version whose env cannot be built
        out["c*"] = None
    return out


# -------------------------------------------------------------------------------- breakdown
def _per_call_us(fn: Callable[[], object], calls: int = 20, rounds: int = 60) -> float:
    """Best mean CPU time of ``calls`` calls over ``rounds`` rounds, in microseconds."""
    for _ in range(calls):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - start) / calls * 1e6)
    return best


def breakdown(n: int, steps: int = 100) -> str:
    """Where a ``WorldModelEnv.rollout`` step goes, layer by layer (microseconds per step)."""
    from torchrl.envs import EnvBase

    model, policy = make_model(), make_policy()
    env = ours_env(model, n)
    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    td = module(env.reset())
    state, action = td["observation"], td["action"]
    rollout_calls = 10
    layers = [
        ("policy network", lambda: policy(state)),
        ("policy as TensorDictModule", lambda: module(td)),
        ("model (transition_fn)", lambda: transition_fn(model, state, action)),
        ("ModelAdapter.step", lambda: env.adapter.step(state, action)),
        ("WorldModelEnv._step_entries (the fast path's step)", lambda: env._step_entries(
            td["model_state"], td["elapsed_steps"].squeeze(-1), action, compact=True)),
        ("WorldModelEnv._step", lambda: env._step(td)),
        ("EnvBase.step", lambda: env.step(td.clone(False))),
        ("EnvBase.step_and_maybe_reset", lambda: env.step_and_maybe_reset(td.clone(False))),
    ]
    calls = max(2, 256 // n)
    rows = [(name, _per_call_us(fn, calls)) for name, fn in layers]
    rollout = _per_call_us(lambda: env.rollout(steps, module, break_when_any_done=False), 1, rollout_calls) / steps
    rows.append((f"rollout({steps}) per step, fast path (policy + step + stack)", rollout))
    general = _per_call_us(lambda: EnvBase.rollout(env, steps, module, break_when_any_done=False), 1, rollout_calls)
    rows.append((f"rollout({steps}) per step, EnvBase.rollout", general / steps))
    kept = lambda: bare(model, policy, n, steps)  # noqa: E731
    rows.append((f"bare loop keeping the trajectory, per step ({steps} steps)", _per_call_us(kept, 1, rollout_calls) / steps))
    lines = [f"per-step cost by layer, N={n} (best of many, microseconds):"]
    for name, us in rows:
        lines.append(f"  {name:60s} {us:9.1f}")
    return "\n".join(lines)


# ------------------------------------------------------------------- Python calls per step
def _count_rows(n: int, skip=()) -> dict:
    """The rows whose per-step counts are printed: the hand loop, ``env.rollout`` and the ``Collector`` path."""
    model, policy = make_model(), make_policy()
    builders = {
        "a": lambda: (lambda t: bare(model, policy, n, t)),
        "b": lambda: ours_rollout(model, policy, n),
        "bm": lambda: ours_rollout(model, policy, n, masked=True),
        "f": lambda: collector(ours_env(model, n), policy, n, "observation"),
        "fm": lambda: collector(ours_env(model, n, masked=True), policy, n, "observation", track_traj_ids=False),
    }
    return {key: build() for key, build in builders.items() if key not in skip}


def _per_step(count: Callable, n: int, steps: int, skip) -> dict:
    """``count(run, t)`` of a ``2 * steps`` run minus that of a ``steps`` run, over ``steps``
    (the once-per-rollout work cancels), the median of 3, per row of :func:`_count_rows`."""
    runs = _count_rows(n, skip)
    return {key: statistics.median((count(run, 2 * steps) - count(run, steps)) / steps for _ in range(3))
            for key, run in runs.items()}


def python_calls_per_step(n: int = 64, steps: int = 32, skip=()) -> dict:
    """Python function calls per steady-state step (cProfile's call count), for the hand loop,
    ``env.rollout`` and the ``Collector`` path."""
    import cProfile
    import pstats

    def calls(run, t: int) -> int:
        run(t)  # warm-up (a collector of that batch length is built here)
        profile = cProfile.Profile()
        profile.enable()
        run(t)
        profile.disable()
        return pstats.Stats(profile).total_calls

    # the median of 3 differences: amortized work (a purge of the adapter's table of handed-out
    # tensors) lands in one run or the other
    return _per_step(calls, n, steps, skip)


def torch_ops_per_step(n: int = 64, steps: int = 32, skip=()) -> dict:
    """Torch operators dispatched per steady-state step (a ``TorchDispatchMode`` counting every
    aten call, views included): on CUDA each non-view op is a kernel launch, so this is what a
    step costs a GPU in launches, beside :func:`python_calls_per_step`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    def ops(run, t: int) -> int:
        run(t)
        counter = Count()
        with counter:
            run(t)
        return counter.ops

    return _per_step(ops, n, steps, skip)


# ----------------------------------------------------------------------------------- memory
def memory_line(total_steps: int, n: int = 64) -> str:
    """RSS while a batched env takes ``total_steps`` steps with partial resets."""
    model, policy = make_model(), make_policy()
    limits = torch.randint(20, 200, (n,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    env = WorldModelEnv(model, OBS_SPACE, ACT_SPACE, reset_fn=reset_fn, transition_fn=transition_fn,
                        batch_size=(n,), max_episode_steps=limits, seed=0)
    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    marks = {max(1, total_steps // 10): "10%", total_steps // 2: "50%", total_steps: "100%"}
    out = []
    td = env.reset()
    for step in range(1, total_steps + 1):
        data, td = env.step_and_maybe_reset(module(td))
        if step in marks:
            out.append(f"{marks[step]} RSS {rss_mb():.1f} MiB (peak {peak_rss_mb():.1f})")
    return f"memory, {total_steps:,} steps of N={n} (partial resets): " + "; ".join(out)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main(argv=None) -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs and a 1e4-step memory run")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024], help="batch sizes N")
    parser.add_argument("--samples", type=int, default=None, help="timed samples per row (default 7; 3 with --quick)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="whole runs of the table; cells are medians over them (default 1)")
    parser.add_argument("--memory-steps", type=int, default=None, help="steps of the memory run (0: skip)")
    parser.add_argument("--breakdown", action="store_true", help="also print per-layer microseconds per step")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: model, policy and envs there")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out, e.g. --skip e g")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the table's numbers to PATH")
    parser.add_argument("--models", nargs="+", default=["project", "small"], choices=["project", "small"],
                        help="the project's MLP (8-dim action) and/or issue 24's small 64-256-64 MLP (1-dim action)")
    args = parser.parse_args(argv)
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    samples = args.samples or (3 if args.quick else 7)
    memory_steps = args.memory_steps if args.memory_steps is not None else (10_000 if args.quick else 100_000)
    print(f"machine: {machine()}")
    report: dict = {"machine": machine(), "device": str(DEVICE), "threads": args.threads, "samples": samples,
                    "timer": "wall clock, synchronized" if DEVICE.type == "cuda" else "process CPU time"}
    with torch.no_grad():
        for kind in args.models:
            use_model(kind)
            print(f"\nmodel: {kind} ({type(make_model()).__name__}, action dim {ACT_SPACE.shape[0]})")
            table, results = throughput_table(args.sizes, samples, skip=args.skip, repeats=args.repeats)
            print(table)
            calls = python_calls_per_step(skip=args.skip)
            if MODEL in COMPILE_SECONDS:
                print("(bc) compile time, the first 3-step rollout (wall s): " + ", ".join(
                    f"N={n} {sec:.1f}" for n, sec in COMPILE_SECONDS[MODEL].items()))
                report.setdefault("compile_seconds", {})[kind] = dict(COMPILE_SECONDS[MODEL])
            print("Python calls per steady-state step (cProfile, N=64): "
                  + ", ".join(f"({k}) {v:.0f}" for k, v in calls.items()))
            ops = torch_ops_per_step(skip=args.skip)
            print("torch ops dispatched per steady-state step (N=64; kernel launches on CUDA): "
                  + ", ".join(f"({k}) {v:.0f}" for k, v in ops.items()))
            part = report if kind == args.models[0] else report.setdefault("other_models", {}).setdefault(kind, {})
            part["model"] = kind
            part["python_calls_per_step_N64"] = calls
            part["torch_ops_per_step_N64"] = ops
            part["steps_per_s"] = {str(n): r for n, r in results.items()}
            part["ratio_to_a"] = {
                str(n): {k: (v / r["a"] if v and r.get("a") else None) for k, v in r.items()}
                for n, r in results.items()
            }
        use_model(args.models[0])
        per_step = bytes_per_env_step()
        report["bytes_per_env_step_N64_T64"] = per_step
        print("bytes per env-step of the kept trajectory (N=64, 64 steps): "
              + ", ".join(f"({k}) {v:,.0f} B" for k, v in per_step.items() if v is not None))
        if args.breakdown:
            for n in args.sizes:
                print(breakdown(n))
        if memory_steps:
            line = memory_line(memory_steps)
            report["memory"] = line
            print(line)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
