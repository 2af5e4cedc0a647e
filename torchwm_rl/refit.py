"""Refitting a world model in place while envs step it, never half-loaded (MBPO's refit).

An env holds the user's model object itself (the ``world_model`` submodule on the TorchRL
path, the adapter's model on every path), so new weights written into that object in place
(``model.load_state_dict(new)``, an optimizer step, :class:`torchwm_rl.fitting.EnsembleTrainer`)
are what every env, export, collector or transformed env built on it steps at its next step:
no rebuild, nothing to re-register.

What must not happen is a refit that changes the model's structure. PyTorch's
``load_state_dict`` copies every entry whose shape matches and raises about the others only
at the end, so a caught error leaves a model that is half old, half new. An env's model gets
a load pre-hook (:func:`guard_structure`, once per model) that compares every incoming entry's
shape with the model's own BEFORE anything is copied, and refuses the whole load, naming each
entry, when one differs (a wider layer, another ensemble size). Missing and unexpected keys
stay PyTorch's business (``strict``).
"""

from __future__ import annotations

from typing import Any

import torch

_GUARDED = "_torchwm_rl_structure_guard"


def guard_structure(model: Any) -> None:
    """Install the shape check on ``model``'s ``load_state_dict`` (an ``nn.Module``; other
    models are left alone). Idempotent."""
    if not isinstance(model, torch.nn.Module) or getattr(model, _GUARDED, False):
        return
    model.register_load_state_dict_pre_hook(_refuse_structure_change)
    setattr(model, _GUARDED, True)


def _refuse_structure_change(module, state_dict, prefix, local_metadata, strict, missing_keys,
                             unexpected_keys, error_msgs) -> None:
    # runs before the module copies anything (nn.Module._load_from_state_dict calls its
    # pre-hooks first, and the root module loads before its children)
    changed = []
    for key, own in module.state_dict(keep_vars=True).items():
        incoming = state_dict.get(prefix + key)
        if isinstance(incoming, torch.Tensor) and isinstance(own, torch.Tensor) and incoming.shape != own.shape:
            changed.append(f"{prefix + key}: the model has {tuple(own.shape)}, the new weights {tuple(incoming.shape)}")
    if changed:
        raise ValueError(
            f"load_state_dict into a world model that an env steps would change its structure ({'; '.join(changed)}). "
            "Nothing was loaded: the env keeps stepping the old weights. Refit weights of the same shapes "
            "(same layer sizes, same ensemble size), or build a new env for a model of another structure"
        )
