"""torchwm-rl: turn a trained world model into a TorchRL environment, with Gymnasium,
Stable-Baselines3 and CleanRL-style exports that share one adapter.

Data flow: user callables -> :class:`ModelAdapter` (normalize calls and return forms) ->
:class:`~torchwm_rl.episode.EpisodeLogic` (resets, time limits) -> :class:`WorldModelEnv`
(TensorDicts) or :class:`GymWorldModelEnv` / vector / SB3 exports (numpy).
:func:`reality_check` compares a policy's imagined and real episodes.

The public names are imported on first use (PEP 562 ``__getattr__``), so ``import torchwm_rl``
and the ``torchwm-rl`` command's ``--help`` / ``--version`` do not pay for importing torch,
TorchRL and Gymnasium; ``from torchwm_rl import WorldModelEnv`` works as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from .adapter import ModelAdapter
    from .env import WorldModelEnv
    from .gym import GymVectorWorldModelEnv, GymWorldModelEnv
    from .reality import reality_check

# public name -> the submodule that defines it
_LAZY = {
    "ModelAdapter": ".adapter",
    "WorldModelEnv": ".env",
    "GymWorldModelEnv": ".gym",
    "GymVectorWorldModelEnv": ".gym",
    "reality_check": ".reality",
}

__all__ = ["ModelAdapter", "WorldModelEnv", "GymWorldModelEnv", "GymVectorWorldModelEnv", "reality_check"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access (then cache the name here); a
    submodule's name (``torchwm_rl.zoo``) imports that submodule, as the eager imports did."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule: torchwm_rl.gym, ...
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
