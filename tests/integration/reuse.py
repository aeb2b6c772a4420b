"""Lets another suite's conftest.py use this suite's fixtures and hooks
(processes, wall-clock limit, sanitizer check, log tail on failure) as they
are: `export(globals())`."""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = ("pytest_configure", "pytest_runtest_makereport", "_wall_clock_limit", "umbra_bin",
          "procs", "module_procs")


def export(namespace, extra_dirs=()):
    """Puts this directory (harness, backends, shadows) and extra_dirs on the
    path, and this suite's fixtures and hooks into namespace."""
    for d in (HERE, *extra_dirs):
        if d not in sys.path:
            sys.path.insert(0, d)
    spec = importlib.util.spec_from_file_location("umbra_integration_conftest",
                                                  os.path.join(HERE, "conftest.py"))
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    for name in SHARED:
        namespace[name] = getattr(shared, name)
