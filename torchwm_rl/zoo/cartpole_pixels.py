"""A Dreamer-style latent world model of Gymnasium ``CartPole-v1`` learned from its rendered frames.

What the encoder sees comes only from ``CartPole-v1``'s ``rgb_array`` render (400x600x3 uint8),
through :func:`preprocess` (crop to the band where cart and pole live, grayscale, invert, 5x5
box-filter downsample to ``1 x 32 x 120`` uint8). The model (:class:`PixelRSSM`) is an RSSM:

* latent = ``{"deter": GRU state [..., D], "stoch": Gaussian sample [..., S]}`` (a TensorDict);
* ``imagine(latent, action)``: the prior step (GRU on ``[stoch, one_hot(action)]``, then the prior);
* ``observe(latent, action, frame)``: the posterior step (the same GRU step, then the posterior
  from ``[deter, encoder(frame)]``); ``action=None`` is an episode's first frame;
* heads on ``features(latent) = cat(deter, stoch)``: a conv decoder (the frame), a reward head and
  a continue head (:meth:`PixelRSSM.continue_prob`, the probability the episode goes on).

``make_env`` builds a :class:`torchwm_rl.WorldModelEnv` whose state is the latent, whose
observation is the feature vector (``observation="latent"``), the decoded frame
(``"pixels"``, uint8 ``[1, 32, 120]``, channel-first like SB3's ``CnnPolicy`` expects) or both
(``"both"``, a Dict space), and whose starts are posterior latents of real reset frames (a bank
stored in the weights file, so building the env renders nothing; see :mod:`torchwm_rl.latent`
to encode your own). Training (``torchwm-rl train-model cartpole-pixels``) lives in
:mod:`torchwm_rl.zoo.cartpole_pixels_train`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional

import torch
from tensordict import TensorDict
from torch import nn
from torch.nn import functional as F

N_ACTIONS = 2
FRAME_SHAPE = (400, 600, 3)  # CartPole-v1's rgb_array render
CROP_ROWS = (160, 320)  # the band holding the track, the cart and the (upright or fallen) pole
POOL = 5  # 160 x 600 -> 32 x 120
IMAGE_SHAPE = (1, (CROP_ROWS[1] - CROP_ROWS[0]) // POOL, FRAME_SHAPE[1] // POOL)
OBSERVATIONS = ("latent", "pixels", "both")
ACTIONS = ("index", "one_hot")
WEIGHTS_PATH = Path(__file__).with_name("cartpole_pixels.safetensors")
DEFAULT_CONFIG = {"deter": 128, "stoch": 16, "hidden": 128, "depth": 8}
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights


def preprocess(frames: torch.Tensor) -> torch.Tensor:
    """Raw CartPole frames ``[..., 400, 600, 3]`` uint8 -> model frames ``[..., 1, 32, 120]`` uint8.

    Crop rows 160:320, grayscale (ITU-R 601), invert (background 0, cart and pole bright), then
    average 5x5 blocks (a box filter: the antialiased downsample) and round. The one transform
    used by training, :func:`torchwm_rl.latent.encode_frames` and the reality check.
    """
    from ..latent import check_frames

    frames = check_frames(frames, FRAME_SHAPE, "cartpole_pixels.preprocess")
    lead = frames.shape[:-3]
    band = frames[..., CROP_ROWS[0]:CROP_ROWS[1], :, :].reshape(-1, CROP_ROWS[1] - CROP_ROWS[0], FRAME_SHAPE[1], 3)
    gray = band.float() @ torch.tensor(_GRAY)
    small = F.avg_pool2d((255.0 - gray)[:, None], POOL)
    return small.round().clamp(0, 255).to(torch.uint8).reshape(*lead, *IMAGE_SHAPE)


def render_frames_headless() -> None:
    """Let pygame render with no display (``SDL_VIDEODRIVER=dummy`` unless the user set one)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.SiLU(), nn.Linear(hidden, out))


def _gaussian(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, raw = stats.chunk(2, -1)
    return mean, F.softplus(raw) + 0.1


class PixelRSSM(nn.Module):
    """The RSSM (see the module docs). Latents are TensorDicts ``{"deter", "stoch"}``, batch ``[B]``.

    Frames given to :meth:`observe` / :meth:`encode` are :func:`preprocess` output (uint8 or
    float in 0..255); :meth:`decode` returns the same form (uint8). Without a ``generator``,
    :meth:`imagine` / :meth:`observe` take the Gaussian's mean (a deterministic filter); with one,
    they sample from it.
    """

    frame_shape = FRAME_SHAPE
    image_shape = IMAGE_SHAPE
    n_actions = N_ACTIONS

    def __init__(self, deter: int = 128, stoch: int = 16, hidden: int = 128, depth: int = 8):
        super().__init__()
        self.config = {"deter": deter, "stoch": stoch, "hidden": hidden, "depth": depth}
        self.deter_size, self.stoch_size = deter, stoch
        d = depth
        self._conv_shape = (4 * d, IMAGE_SHAPE[1] // 8, IMAGE_SHAPE[2] // 8)
        flat = 4 * d * self._conv_shape[1] * self._conv_shape[2]
        self.encoder = nn.Sequential(
            nn.Conv2d(1, d, 4, 2, 1), nn.SiLU(), nn.Conv2d(d, 2 * d, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * d, 4 * d, 4, 2, 1), nn.SiLU(), nn.Flatten(), nn.Linear(flat, hidden), nn.SiLU(),
        )
        self.img_in = nn.Sequential(nn.Linear(stoch + N_ACTIONS, hidden), nn.SiLU())
        self.gru = nn.GRUCell(hidden, deter)
        self.prior_net = _mlp(deter, hidden, 2 * stoch)
        self.post_net = _mlp(deter + hidden, hidden, 2 * stoch)
        self.dec_in = nn.Linear(deter + stoch, flat)
        self.decoder = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(4 * d, 2 * d, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(2 * d, d, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(d, 1, 4, 2, 1),
        )
        self.reward_head = _mlp(deter + stoch, hidden, 1)
        self.continue_head = _mlp(deter + stoch, hidden, 1)
        # posterior latents of real reset frames (make_env's start bank; filled by train)
        self.register_buffer("start_deter", torch.zeros(0, deter))
        self.register_buffer("start_stoch", torch.zeros(0, stoch))

    # ---------------------------------------------------------------- protocol (torchwm_rl.latent)
    preprocess = staticmethod(preprocess)

    @property
    def feature_size(self) -> int:
        return self.deter_size + self.stoch_size

    def _device(self) -> torch.device:
        return self.gru.weight_hh.device

    def initial_latent(self, batch: int) -> TensorDict:
        """The latent before any frame: zeros, batch ``[batch]``."""
        dev = self._device()
        return TensorDict({"deter": torch.zeros(batch, self.deter_size, device=dev),
                           "stoch": torch.zeros(batch, self.stoch_size, device=dev)}, batch_size=[batch], device=dev)

    def one_hot(self, action: Optional[torch.Tensor], batch: tuple) -> torch.Tensor:
        """Actions (indices ``[*batch]`` / ``[*batch, 1]`` or one-hot ``[*batch, 2]``; ``None``: no
        action, zeros) -> float one-hot ``[*batch, 2]``."""
        if action is None:
            return torch.zeros(*batch, N_ACTIONS, device=self._device())
        action = torch.as_tensor(action, device=self._device())
        if action.ndim == len(batch) + 1 and action.shape[-1] == N_ACTIONS:
            return action.float()
        if action.ndim == len(batch) + 1 and action.shape[-1] == 1:
            action = action[..., 0]
        return F.one_hot(action.long(), N_ACTIONS).float()

    def _deter_step(self, latent, action) -> torch.Tensor:
        deter, stoch = latent["deter"], latent["stoch"]
        lead = deter.shape[:-1]
        inp = self.img_in(torch.cat([stoch, self.one_hot(action, tuple(lead))], -1))
        return self.gru(inp.reshape(-1, inp.shape[-1]), deter.reshape(-1, self.deter_size)).reshape(*lead, -1)

    @staticmethod
    def _draw(mean, std, generator) -> torch.Tensor:
        if generator is None:
            return mean
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)

    def _latent(self, deter, stoch) -> TensorDict:
        return TensorDict({"deter": deter, "stoch": stoch}, batch_size=deter.shape[:-1], device=deter.device)

    def encode(self, frame: torch.Tensor) -> torch.Tensor:
        """Preprocessed frames ``[*B, 1, 32, 120]`` -> embeddings ``[*B, hidden]``."""
        x = frame.to(self._device(), torch.float32) / 255.0
        lead = x.shape[:-3]
        return self.encoder(x.reshape(-1, *IMAGE_SHAPE)).reshape(*lead, -1)

    def imagine(self, latent, action, generator: Optional[torch.Generator] = None) -> TensorDict:
        """One prior step: the latent after taking ``action`` (no frame seen)."""
        deter = self._deter_step(latent, action)
        mean, std = _gaussian(self.prior_net(deter))
        return self._latent(deter, self._draw(mean, std, generator))

    def observe(self, latent, action, frame, generator: Optional[torch.Generator] = None) -> TensorDict:
        """One posterior step: the latent after ``action`` (``None``: a first frame) and seeing ``frame``."""
        deter = self._deter_step(latent, action)
        mean, std = _gaussian(self.post_net(torch.cat([deter, self.encode(frame)], -1)))
        return self._latent(deter, self._draw(mean, std, generator))

    # ---------------------------------------------------------------- heads
    @staticmethod
    def features(latent) -> torch.Tensor:
        """The policy's input: ``cat(deter, stoch)`` ``[*B, D + S]``."""
        return torch.cat([latent["deter"], latent["stoch"]], -1)

    def decode_float(self, feat: torch.Tensor) -> torch.Tensor:
        """Features ``[*B, F]`` -> the decoded frame as float (0..1 scale) ``[*B, 1, 32, 120]``."""
        lead = feat.shape[:-1]
        h = self.dec_in(feat.reshape(-1, feat.shape[-1])).reshape(-1, *self._conv_shape)
        return self.decoder(h).reshape(*lead, *IMAGE_SHAPE)

    def decode(self, latent) -> torch.Tensor:
        """The decoded frame, uint8 ``[*B, 1, 32, 120]`` (channel-first, :func:`preprocess`'s form).
        A non-finite latent decodes to a (finite) uint8 image: check latents, not frames."""
        img = self.decode_float(self.features(latent)) * 255.0
        return img.nan_to_num(0.0).round().clamp(0, 255).to(torch.uint8)

    def reward(self, latent) -> torch.Tensor:
        """Predicted reward ``[*B]``."""
        return self.reward_head(self.features(latent))[..., 0]

    def continue_logit(self, latent) -> torch.Tensor:
        return self.continue_head(self.features(latent))[..., 0]

    def continue_prob(self, latent) -> torch.Tensor:
        """Probability that the episode goes on after reaching ``latent`` ``[*B]`` (Dreamer's
        continue head; 1 - P(terminated))."""
        return torch.sigmoid(self.continue_logit(latent))

    def start_latents(self) -> TensorDict:
        """The stored bank of posterior latents of real reset frames, batch ``[M]``."""
        return self._latent(self.start_deter, self.start_stoch)


# ------------------------------------------------------------------------------------------------
# training (delegated), loading and env construction
# ------------------------------------------------------------------------------------------------


#: where :func:`torchwm_rl.zoo.train_model` finds this model's ``train(seed, verbose, **kwargs)``
#: (data collection and fitting live in their own module, which imports this one)
TRAIN_MODULE = "torchwm_rl.zoo.cartpole_pixels_train"


def load(path: str | Path | None = None, device: str | torch.device | None = None) -> PixelRSSM:
    """Load the bundled (or a given) cartpole-pixels weights file; an eval-mode, grad-free module."""
    from ..serialization import WeightsFormatError, load_weights, read_metadata

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"cartpole-pixels model file not found: {path}. Create it with "
                                "`torchwm-rl train-model cartpole-pixels`.")
    sd = load_weights(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    if "gru.weight_hh" not in sd:
        raise WeightsFormatError(f"{path}: not a cartpole-pixels model: no 'gru.weight_hh' tensor "
                                 f"(found {sorted(sd)[:5]})")
    config = {k: int(meta.get(k, v)) for k, v in DEFAULT_CONFIG.items()}
    model = PixelRSSM(**config)
    model.start_deter = torch.empty_like(sd["start_deter"])
    model.start_stoch = torch.empty_like(sd["start_stoch"])
    model.load_state_dict(sd)
    model.metadata = meta
    model.requires_grad_(False)
    return model.eval().to(device) if device is not None else model.eval()


def observation_of(model: PixelRSSM, latent, observation: str = "latent"):
    """The env's observation of ``latent``: features, decoded frame, or ``{"latent", "pixels"}``."""
    if observation == "latent":
        return model.features(latent)
    if observation == "pixels":
        return model.decode(latent)
    if observation == "both":
        return {"latent": model.features(latent), "pixels": model.decode(latent)}
    raise ValueError(f"cartpole-pixels: observation must be one of {OBSERVATIONS}; got {observation!r}")


def start_bank(model: PixelRSSM, latents, observation: str = "latent") -> dict:
    """A ``start_states=`` bank ``{"observation", "state"}`` from posterior latents (batch ``[M]``,
    e.g. :func:`torchwm_rl.latent.encode_frames` output)."""
    device = model._device()
    deter, stoch = torch.as_tensor(latents["deter"], device=device), torch.as_tensor(latents["stoch"], device=device)
    if (deter.ndim != 2 or stoch.ndim != 2 or deter.shape[0] != stoch.shape[0] or deter.shape[1] != model.deter_size
            or stoch.shape[1] != model.stoch_size):
        raise ValueError(f"cartpole-pixels start latents: 'deter' and 'stoch' must be [M, {model.deter_size}] and "
                         f"[M, {model.stoch_size}] with the same M (row i of each is one start); got "
                         f"{list(deter.shape)} and {list(stoch.shape)}")
    # a NaN latent decodes to a finite uint8 image: the bank's observation check would not see it
    bad = ~(torch.isfinite(deter).all(-1) & torch.isfinite(stoch).all(-1))
    if bool(bad.any()):
        raise ValueError(f"cartpole-pixels start latents: NaN/inf in 'deter'/'stoch' at row(s) "
                         f"{bad.nonzero().flatten().tolist()}")
    with torch.no_grad():
        state = TensorDict({"deter": deter, "stoch": stoch}, batch_size=deter.shape[:1])
        return {"observation": observation_of(model, state, observation), "state": state}


def _checked_one_hot(action: torch.Tensor) -> torch.Tensor:
    """``action`` ``[*B, 2]`` as given (its graph kept) once every row is one-hot in value.

    A straight-through sample is ``one_hot + p - p.detach()``: one-hot up to float rounding
    (``1 - 6e-8``), which is accepted; a soft row (``[0.3, 0.7]``) is refused, not fed to a model
    trained on one-hot actions only."""
    action = torch.as_tensor(action)
    rows = action.detach().reshape(-1, action.shape[-1]) if action.ndim else action.detach()
    if rows.ndim != 2 or rows.shape[-1] != N_ACTIONS:
        return action  # not one-hot shaped: the env's own shape check refuses it, naming the shape
    hard = rows.round()
    bad = ((rows - hard).abs() > 1e-4).any(-1) | ((hard != 0) & (hard != 1)).any(-1) | (hard.sum(-1) != 1)
    if bool(bad.any()):  # the opt-in one-hot path's one host read per step
        idx = bad.nonzero().flatten()[:5]
        raise ValueError(f"cartpole-pixels action='one_hot': every action row must be one-hot ([1, 0] or [0, 1]); "
                         f"got {rows[idx].tolist()} at row(s) {idx.tolist()}. Sample a one-hot action (e.g. "
                         "TorchRL's OneHotCategorical, straight-through), or use action='index' for integers")
    return action


def make_env(
    model: PixelRSSM | None = None,
    batch_size: int | tuple = (),
    seed: int | None = 0,
    max_episode_steps: int = 500,
    device: str | torch.device | None = None,
    observation: str = "latent",
    start_latents=None,
    sample: bool = True,
    differentiable: bool = False,
    action: str = "index",
    state_key: str = "model_state",
    **options: Any,
):
    """A :class:`torchwm_rl.WorldModelEnv` imagining CartPole in the model's latent space.

    Args:
        observation: ``"latent"`` (features ``[D + S]`` float32), ``"pixels"`` (decoded frame,
            uint8 ``[1, 32, 120]``) or ``"both"`` (a Dict space with those two keys).
        start_latents: posterior latents (batch ``[M]``) to sample each reset from (default: the
            model's bank of encoded real reset frames); see :func:`torchwm_rl.latent.encode_frames`.
        sample: draw each imagined step's stochastic latent from the prior with the env's
            generator (Dreamer's imagination); ``False`` takes the prior mean.
        differentiable: ``False`` (default) runs the step hooks under ``torch.no_grad()`` (no
            graph, nothing to pay for it). ``True`` keeps the autograd graph through the imagined
            latents: the latent, the observation, ``("next", "reward")`` and
            ``("next", "continue_prob")`` depend on the actions differentiably (the stochastic draw
            is reparameterised, ``mean + std * noise`` with the noise from the env's generator), for
            losses that backpropagate through imagination (TorchRL's Dreamer losses, under
            ``hold_out_net(env)`` so the world model itself gets no gradient). The caller's grad
            mode still decides: under ``torch.no_grad()`` (and on the Gymnasium/SB3 exports) there
            is no graph. Reset observations and ``render()`` never carry a graph.
        action: ``"index"`` (default: ``Discrete(2)``, an integer per env) or ``"one_hot"``
            (``Box(0, 1, (2,))`` float32, a one-hot row per env: the form a straight-through
            sample takes, e.g. TorchRL's ``OneHotCategorical`` with
            ``grad_method=ReparamGradientStrategy.PassThrough``, so gradients reach the policy
            through the model only with this and ``differentiable=True``). A one-hot action whose
            values are not one-hot (a soft mixture such as ``[0.3, 0.7]``) is refused naming the
            rows: the model was trained on one-hot actions only. That check reads the host once
            per step (this opt-in path only).
        state_key: the root key of the latent on the TorchRL path (``"state"`` for TorchRL's
            Dreamer losses, with ``actor_loss.set_keys(belief="state")``; see ``WorldModelEnv``).
        options: further :class:`torchwm_rl.WorldModelEnv` keywords (``nan_policy``, ...).

    Reward is the reward head. The continue head is the env's ``continue_fn``: ``terminated`` is drawn
    from ``continue_prob(next_latent)`` with the env's generator, or, with ``continue_threshold=t``,
    is ``continue_prob < t``; the probability is reported as ``("next", "continue_prob")``.
    """
    import gymnasium as gym
    import numpy as np

    from .. import WorldModelEnv

    if observation not in OBSERVATIONS:
        raise ValueError(f"cartpole-pixels make_env: observation must be one of {OBSERVATIONS}; got {observation!r}")
    if action not in ACTIONS:
        raise ValueError(f"cartpole-pixels make_env: action must be one of {ACTIONS}; got {action!r}")
    if model is None:
        model = load(device=device)
    if isinstance(batch_size, int):
        batch_size = (batch_size,)
    latent_space = gym.spaces.Box(-np.inf, np.inf, (model.feature_size,), np.float32)
    pixel_space = gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8)
    space = {"latent": latent_space, "pixels": pixel_space,
             "both": gym.spaces.Dict({"latent": latent_space, "pixels": pixel_space})}[observation]
    one_hot_actions = action == "one_hot"
    action_space = (gym.spaces.Box(0.0, 1.0, (N_ACTIONS,), np.float32) if one_hot_actions
                    else gym.spaces.Discrete(N_ACTIONS))
    latents = model.start_latents() if start_latents is None else start_latents
    if len(latents["deter"]) == 0:
        raise ValueError("cartpole-pixels make_env: the model has no start bank; pass start_latents= "
                         "(torchwm_rl.latent.encode_frames of real reset frames)")

    # differentiable=True: the caller's grad mode decides (a graph in a loss, none under the
    # Gymnasium/SB3 exports' no_grad or the user's); otherwise never a graph
    grad_mode = contextlib.nullcontext if differentiable else torch.no_grad

    def transition(model, state, action, *, generator):
        if one_hot_actions:
            action = _checked_one_hot(action)
        with grad_mode():
            latent = model.imagine(state, action, generator if sample else None)
            return {"state": latent, "observation": observation_of(model, latent, observation)}

    # every step hook takes ``generator`` (even unused): the env then leaves torch's global RNG alone
    def reward(model, next_state, obs, action, *, generator):
        with grad_mode():
            return model.reward(next_state)

    def continue_prob(model, next_state, obs, action, *, generator):
        with grad_mode():
            return model.continue_prob(next_state)

    def decode(model, state):
        with torch.no_grad():
            return observation_of(model, state, observation)

    def render(model, state, obs):
        with torch.no_grad():
            frame = model.decode(state)
        return frame.movedim(-3, -1).expand(*frame.shape[:-3], *IMAGE_SHAPE[1:], 3).cpu().numpy()

    return WorldModelEnv(
        model, observation_space=space, action_space=action_space,
        transition_fn=transition, reward_fn=reward, continue_fn=continue_prob, render_fn=render, decode_fn=decode,
        start_states=start_bank(model, latents, observation),
        max_episode_steps=max_episode_steps, batch_size=tuple(batch_size), device=device, seed=seed,
        state_key=state_key, **options,
    )
