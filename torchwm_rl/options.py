"""The model options every front end takes, defined once.

``ModelAdapter``, ``WorldModelEnv``, ``GymWorldModelEnv`` and the vector and SB3 exports all
take the same keyword arguments for the hooks and the adapter's checks (``reset_fn``,
``transition_fn``, ..., ``nan_policy``, ``ensemble_size``, ...). They are the fields of
:class:`ModelOptions`; each constructor declares only its own arguments (``batch_size``,
``max_episode_steps``, ``seed``, ...) and forwards the rest, as ``**options``, to
``ModelAdapter``, which reads them through :func:`model_options`. Adding a hook or an option is
one field here plus its use in the adapter. :func:`with_model_options` gives each constructor a
signature that lists the fields, so ``help()``, ``inspect.signature`` and editors still show
every keyword argument.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, get_args

#: what NaN/inf in an observation or reward does (see ``ModelAdapter``)
NanPolicy = Literal["raise", "truncate", "ignore"]
#: what an action outside the action space does: nothing (None), clipped, or refused
ActionCheck = Optional[Literal["clip", "raise"]]
#: how an ensemble picks the next state (see :mod:`torchwm_rl.ensemble`)
Propagation = Literal["random", "fixed", "mean"]
#: when a batched rollout restarts the envs that finished (see ``docs/design-decisions.md``):
#: "when_done" (default) calls the reset hook at the steps where an env finished, which the
#: host reads (one read per step); "every_step" calls it at every step for the full batch, with
#: ``options["reset_mask"]`` saying which rows are used, and merges those rows with a masked
#: write: no host read, but a reset hook that draws random numbers (or keeps a count) draws
#: them at every step, so a seed gives other numbers than with "when_done" (opt-in)
ResetSchedule = Literal["when_done", "every_step"]

NAN_POLICIES = get_args(NanPolicy)
ACTION_CHECKS = (None, *get_args(get_args(ActionCheck)[0]))
PROPAGATIONS = get_args(Propagation)
RESET_SCHEDULES = get_args(ResetSchedule)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The hooks and adapter options, with their defaults (documented on ``ModelAdapter``)."""

    reset_fn: Optional[Callable] = None
    transition_fn: Optional[Callable] = None
    reward_fn: Optional[Callable] = None
    terminal_fn: Optional[Callable] = None
    render_fn: Optional[Callable] = None
    action_transform_fn: Optional[Callable] = None
    initial_state: Any = None
    initial_observation: Any = None
    device: Any = None
    torch_actions: bool = True
    nan_policy: NanPolicy = "raise"
    check_actions: ActionCheck = None
    check_observations: bool = False
    ensemble_size: Optional[int] = None
    propagation: Propagation = "random"
    uncertainty_penalty: float = 0.0
    uncertainty_threshold: Optional[float] = None
    halt_reward: float = 0.0
    uncertainty_fn: Optional[Callable] = None
    continue_fn: Optional[Callable] = None
    continue_threshold: Optional[float] = None
    #: how often ``env.rollout`` reads its per-step checks (NaN/inf with nan_policy="raise", an
    #: ensemble's, continue_fn's range, check_actions, a partial reset's starts; nan_policy="truncate"
    #: truncates by masked writes) on the host: None (default) once, at the end of the rollout; K:
    #: every K steps; 1: at every step (as each check ran before). A failed check raises the
    #: error it raised before, at the same step, with the env as it then was: the env steps the
    #: recorded actions again from the rollout's start, checking at every step, without calling
    #: the policy again (see ``docs/design-decisions.md``)
    check_every: Optional[int] = None
    reset_schedule: ResetSchedule = "when_done"
    #: run the transition (the model or transition_fn), reward_fn, terminal_fn and continue_fn
    #: through ``torch.compile`` (CUDA graphs on CUDA); a hook that cannot be compiled warns once
    #: and runs uncompiled (see :mod:`torchwm_rl.compiled`). Opt-in: compiling takes seconds to
    #: minutes, and compiled float math agrees with eager to rounding, not bit for bit
    compile: bool = False


OPTION_NAMES = tuple(field.name for field in dataclasses.fields(ModelOptions))


def public_name(obj: Any) -> str:
    """The name of the first public class of ``obj``'s type: an env built by ``from_logic`` is
    a private subclass, named in reprs and errors as the class the user knows."""
    return next(c.__name__ for c in type(obj).__mro__ if not c.__name__.startswith("_"))


def env_repr(obj: Any, adapter: Any, **fields: Any) -> str:
    """The repr of every env and export: the public class (:func:`public_name`), the model's
    type, how each hook was bound (one per line), then ``fields`` (``num_envs=256``, ...)."""
    hooks = "".join(f"\n    {line}," for line in adapter.describe_bindings())
    tail = ", ".join(f"{key}={value}" for key, value in fields.items())
    return f"{public_name(obj)}(model={type(adapter.model).__name__},{hooks}\n" + (f"    {tail})" if tail else ")")


def unknown_keyword(owner: str, name: str, own: Sequence[str] = (), options: Sequence[str] = OPTION_NAMES) -> TypeError:
    """The ``TypeError`` for a keyword ``owner()`` does not take: the closest accepted names
    ("did you mean"), then every accepted name, ``owner``'s own arguments (``own``) first and
    then the model ``options`` it forwards (see :class:`ModelOptions`)."""
    own = [n for n in own if n not in options]
    close = difflib.get_close_matches(name, [*own, *options], n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    parts = [f"its own arguments are {', '.join(own)}"] if own else []
    if options:
        parts.append(f"the model options are {', '.join(options)}; see torchwm_rl.options.ModelOptions")
    listed = f" ({'; '.join(parts)})" if parts else ""
    return TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}{listed}")


def check_keywords(owner: str, kwargs: Mapping[str, Any], own: Sequence[str],
                   options: Sequence[str] = OPTION_NAMES) -> None:
    """Raise :func:`unknown_keyword`'s error for the first keyword of ``kwargs`` that is neither
    in ``own`` nor in ``options``."""
    for name in kwargs:
        if name not in own and name not in options:
            raise unknown_keyword(owner, name, own, options)


def model_options(owner: str, options: dict) -> ModelOptions:
    """``ModelOptions(**options)``; an unknown keyword raises ``TypeError`` naming ``owner``, the
    keyword, the closest accepted names and where the full list is."""
    check_keywords(owner, options, ())
    return ModelOptions(**options)


class _InitFromClassDoc:
    """Holds a constructor while its class body runs; when the class is created
    (``__set_name__``) it gives the constructor the class's docstring, if it has none of its
    own, and puts the plain function back in its place. Without a docstring ``help(Cls.__init__)``
    and ``inspect.getdoc`` would show the base class's constructor doc (``nn.Module``'s
    "Initialize internal Module state", via ``EnvBase``) instead of the env's arguments."""

    def __init__(self, init: Callable):
        self.init = init

    def __set_name__(self, owner: type, name: str) -> None:
        if not self.init.__doc__ and owner.__doc__:
            self.init.__doc__ = (f"Build a {owner.__name__} (the class documentation, repeated):\n\n"
                                 + inspect.cleandoc(owner.__doc__))
        setattr(owner, name, self.init)

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Callable:  # only until __set_name__
        return self.init.__get__(obj, owner)


def with_model_options(init: Callable) -> Callable:
    """Decorate a constructor ``__init__(self, ..., **options)``: its ``__signature__`` lists
    the :class:`ModelOptions` fields as keyword-only parameters in place of ``**options`` (the
    call itself is unchanged: the options still arrive in ``**options``), and a constructor
    without a docstring gets its class's (see :class:`_InitFromClassDoc`), so ``help()`` shows
    the constructor's own arguments."""
    signature = inspect.signature(init)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    own_names = tuple(p.name for p in params if p.name != "self" and p.kind in _BY_KEYWORD)
    hints = {field.name: field.type for field in dataclasses.fields(ModelOptions)}
    params += [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                          annotation=hints[field.name])
        for field in dataclasses.fields(ModelOptions) if field.name not in own_names
    ]
    accepted = frozenset(own_names) | frozenset(OPTION_NAMES)

    @functools.wraps(init)
    def checked(self, *args: Any, **kwargs: Any) -> None:
        # a misspelt keyword of the constructor's own (max_episode_step=) is named with the
        # closest of ALL its keywords, not only of the model options it forwards
        for name in kwargs:
            if name not in accepted:
                raise unknown_keyword(type(self).__name__, name, own_names)
        init(self, *args, **kwargs)

    checked.__signature__ = signature.replace(parameters=params)
    checked.keywords = own_names  # the constructor's own keywords (make_world_model_env reads them)
    return _InitFromClassDoc(checked)


_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
