"""Fixtures for the fault-upstream tests: the integration suite's (processes,
wall-clock limit, sanitizer check, log tail on failure), reused as they are,
plus this directory on the path (fault_upstream)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from reuse import export  # noqa: E402

export(globals(), extra_dirs=(HERE,))
