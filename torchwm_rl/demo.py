"""Moved: the demo is part of the application, :mod:`torchwm_rl.app.demo`.

This alias keeps code written for earlier versions (``from torchwm_rl.demo import
load_policy``, as the README showed) working; it warns once and will be removed. The library
itself never imports it."""

import warnings

from .app.demo import *  # noqa: F401,F403
from .app.demo import DemoConfig, load_policy, run_demo  # noqa: F401

warnings.warn("torchwm_rl.demo moved to torchwm_rl.app.demo; import it from there", DeprecationWarning,
              stacklevel=2)
