"""torchwm-rl's own exceptions: what was wrong, as attributes as well as in the message.

Every value a hook returns is checked once (:mod:`torchwm_rl.validation`); when one is wrong
the error names the hook that returned it, the key, what was expected and what came back. The
exceptions below carry those four as attributes (``None`` where they do not apply), so code
that catches them (a sweep over models, a test) need not parse messages. Each is also the
built-in type it always was (``ValueError``, ``TypeError``), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations

from typing import Any, Optional


class TorchWMError(Exception):
    """Base of torchwm-rl's errors about a value: ``hook`` (the hook that returned it, e.g.
    ``"transition_fn"``), ``key`` (``"observation"``, ``"reward"``, ``"observation['image']"``),
    ``expected`` and ``got`` (shapes, dtypes, key sets, ...)."""

    def __init__(self, message: str, *, hook: Optional[str] = None, key: Optional[str] = None,
                 expected: Any = None, got: Any = None):
        super().__init__(message)
        self.hook, self.key, self.expected, self.got = hook, key, expected, got

    def naming(self, hook: str, prefix: str) -> "TorchWMError":
        """The same error with ``hook`` set and ``prefix`` before its message (how the adapter
        says which hook returned the value and how it was read)."""
        return type(self)(f"{prefix}{self}", hook=hook, key=self.key, expected=self.expected, got=self.got)


class ValueMismatch(TorchWMError, ValueError):
    """A value of the wrong shape, keys, range or flag values."""


class TypeMismatch(TorchWMError, TypeError):
    """A value of the wrong type or dtype (a float for an integer space, a string, ...)."""
