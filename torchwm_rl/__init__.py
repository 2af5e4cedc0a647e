"""torchwm-rl: turn a trained world model into a TorchRL environment, with Gymnasium,
Stable-Baselines3 and CleanRL-style exports that share one adapter.

Data flow: user callables -> :class:`ModelAdapter` (normalize calls and return forms) ->
:class:`~torchwm_rl.episode.EpisodeLogic` (resets, time limits) -> :class:`WorldModelEnv`
(TensorDicts) or :class:`GymWorldModelEnv` / vector / SB3 exports (numpy).
:func:`reality_check` compares a policy's imagined and real episodes.
"""

from .adapter import ModelAdapter
from .env import WorldModelEnv
from .gym import GymVectorWorldModelEnv, GymWorldModelEnv
from .reality import reality_check

__all__ = ["ModelAdapter", "WorldModelEnv", "GymWorldModelEnv", "GymVectorWorldModelEnv", "reality_check"]
__version__ = "0.1.0"
