"""Fixtures for tests of the release build (what users run, not the ASan
build the other suites use): the integration suite's, reused as they are."""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(HERE, "..", "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

_spec = importlib.util.spec_from_file_location("umbra_integration_conftest",
                                               os.path.join(INTEGRATION, "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

pytest_configure = _shared.pytest_configure
pytest_runtest_makereport = _shared.pytest_runtest_makereport
_wall_clock_limit = _shared._wall_clock_limit
umbra_bin = _shared.umbra_bin
procs = _shared.procs
