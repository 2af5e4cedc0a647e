"""torchwm-rl: turn a trained world model into a TorchRL environment, with Gymnasium,
Stable-Baselines3 and CleanRL-style exports that share one adapter.

Data flow: user callables -> :class:`ModelAdapter` (normalize calls and return forms) ->
:class:`~torchwm_rl.episode.EpisodeLogic` (resets, time limits) -> :class:`WorldModelEnv`
(TensorDicts) or :class:`GymWorldModelEnv` / vector / SB3 exports (numpy).
"""

from .adapter import ModelAdapter
from .env import WorldModelEnv
from .gym import GymVectorWorldModelEnv, GymWorldModelEnv

__all__ = ["ModelAdapter", "WorldModelEnv", "GymWorldModelEnv", "GymVectorWorldModelEnv"]
__version__ = "0.1.0"

# Added with the zoo/demo work: the reality check is part of the public API.
from .reality import reality_check  # noqa: E402

__all__ += ["reality_check"]
