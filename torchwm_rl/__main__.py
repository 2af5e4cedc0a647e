"""``python -m torchwm_rl`` == the ``torchwm-rl`` command."""

import sys

from .cli import main

sys.exit(main())
