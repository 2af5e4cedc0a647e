"""What the benchmark scripts share: their world models, the throughput policy and the RSS readers.

Each benchmark keeps its own model (they measure different things), but the definitions live
here, once, so a benchmark that wants "the throughput model" or "the soak model" imports it
instead of copying it. Seeds and architectures are the ones each script has always used.

The scripts import this file as ``common`` (they put ``benchmarks/`` on ``sys.path`` first, so
it works when they are run as ``python benchmarks/<name>.py`` and when loaded by path).
"""

from __future__ import annotations

import os
import resource
from typing import Optional

import torch
from torch import nn

# ------------------------------------------------------------------------------------ memory


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; falls back to peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------- throughput.py: latent MLP model and policy

LATENT, ACTION, HIDDEN = 64, 8, 256


class LatentMLPWorldModel(nn.Module):
    """latent (64) + action (8) -> 2 x 256 ELU -> next latent, reward, termination logit.

    Weights from ``torch.manual_seed(0)``; the model and its start latents live on ``device``."""

    def __init__(self, device=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(LATENT + ACTION, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, HIDDEN), nn.ELU(),
            nn.Linear(HIDDEN, LATENT + 2),
        )
        self.device = torch.device("cpu" if device is None else device)
        self.to(self.device)

    def forward(self, latent, action):
        out = self.net(torch.cat([latent, action], -1))
        # terminations are rare (logit > 3 almost never happens at init), like the bare loop's
        return torch.tanh(out[..., :LATENT]), out[..., LATENT], out[..., LATENT + 1] > 3.0

    def initial(self, n: Optional[int], generator: torch.Generator):
        latent = 0.5 * torch.randn((LATENT,) if n is None else (n, LATENT), generator=generator)
        return latent.to(self.device)  # drawn on the CPU: the same start states on every device


def latent_policy(device=None) -> nn.Module:
    """The throughput policy: latent (64) -> 64 tanh -> action (8) in [-1, 1], ``torch.manual_seed(1)``."""
    torch.manual_seed(1)
    policy = nn.Sequential(nn.Linear(LATENT, 64), nn.Tanh(), nn.Linear(64, ACTION), nn.Tanh())
    return policy.to("cpu" if device is None else device)


# --------------------------------------------------- multiprocess.py: residual MLP dynamics

OBS_DIM, ACT_DIM = 16, 4


class ResidualMLPWorldModel(nn.Module):
    """Residual MLP dynamics (16-dim state, 4-dim action, 3 layers, ReLU); ``hidden`` sets the
    cost of one model call. Weights from ``torch.manual_seed(0)``."""

    def __init__(self, hidden: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(OBS_DIM + ACT_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, OBS_DIM),
        )

    def reset(self, seed=None, options=None):
        mask = (options or {}).get("reset_mask")
        shape = (OBS_DIM,) if mask is None else (mask.shape[0], OBS_DIM)
        state = torch.rand(shape) * 0.2 - 0.1
        return {"state": state, "observation": state}

    def step(self, state, action):
        nxt = (state + 0.1 * torch.tanh(self.net(torch.cat([state, action.to(state.dtype)], -1)))).clamp(-1, 1)
        return {"state": nxt, "observation": nxt, "reward": -nxt.norm(dim=-1)}


# ------------------------------------------------------- soak.py: small model with heads


class SoakModel(nn.Module):
    """A small latent MLP world model with reward and terminal heads (batched).
    Weights from ``torch.manual_seed(0)``; resets from a generator seeded by the reset's seed."""

    def __init__(self, obs_dim: int = 16, act_dim: int = 4, hidden: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.obs_dim = obs_dim
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.Tanh(), nn.Linear(hidden, obs_dim))
        self.reward_head = nn.Linear(obs_dim, 1)

    def reset(self, seed=None, options=None):
        n = int(options["reset_mask"].shape[0])
        g = torch.Generator().manual_seed(0 if seed is None else int(seed))
        state = 0.1 * torch.randn(n, self.obs_dim, generator=g)
        return {"state": state, "observation": state}

    def step(self, state, action):
        nxt = torch.tanh(state + 0.1 * self.net(torch.cat([state, action], -1)))
        return {
            "state": nxt,
            "observation": nxt,
            "reward": self.reward_head(nxt).squeeze(-1),
            "terminated": nxt[:, 0] > 0.9,
        }
