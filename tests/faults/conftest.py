"""Fixtures for the fault-upstream tests: the integration suite's (processes,
wall-clock limit, sanitizer check, log tail on failure), reused as they are,
plus this directory on the path (fault_upstream)."""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for d in ("integration", "faults"):
    p = os.path.join(HERE, "..", d)
    if p not in sys.path:
        sys.path.insert(0, p)

_spec = importlib.util.spec_from_file_location("umbra_integration_conftest",
                                               os.path.join(HERE, "..", "integration", "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

pytest_configure = _shared.pytest_configure
pytest_runtest_makereport = _shared.pytest_runtest_makereport
_wall_clock_limit = _shared._wall_clock_limit
umbra_bin = _shared.umbra_bin
procs = _shared.procs
module_procs = _shared.module_procs
