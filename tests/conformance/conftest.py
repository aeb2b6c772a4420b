"""Fixtures for the conformance suite: the integration suite's (processes,
wall-clock limit, sanitizer check, log tail on failure), reused as they are,
plus tests/faults on the path for the fault upstream."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from reuse import export  # noqa: E402

export(globals(), extra_dirs=(os.path.join(HERE, "..", "faults"),))
