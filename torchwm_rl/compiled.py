"""``compile=True``: the model's hooks of a step run through ``torch.compile``.

What is compiled: the transition (the model or ``transition_fn``), ``reward_fn``, ``terminal_fn``
and ``continue_fn``, each as one graph (``fullgraph=True``, static shapes), on every path (the
adapter calls them). On CUDA with ``mode="reduce-overhead"`` (CUDA graphs); the outputs are then
cloned out of the graph's static memory before the env keeps them (the next replay overwrites
that memory). The env's own bookkeeping around the hooks (return-form parsing, casts, checks,
time limits, resets) stays eager: it is Python over the hooks' outputs, with graph breaks that
would cost more than they save.

A hook that cannot be compiled (a graph break ``fullgraph=True`` refuses: code dynamo cannot
trace, ``torch._dynamo.graph_break()``; a backend failure) gets ONE warning naming the hook and
the reason, and runs uncompiled from then on: the same numbers as without ``compile=True``.
(torch 2.13 traces ``.item()`` and numpy calls correctly, so those compile.) Compiled and
uncompiled steps agree to float rounding (the compiler may fuse and reorder float ops), not
bit for bit.
Random draws (``torch.randn`` in a stochastic model) are eager's own for the same seed
(inductor's ``fallback_random``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch


#: the adapter's hooks a step calls, compiled by ``compile=True``
STEP_HOOKS = ("transition_hook", "reward_hook", "terminal_hook", "continue_hook")


def compile_hooks(adapter: Any, **options: Any) -> None:
    """Make the step's hooks of ``adapter`` (a :class:`~torchwm_rl.adapter.ModelAdapter`) call
    their functions through :class:`CompiledCall` (their bindings, made from the functions'
    signatures, are kept). ``options`` go to ``torch.compile`` (``mode=``, ``backend=``, ...)."""
    for name in STEP_HOOKS:
        hook = getattr(adapter, name)
        if hook is not None:
            eager = hook.fn.eager if isinstance(hook.fn, CompiledCall) else hook.fn
            hook.fn = CompiledCall(eager, hook.name, adapter.device, **options)


def eager_hooks(adapter: Any) -> None:
    """Undo :func:`compile_hooks`: the hooks call their own functions again."""
    for name in STEP_HOOKS:
        hook = getattr(adapter, name)
        if hook is not None and isinstance(hook.fn, CompiledCall):
            hook.fn = hook.fn.eager


def _compile_errors() -> tuple:
    """The exceptions that mean "this function cannot be compiled" (not an error of its own)."""
    from torch._dynamo import exc

    return (exc.TorchDynamoException,)


class CompiledCall:
    """``fn`` through ``torch.compile(fullgraph=True, dynamic=False)`` (``mode="reduce-overhead"``
    on CUDA); the first compile failure warns once (naming ``name``) and switches to ``fn`` itself
    for good. Pickles (and copies) as ``fn`` with the same settings: the compiled code is rebuilt
    where it is used."""

    def __init__(self, fn: Callable, name: str, device: Any, **options: Any):
        self.eager = fn
        self.name = name
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.options = options
        settings = {"fullgraph": True, "dynamic": False, "mode": "reduce-overhead" if self.device.type == "cuda" else None,
                    **options}
        self.cuda = self.device.type == "cuda" and settings["mode"] in ("reduce-overhead", "max-autotune")
        self.compiled: Any = torch.compile(fn, **_same_random_numbers(settings))

    def __reduce__(self):
        return (_rebuild, (self.eager, self.name, self.device, self.options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self.compiled
        if compiled is None:
            return self.eager(*args, **kwargs)
        try:
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            out = compiled(*args, **kwargs)
        except _compile_errors() as err:
            self.compiled = None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"compile=True: {self.name} cannot be compiled ({type(err).__name__}: {reason}); it runs "
                "uncompiled (the same numbers as compile=False). A hook compiles when torch.compile can trace it "
                "as one graph (fullgraph=True): the reason above names what it cannot",
                RuntimeWarning, stacklevel=2,
            )
            return self.eager(*args, **kwargs)
        if self.cuda:  # CUDA graphs' outputs live in memory the next replay overwrites
            out = torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, out)
        return out


def _same_random_numbers(settings: dict) -> dict:
    """``settings`` for inductor with ``fallback_random=True``: its own random kernels draw other
    numbers than eager's for the same seed, so a stochastic model (``torch.randn`` in the
    transition) would give other samples compiled, silently; the fallback kernels draw eager's.
    ``torch.compile`` takes ``mode`` or ``options``, not both: a mode becomes its options
    (``torch._inductor.list_mode_options``). Other backends are left as given."""
    if settings.get("backend", "inductor") != "inductor":
        return settings
    settings = dict(settings)
    mode = settings.pop("mode", None)
    options = dict(settings.pop("options", None) or {})
    if mode is not None:
        from torch._inductor import list_mode_options

        options = {**list_mode_options(mode, settings.get("dynamic")), **options}
    options.setdefault("fallback_random", True)
    return {**settings, "options": options}


def _rebuild(fn: Callable, name: str, device: Any, options: dict) -> CompiledCall:
    return CompiledCall(fn, name, device, **options)
