"""Shared test setup: make `tests/` importable for shared case tables (spec_cases)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
