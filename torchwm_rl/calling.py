"""Call user callables with as many arguments as they declare.

Every adapter hook has a *full* argument list, e.g. ``transition_fn(model, state, action)``.
A user callable may declare fewer positional parameters; it then receives the trailing ones
(``fn(state, action)`` drops the model). If its first parameter is named ``model`` (or
``self``/``m``), it receives the model followed by the trailing rest, so
``terminal_fn(model, next_state)`` works too. ``*args`` receives everything.

When the hook's argument names are known (``state``, ``action``, ``next_state``) and every
parameter the callable needs is named like one of them, arguments are matched by NAME instead:
``reward_fn(state, action)`` gets the state and action (not the trailing action and next
state), and ``reward_fn(next_state, action)`` gets them in its own order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_MODEL_NAMES = ("model", "world_model", "wm", "m")


@dataclass(frozen=True)
class CallPlan:
    """How many positional arguments a callable takes and which keywords it accepts."""

    n_positional: int  # -1: *args, takes everything
    n_required: int  # positional parameters without a default
    positional_names: tuple
    wants_model: bool
    keywords: frozenset  # accepted keyword names; contains "**" for **kwargs


def _signature(fn: Callable) -> inspect.Signature | None:
    target = fn
    forward = getattr(fn, "forward", None)
    # torch.nn.Module.__call__ is (*args, **kwargs): the real contract is forward's.
    if forward is not None and callable(forward) and hasattr(fn, "_call_impl"):
        target = forward
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def plan_call(fn: Callable) -> CallPlan:
    """Inspect ``fn`` once; the result is reused for every call."""
    sig = _signature(fn)
    if sig is None:
        return CallPlan(-1, 0, (), False, frozenset({"**"}))
    positional = []
    keywords = set()
    var_positional = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p)
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                keywords.add(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            var_positional = True
        elif p.kind is p.KEYWORD_ONLY:
            keywords.add(p.name)
        elif p.kind is p.VAR_KEYWORD:
            keywords.add("**")
    wants_model = bool(positional) and positional[0].name in _MODEL_NAMES
    return CallPlan(
        n_positional=-1 if var_positional else len(positional),
        n_required=sum(1 for p in positional if p.default is p.empty),
        positional_names=tuple(p.name for p in positional),
        wants_model=wants_model,
        keywords=frozenset(keywords),
    )


def call_with_declared(
    fn: Callable,
    plan: CallPlan,
    model: Any,
    args: Sequence[Any],
    kwargs: dict | None = None,
    *,
    pass_model: bool = True,
    arg_names: Sequence[str] = (),
) -> Any:
    """Call ``fn`` with ``(model, *args)`` trimmed to what it declares.

    ``pass_model=False`` is for bound methods of the model itself (the model is ``self``).
    Keyword arguments are passed only when ``fn`` accepts them by name or via ``**kwargs``;
    positional parameters named like a keyword (``seed``, ``options``) are not filled
    positionally, so ``reset(model, seed=None, options=None)`` receives the model only, and
    positional parameters with defaults are left to their defaults.
    """
    kwargs = kwargs or {}
    accepted = {k: v for k, v in kwargs.items() if k in plan.keywords or "**" in plan.keywords}
    full = [model, *args] if pass_model else list(args)
    if plan.n_positional < 0:
        return fn(*full, **accepted)
    # Parameters with defaults are optional extras (``deterministic=True``): fill only the
    # required ones, unless every parameter has a default.
    free = [n for n in plan.positional_names if n not in accepted]
    n = plan.n_required if plan.n_required else len(free)
    n = min(n, len(free))
    if arg_names and n:
        by_name = _match_names(free[:n], plan.wants_model and pass_model, model, args, arg_names)
        if by_name is not None:
            return fn(*by_name, **accepted)
    if n >= len(full):
        chosen = full
    elif pass_model and plan.wants_model and n >= 1:
        chosen = [model, *full[len(full) - (n - 1):]] if n > 1 else [model]
    else:
        chosen = full[len(full) - n:] if n else []
    return fn(*chosen, **accepted)


def _match_names(names: Sequence[str], wants_model: bool, model: Any, args: Sequence[Any],
                 arg_names: Sequence[str]) -> list | None:
    """``args`` picked by parameter name (``arg_names[i]`` names ``args[i]``); None unless every
    name (after a leading model parameter) is one of ``arg_names``."""
    head = [model] if wants_model else []
    rest = names[1:] if wants_model else names
    if not rest or any(name not in arg_names for name in rest):
        return None
    return head + [args[list(arg_names).index(name)] for name in rest]
