"""The hook contract: which argument each parameter of a user hook receives, decided ONCE.

Every hook has TorchWM's positional argument list (:data:`CONTRACT`); the state and
observation a reward or terminal hook sees are the ones the step *reached*:

=======================  ==========================================  =============================
hook                     positional arguments                        extra inputs, by name only
=======================  ==========================================  =============================
``reset_fn``             ``(model, seed, options)``                  ``batch_size``, ``reset_mask``,
                                                                     ``generator``
``transition_fn``        ``(model, state, action)``                  ``generator``
``reward_fn``,           ``(model, next_state, obs, action)``        ``prev_state`` (the state before
``terminal_fn``,                                                     the step), ``generator``
``continue_fn``
``render_fn``            ``(model, state, obs)``
``action_transform_fn``  ``(model, action)``
``decode_fn``            ``(model, state)`` (TorchRL env only: the
                         observation of a given start state)
=======================  ==========================================  =============================

How a callable is bound (:func:`bind`, at construction; never per call):

1. **TorchWM's positional rule is the base.** A hook that declares ``k`` positional parameters
   gets the first ``k`` arguments of its list (``reward_fn(model, next_state)`` gets the model
   and the state reached); ``*args`` gets them all. A method of the model (the hook found on
   the model itself) gets the list without the model, and a transition method with one
   parameter gets the action, as in TorchWM.
2. **Names check it.** Each parameter whose name is a known name of an argument
   (:data:`NAMES`: ``state``/``s``/``latent``/``z``, ``obs``/``observation``/``o``,
   ``action``/``act``/``a``/``u``, ``model``/``self``/``m``, ...) must receive that argument.
   When every name agrees with the positional rule (or is unknown), the positional binding
   stands, so every signature that works in TorchWM binds exactly as there.
3. **Otherwise names decide**, when every parameter without a default names a distinct argument
   (``reward_fn(state, act)`` gets the state reached and the action; ``transition_fn(s, a=None)``
   the state and the action). Extra inputs are only ever given by name.
4. **Anything else is refused** with a ``TypeError`` naming the hook, the parameter and the
   accepted forms: a name that contradicts its position and cannot be bound by name, two
   parameters naming one argument, a required parameter with no argument left for it.

:meth:`Binding.describe` says how a hook was bound (``repr(env)`` and ``torchwm-rl check`` show
it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

#: TorchWM's positional argument list of each hook, and the inputs a hook may ask for by name.
CONTRACT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reset_fn": (("model", "seed", "options"), ("batch_size", "reset_mask", "generator")),
    "transition_fn": (("model", "state", "action"), ("generator",)),
    "reward_fn": (("model", "next_state", "obs", "action"), ("prev_state", "generator")),
    "terminal_fn": (("model", "next_state", "obs", "action"), ("prev_state", "generator")),
    # the probability of continuing (Dreamer's continue head), bound as terminal_fn
    "continue_fn": (("model", "next_state", "obs", "action"), ("prev_state", "generator")),
    "render_fn": (("model", "state", "obs"), ()),
    "action_transform_fn": (("model", "action"), ()),
    # the TorchRL env's reset from given model states: the observation of a state
    "decode_fn": (("model", "state"), ()),
}

_STATE_NAMES = ("state", "s", "latent", "z", "model_state")
#: Parameter names that identify an argument. In reward and terminal hooks ``state`` (and its
#: aliases) is the state the step reached, as in TorchWM; the state before is ``prev_state``.
NAMES: dict[str, tuple[str, ...]] = {
    "model": ("model", "world_model", "wm", "self", "m"),
    "state": _STATE_NAMES,
    "next_state": ("next_state", "next_s", "s_next", "next_latent", *_STATE_NAMES),
    "obs": ("obs", "observation", "o", "next_obs", "next_observation"),
    "action": ("action", "act", "a", "u", "actions"),
    "seed": ("seed",),
    "options": ("options", "opts"),
    "batch_size": ("batch_size",),
    "reset_mask": ("reset_mask",),
    "prev_state": ("prev_state", "state_before", "previous_state"),
    "generator": ("generator", "rng"),
}

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class Binding:
    """How one hook is called: ``positional`` lists the argument given to each positional
    parameter in order; ``keywords`` pairs keyword parameters with arguments."""

    hook: str
    target: str  # the callable's name, for messages
    positional: tuple[str, ...]
    keywords: tuple[tuple[str, str], ...]
    rule: str  # "positional (TorchWM)", "by name", "all arguments (*args)", ...
    params: tuple[str, ...] = ()  # the parameter names, in order, for describe()

    @property
    def wants(self) -> frozenset:
        """Every argument the hook receives."""
        return frozenset(self.positional) | frozenset(arg for _, arg in self.keywords)

    def args(self, values: Mapping[str, Any]) -> tuple[tuple, dict]:
        return (
            tuple(values[arg] for arg in self.positional),
            {name: values[arg] for name, arg in self.keywords},
        )

    def describe(self) -> str:
        """``reward_fn = reward(model<-model, s<-next_state) [positional (TorchWM)]``."""
        names = list(self.params) or [f"*{i}" for i in range(len(self.positional))]
        parts = [f"{name}<-{arg}" for name, arg in zip(names, self.positional)]
        parts += [f"{name}<-{arg}" for name, arg in self.keywords]
        return f"{self.hook} = {self.target}({', '.join(parts)}) [{self.rule}]"


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


def _target_name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return name.split(".")[-1] if "<lambda>" not in name else "<lambda>"


def accepted_forms(hook: str, on_model: bool = False) -> str:
    positional, extras = CONTRACT[hook]
    if on_model:
        positional = positional[1:]
    form = f"{hook}({', '.join(positional)})"
    extra = f"; by name also {', '.join(extras)}" if extras else ""
    return (
        f"{form}, any leading part of it (TorchWM's rule), or parameters named after those "
        f"arguments in any order{extra}"
    )


def bind(fn: Callable, hook: str, *, on_model: bool = False, label: str | None = None) -> Binding:
    """Decide how ``fn`` is called as ``hook`` (see the module docstring).

    ``on_model``: ``fn`` is a method of the model (bound, so the model is ``self``): its list
    has no model argument. Raises ``TypeError`` for a signature that cannot be bound
    unambiguously.
    """
    positional_args, extras = CONTRACT[hook]
    if on_model:
        positional_args = positional_args[1:]
    label = label or hook
    target = _target_name(fn)
    known = {name: arg for arg in (*positional_args, *extras) for name in NAMES[arg]}
    sig = _signature(fn)
    if sig is None:  # a builtin or extension callable: TorchWM passes every argument
        return Binding(label, target, positional_args, (), "all arguments (signature unreadable)")

    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY]
    keywords = _bind_keyword_only(keyword_only, known, label, target, hook, on_model)

    def refuse(why: str) -> TypeError:
        return TypeError(
            f"{label}: cannot bind {target}{sig}: {why}. Accepted: {accepted_forms(hook, on_model)}."
        )

    if var_positional:
        # TorchWM passes every argument through *args; named parameters before it must agree
        for i, p in enumerate(positional):
            arg = known.get(p.name)
            if i >= len(positional_args):
                raise refuse(f"parameter {p.name!r} comes after the {len(positional_args)} arguments")
            if arg is not None and arg != positional_args[i]:
                raise refuse(f"parameter {p.name!r} would receive {positional_args[i]!r}, not {arg!r}")
        return Binding(label, target, positional_args, keywords, "all arguments (*args)",
                       tuple(p.name for p in positional))

    # 1. TorchWM's positional rule
    if on_model and hook == "transition_fn" and len(positional) == 1:
        by_position = ("action",)  # TorchWM: a one-parameter transition method gets the action
    else:
        by_position = positional_args[: len(positional)]
    # 2. names check it
    disagree = [
        p for p, arg in zip(positional, by_position) if known.get(p.name) not in (None, arg)
    ]
    if not disagree:
        extra_params = positional[len(by_position):]
        extra_keywords = []
        for p in extra_params:
            arg = known.get(p.name)
            if arg is not None and arg in extras and p.kind is not p.POSITIONAL_ONLY:
                extra_keywords.append((p.name, arg))
            elif p.default is p.empty:
                raise refuse(f"parameter {p.name!r} has no argument left for it (the list has {len(positional_args)})")
        _check_distinct([*by_position, *(a for _, a in extra_keywords), *(a for _, a in keywords)], refuse)
        return Binding(label, target, by_position, (*extra_keywords, *keywords), "positional (TorchWM)",
                       tuple(p.name for p in positional[: len(by_position)]))

    # 3. names decide
    names_positional: list[str] = []
    names_keywords: list[tuple[str, str]] = []
    for p in positional:
        arg = known.get(p.name)
        if arg is None:
            if p.default is p.empty:
                first = disagree[0]
                raise refuse(
                    f"parameter {first.name!r} names {known[first.name]!r} but would receive "
                    f"{by_position[positional.index(first)]!r} by position, and parameter {p.name!r} "
                    "is not the name of any argument"
                )
            continue  # an unknown parameter with a default keeps its default
        if p.kind is p.POSITIONAL_ONLY:
            if len(names_positional) != positional.index(p):
                raise refuse(f"positional-only parameter {p.name!r} follows a parameter left to its default")
            names_positional.append(arg)
        else:
            names_keywords.append((p.name, arg))
    _check_distinct([*names_positional, *(a for _, a in names_keywords), *(a for _, a in keywords)], refuse)
    return Binding(label, target, tuple(names_positional), (*names_keywords, *keywords), "by name",
                   tuple(p.name for p in positional[: len(names_positional)]))


def _bind_keyword_only(params, known, label, target, hook, on_model) -> tuple:
    out = []
    for p in params:
        arg = known.get(p.name)
        if arg is not None:
            out.append((p.name, arg))
        elif p.default is p.empty:
            raise TypeError(
                f"{label}: cannot bind {target}: keyword-only parameter {p.name!r} is not the name of "
                f"any argument. Accepted: {accepted_forms(hook, on_model)}."
            )
    return tuple(out)


def _check_distinct(args, refuse) -> None:
    seen = set()
    for arg in args:
        if arg in seen:
            hint = " (the state before the step is `prev_state`)" if arg == "next_state" else ""
            raise refuse(f"two parameters name {arg!r}{hint}")
        seen.add(arg)


class Hook:
    """A user callable with its :class:`Binding`; ``hook(values)`` calls it with the arguments
    it asked for, taken from ``values`` (argument name -> value)."""

    __slots__ = ("fn", "name", "binding")

    def __init__(self, fn: Callable, hook: str, *, on_model: bool = False, label: str | None = None):
        self.fn = fn
        self.name = label or hook
        self.binding = bind(fn, hook, on_model=on_model, label=self.name)

    @property
    def wants(self) -> frozenset:
        return self.binding.wants

    def __call__(self, values: Mapping[str, Any]) -> Any:
        binding = self.binding  # Binding.args, inlined: this runs for every hook call of every step
        if binding.keywords:
            return self.fn(*[values[arg] for arg in binding.positional],
                           **{name: values[arg] for name, arg in binding.keywords})
        return self.fn(*[values[arg] for arg in binding.positional])
