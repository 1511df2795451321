import os
import sys

# Tests import `reference` and helpers from this folder.
sys.path.insert(0, os.path.dirname(__file__))
