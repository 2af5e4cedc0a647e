import os
import sys

# tests import their shared toy models as `models`
sys.path.insert(0, os.path.dirname(__file__))
