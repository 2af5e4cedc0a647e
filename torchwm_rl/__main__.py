"""``python -m torchwm_rl`` == the ``torchwm-rl`` command."""

import sys

from .app.cli import main

sys.exit(main())
