"""What every run of the app shares: the demo settings, the run folder, the result record
(``results.json`` and the summary table), strict JSON, and the plotting backend.

The demos (:mod:`.demo_cartpole`, :mod:`.demo_pendulum`) and the commands (:mod:`.demo`,
:mod:`.mbpo`, ...) import this module; it imports none of them (``tests/unit/test_layout.py``),
so adding a demo or a command never closes an import circle through it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch


@dataclass
class DemoConfig:
    """Demo settings. ``frames`` is the imagined-frame budget (an upper bound: training stops
    early when the imagined evaluation is solved); for ``cartpole-pixels`` it is the number of
    planner-labelled latents instead (see :mod:`.demo_cartpole_pixels`)."""

    task: str = "cartpole"
    seed: int = 0
    frames: Optional[int] = None  # None: the task's default (DEFAULT_FRAMES)
    num_envs: int = 64
    steps_per_batch: int = 16
    epochs: int = 10
    minibatch: int = 256
    lr: float = 1e-3
    gamma: float = 0.98
    lmbda: float = 0.8
    clip_epsilon: float = 0.2
    entropy_coeff: float = 0.0
    hidden: int = 64
    eval_every: int = 4  # batches between imagined evaluations...
    eval_threshold: float = 0.4  # ...once training returns reach this fraction of the time limit
    eval_envs: int = 64
    episodes: int = 20  # reality-check episodes
    out: Optional[str] = None
    threads: Optional[int] = None  # torch threads; None: the task's default (DEFAULT_THREADS, else 1)
    progress: bool = True
    save_plot: bool = True

    @property
    def frames_per_batch(self) -> int:
        return self.num_envs * self.steps_per_batch


#: budget per task when none is given: imagined frames (pendulum: SAC, ~60 s of training on 2
#: cores), except cartpole-pixels, whose budget is the number of planner-labelled latents
DEFAULT_FRAMES = {"cartpole": 300_000, "pendulum": 16_000, "cartpole-pixels": 2_560}


#: torch threads per task when none is given (1 is fastest for the small state-vector nets; the
#: pixel demo's planner imagines 8,192 latent rows per call, which two threads share)
DEFAULT_THREADS = {"cartpole-pixels": 2}


def resolved(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with the task's default frame budget and thread count filled in."""
    from ..zoo import canonical

    if cfg.frames is None:
        cfg = replace(cfg, frames=DEFAULT_FRAMES.get(canonical(cfg.task), 300_000))
    if cfg.threads is None:
        cfg = replace(cfg, threads=DEFAULT_THREADS.get(canonical(cfg.task), 1))
    return cfg


def whole_batches(frames: int, frames_per_batch: int) -> int:
    """``frames`` rounded up to a whole number of collector batches: TorchRL's collector warns
    about, and rounds up, an ``init_random_frames`` that is not one, so say the number it uses."""
    return max(1, math.ceil(frames / frames_per_batch)) * frames_per_batch


def default_out_dir(prefix: str = "") -> Path:
    """The run folder when none is given: ``./torchwm_rl_runs/<prefix><YYYYmmdd-HHMMSS>``."""
    return Path("torchwm_rl_runs") / time.strftime(f"{prefix}%Y%m%d-%H%M%S")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None`` and numpy/torch
    scalars made Python numbers, so that ``json.dumps(..., allow_nan=False)`` writes strict
    JSON (bare ``NaN`` is not JSON: most parsers outside Python reject it)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def format_table(rows: list[tuple[str, str]]) -> str:
    """Two-column plain-text table."""
    w = max(len(k) for k, _ in rows)
    v = max(len(x) for _, x in rows)
    line = f"+-{'-' * w}-+-{'-' * v}-+"
    body = [f"| {k.ljust(w)} | {x.rjust(v)} |" for k, x in rows]
    return "\n".join([line, *body, line])


#: what a demo reports instead of its plot when matplotlib is missing
NO_MATPLOTLIB = "matplotlib is not installed: skipped the plot (pip install 'torchwm-rl[plot]')"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only), or ``None`` when
    matplotlib is not installed (it is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def finish_run(out: Path, cfg: DemoConfig, report: Any, history: list, train_seconds: float, t_start: float,
               plot_msg: Optional[str], log: Callable[[str], None], *, real_env_id: str, imagined_label: str,
               extra_result: Optional[dict] = None, extra_json: Optional[dict] = None) -> dict:
    """The end of every demo task: the result record (``--json``), ``results.json`` (strict JSON)
    and the summary table. ``extra_result``/``extra_json`` add a task's own entries."""
    frames = history[-1]["frames"] if history else 0
    wall = time.perf_counter() - t_start
    result = {
        "task": cfg.task,
        "seed": cfg.seed,
        "real_mean_return": report.real_mean_return,
        "real_std_return": report.real_std_return,
        "imagined_mean_return": report.imagined_mean_return,
        "imagined_std_return": report.imagined_std_return,
        "return_gap": report.return_gap,
        "episodes": report.episodes,
        "imagined_frames": frames,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(wall, 2),
        "model_error_step1": report.error_at(1),
        "model_error_step100": report.error_at(100),
        **(extra_result or {}),
        "out_dir": str(out),
        "policy_path": str(out / "policy.safetensors"),
        "plot_path": None if plot_msg else str(out / "results.png"),
    }
    with open(out / "results.json", "w") as fh:  # strict JSON: null where there is no value
        json.dump(json_safe({"result": result, "config": asdict(cfg), **(extra_json or {}), "history": history,
                             "reality_check": report.to_dict()}), fh, indent=1, allow_nan=False)
    log(format_table([
        ("task", f"{cfg.task} (real: {real_env_id})"),
        (f"imagined return ({imagined_label})", f"{report.imagined_mean_return:.1f} +/- {report.imagined_std_return:.1f}"),
        (f"real return ({report.episodes} episodes)", f"{report.real_mean_return:.1f} +/- {report.real_std_return:.1f}"),
        ("imagined steps (training)", f"{frames:,}"),
        ("model error, 1 / 100 steps open loop", f"{report.error_at(1):.2g} / {report.error_at(100):.2g}"),
        ("train seconds", f"{train_seconds:.1f}"),
        ("wall seconds (the demo command, imports included)", f"{wall:.1f}"),
        ("outputs", str(out)),
    ]))
    return result
