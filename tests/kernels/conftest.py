import os
import sys

# The shared attention oracle (oracle.py) for the kernel tests here and in triton/.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
