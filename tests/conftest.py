import os
import sys

# tests import their shared toy models as `models`
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

from harness import ALL_PATHS  # noqa: E402


@pytest.fixture(params=ALL_PATHS)
def path(request):
    """Each public path in turn ("torchrl", "gym", "vector", "sb3"; see ``harness.make``). A
    test that runs on some paths only parametrizes ``path`` itself (``harness.on_paths``)."""
    return request.param
