"""Posterior latents from real frames: the start states of a latent (Dreamer-style) world model.

``encode_frames(model, frames, actions=None, burn_in=None)`` runs the model's posterior filter
over a batch of real frame sequences and returns the latent after the last frame, a
``TensorDict`` with batch ``[B]``, usable as ``WorldModelEnv(..., start_states=...)`` rows or as
the state a ``reset(td, set_state=True)`` starts from.

The model protocol it needs (a user's own RSSM can follow it):

* ``model.frame_shape``: the raw frame shape ``(H, W, 3)`` the model was trained on (the
  ``rgb_array`` render of the real env; uint8, channel-last);
* ``model.preprocess(frames)``: raw uint8 frames ``[..., H, W, 3]`` -> the encoder's input;
* ``model.initial_latent(batch)``: the latent before any frame, a TensorDict with batch ``[batch]``;
* ``model.observe(latent, action, frame)``: one posterior update, ``latent [B]``, the action
  taken since the previous frame (``None`` for the first frame of a sequence: there is none),
  ``frame`` one preprocessed frame per row; returns the new latent ``[B]``.

Frames are checked once, here, before any model call (see :func:`check_frames`).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np
import torch
from tensordict import TensorDictBase

__all__ = ["check_frames", "encode_frames"]


def check_frames(frames: Any, frame_shape: tuple, where: str = "encode_frames") -> torch.Tensor:
    """``frames`` as a uint8 tensor ``[..., H, W, 3]`` with ``(H, W, 3) == frame_shape``.

    Refuses (ValueError/TypeError naming the expected shape and dtype) another dtype, a
    channel-first layout ``[..., 3, H, W]`` and another frame size: a resized or float frame
    would be encoded into a wrong latent without any error otherwise.
    """
    frame_shape = tuple(int(s) for s in frame_shape)
    expected = f"uint8 frames of shape [..., {', '.join(map(str, frame_shape))}] (the real env's rgb_array render)"
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{where}: frames must be a numpy array or tensor of {expected}; got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"{where}: frames must be {expected}; got dtype {frames.dtype}. Pass the render's uint8 "
                        "values as they are (not scaled to [0, 1])")
    shape = tuple(frames.shape)
    channels = frame_shape[-1]
    if shape[-3:] != frame_shape:
        if len(shape) >= 3 and shape[-3] == channels and shape[-2:] == frame_shape[:2]:
            raise ValueError(f"{where}: frames are channel-first {list(shape)}; expected {expected}. "
                             "Move the channel last: frames.permute(..., 2, 3, 1) / np.moveaxis(frames, -3, -1)")
        raise ValueError(f"{where}: expected {expected}; got shape {list(shape)}")
    return frames


def encode_frames(model: Any, frames: Any, actions: Any = None, burn_in: Optional[int] = None) -> TensorDictBase:
    """The posterior latent after each sequence's last frame, a TensorDict with batch ``[B]``.

    Args:
        model: follows the protocol in the module docs.
        frames: raw uint8 ``[B, K, H, W, 3]`` (K >= 1 frames per sequence, channel-last).
        actions: the actions taken between the frames, ``[B, K - 1]`` (indices) or
            ``[B, K - 1, A]`` (one-hot / continuous); required when K > 1.
        burn_in: filter only the last ``burn_in`` frames (default: all K). The first filtered
            frame starts from ``model.initial_latent`` with no action, as at an episode start.

    It is exactly: ``z = initial_latent(B); z = observe(z, None, x[:, s]); z = observe(z,
    a[:, t - 1], x[:, t])`` for ``t = s + 1 .. K - 1`` with ``s = K - burn_in``.
    """
    frames = check_frames(frames, model.frame_shape)
    if frames.ndim != 5:
        raise ValueError(f"encode_frames: frames must be [B, K, {', '.join(map(str, model.frame_shape))}] "
                         f"(a batch of sequences); got shape {list(frames.shape)}. A single frame per row "
                         "is frames[:, None]")
    batch, k = frames.shape[:2]
    if k == 0:
        raise ValueError("encode_frames: each sequence needs at least one frame (K >= 1); got K = 0")
    if burn_in is not None and (isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral)
                                or not 1 <= burn_in <= k):
        raise ValueError(f"encode_frames: burn_in must be in [1, K={k}] (an int; None filters all K frames); "
                         f"got {burn_in!r}")
    start = 0 if burn_in is None else k - int(burn_in)
    if k > 1:
        if actions is None:
            raise ValueError(f"encode_frames: {k} frames per sequence need the {k - 1} actions taken between them "
                             f"(actions of shape [{batch}, {k - 1}])")
        actions = torch.as_tensor(actions)
        if tuple(actions.shape[:2]) != (batch, k - 1):
            raise ValueError(f"encode_frames: actions must be [B={batch}, K-1={k - 1}, ...] (one per gap between "
                             f"frames); got shape {list(actions.shape)}")
    with torch.no_grad():
        x = model.preprocess(frames)
        latent = model.initial_latent(batch)
        latent = model.observe(latent, None, x[:, start])
        for t in range(start + 1, k):
            latent = model.observe(latent, actions[:, t - 1], x[:, t])
    return latent
