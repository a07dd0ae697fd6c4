import os
import sys

# The trainer lives in train/ at the repository root (scripts, not an installed package).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
