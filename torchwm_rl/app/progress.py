"""The demos' progress output: one shared style for ``torchwm-rl demo`` (CartPole, PPO) and
``torchwm-rl demo pendulum`` (SAC).

:class:`Progress` prints one line about every 10% of the frame budget (and the last one),
through the demo's ``log``; each line says only what is known: a mean return only where
episodes ended, and otherwise that none did and what the running episodes have collected so
far. :func:`quiet_torchrl_info` keeps TorchRL's INFO log lines (``Initialized
LazyTensorStorage``, ``check_env_specs succeeded!``) out of a demo run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, Iterator, Optional


def describe_returns(ended: float, running: float, window: str = "in the last batch") -> str:
    """What is known about the training episodes' returns: the mean return of those that ended
    ``window``, else (``ended`` is nan) that none did, with the running episodes' mean return
    so far (a lower bound of theirs, for rewards >= 0) when there is one."""
    if not math.isnan(ended):
        return f"training episodes that ended {window}: mean return {ended:.1f}"
    text = f"no training episode ended {window}"
    if not math.isnan(running):
        text += f"; mean return so far of those running: {running:.1f}"
    return text


class Progress:
    """One progress line about every ``fraction`` of ``total`` frames, and one at the end.

    ``update(frames, text)`` prints ``  {frames:,} / {total:,} frames ({pct}%)  {seconds} s  {text}``
    when ``frames`` reached the next threshold (or ``total``); ``finish(frames, text)`` prints the
    last state if that line was not printed yet (a run that stopped early). Nothing is printed
    when ``enabled`` is false."""

    def __init__(self, total: int, log: Callable[[str], None], enabled: bool = True, fraction: float = 0.1):
        self.total, self.log, self.enabled, self.step = int(total), log, enabled, max(1.0, total * fraction)
        self.next = self.step
        self.t0 = time.perf_counter()
        self.printed: Optional[int] = None

    def update(self, frames: int, text: str) -> None:
        if frames < self.next and frames < self.total:
            return
        while self.next <= frames:
            self.next += self.step
        self._line(frames, text)

    def finish(self, frames: int, text: str) -> None:
        if self.printed != frames:
            self._line(frames, text)

    def _line(self, frames: int, text: str) -> None:
        self.printed = frames
        if self.enabled:
            pct = 100 * frames / self.total if self.total else 100.0
            self.log(f"  {frames:>7,} / {self.total:,} frames ({pct:3.0f}%)  "
                     f"{time.perf_counter() - self.t0:5.1f} s  {text}")


@contextlib.contextmanager
def quiet_torchrl_info() -> Iterator[None]:
    """TorchRL's logger (``logging.getLogger("torchrl")``) at WARNING within the block, restored
    after: its INFO lines tell a demo's user nothing they can act on. Warnings still show."""
    import torchrl._utils  # noqa: F401  (importing torchrl sets this logger's level: ours must come after)

    logger = logging.getLogger("torchrl")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
