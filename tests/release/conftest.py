"""Fixtures for tests of the release build (what users run, not the ASan
build the other suites use): the integration suite's, reused as they are."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from reuse import export  # noqa: E402

export(globals())
