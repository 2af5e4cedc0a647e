"""Safe loading and saving of world-model weight files.

Contract
--------
``load_weights(path)`` returns a flat ``dict[str, torch.Tensor]`` (a state dict) and never runs
code stored in the file unless the caller explicitly says the file is trusted:

* ``*.safetensors``: read with :mod:`safetensors` (a pure tensor format; cannot carry code).
* anything else (``.pt``, ``.pth``, ``.bin``, ...): ``torch.load(..., weights_only=True)``, which
  only unpickles tensors and plain containers. A file that needs arbitrary unpickling (a pickled
  ``nn.Module``, a custom class, a lambda) is refused with :class:`UnsafeWeightsError`, whose
  message says how to opt in: ``load_weights(path, trust_code=True)`` (alias ``allow_pickle=True``).
* a file that is neither (truncated, text, random bytes) raises :class:`WeightsFormatError`.

``save_weights(state_dict, path, metadata=None)`` writes a safetensors file; ``read_metadata(path)``
returns its string metadata.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "WeightsError",
    "UnsafeWeightsError",
    "WeightsFormatError",
    "load_weights",
    "save_weights",
    "read_metadata",
]

_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


class WeightsError(ValueError):
    """Base class for every weight-file problem raised by this module."""


class UnsafeWeightsError(WeightsError):
    """The file needs arbitrary unpickling (it may run code) and the caller did not trust it."""


class WeightsFormatError(WeightsError):
    """The file is not a readable safetensors / torch weights file, or holds no state dict."""


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with an 8-byte little-endian header length then '{'.
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _is_pickle_stream(path: Path) -> bool:
    """True when the file starts with one complete, well-formed pickle (parsed, not executed)."""
    try:
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):
                pass
        return True
    except Exception:
        return False


def _first_line_mentioning(text: str, words: tuple) -> str:
    for line in text.splitlines():
        if any(w in line for w in words):
            return line.strip()[:200]
    return "refused by torch.load(weights_only=True)"


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a flat mapping of tensors, a ``{"state_dict": ...}`` wrapper, or an ``nn.Module``."""
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in _STATE_DICT_WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, torch.nn.Module)):
                return _as_state_dict(inner, path)
        bad = [f"{k!r}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise WeightsFormatError(
            f"{path}: expected a state dict (a mapping of names to tensors); "
            f"found non-tensor entries {bad[:5]}"
        )
    raise WeightsFormatError(
        f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}"
    )


def load_weights(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    trust_code: bool = False,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path`` without executing code (see module docstring).

    ``trust_code=True`` (or its alias ``allow_pickle=True``) permits full unpickling for a file
    you trust; a pickled ``nn.Module`` is then converted to its state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    trusted = bool(trust_code or allow_pickle)

    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise WeightsFormatError(f"{path}: not a valid safetensors file ({exc})") from exc

    if not zipfile.is_zipfile(path) and not _is_pickle_stream(path):
        raise WeightsFormatError(
            f"{path}: not a safetensors or torch weights file (neither a safetensors header, "
            "a torch zip archive nor a pickle stream)"
        )
    try:
        with warnings.catch_warnings():  # torch warns about protocol-4 pickles; not actionable here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted:
            detail = _first_line_mentioning(str(exc), ("global", "operand", "GLOBAL"))
            raise UnsafeWeightsError(
                f"{path} is not a plain weights file: loading it would unpickle arbitrary "
                f"Python objects, which can run code ({detail}). If you trust this file, load it "
                "with load_weights(path, trust_code=True) (alias allow_pickle=True); better, "
                "re-save it as a state dict or safetensors file."
            ) from exc
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:
            try:  # a bare pickle (not written by torch.save)
                with open(path, "rb") as fh:
                    obj = pickle.load(fh)
            except Exception:
                raise WeightsFormatError(f"{path}: could not unpickle ({exc2})") from exc2
    except Exception as exc:
        raise WeightsFormatError(
            f"{path}: not a safetensors or torch weights file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from exc
    return _as_state_dict(obj, path)


def save_weights(
    state_dict: Mapping[str, torch.Tensor] | torch.nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state_dict`` (or a module's) to a safetensors file; metadata values become strings.

    The file is created with the usual permissions (``0666`` less the umask, so ``0644``
    under the common umask ``022``); ``safetensors.torch.save_file`` would create it ``0600``.
    """
    from safetensors.torch import save

    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not state_dict:
        # load_weights refuses a file without tensors (it is no model): refuse to write one
        raise ValueError(f"save_weights: the state dict is empty; nothing to write to {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    data = save(tensors, metadata=meta)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the string metadata stored in a safetensors file (``{}`` when there is none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not _is_safetensors(path):
        raise WeightsFormatError(f"{path}: metadata is read from safetensors files only; this is not one")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise WeightsFormatError(f"{path}: not a valid safetensors file ({exc})") from exc
