"""pytest fixtures for umbra's black-box tests.

Every test gets its processes from factories here, which own the cleanup:
umbra is stopped with SIGTERM then SIGKILL (by PID) after a deadline, backends
are shut down, and a test whose umbra log shows a sanitizer report fails. The
tail of each running umbra's log is attached to every failed test's report.
Each test also runs under a wall-clock limit (mark: timeout(seconds)).
"""

import os
import shutil
import signal
import types

import pytest

from backends import Backend
from harness import Umbra, make_config

DEFAULT_BIN = os.path.join(os.path.dirname(__file__), "..", "..", "build", "asan", "umbra")
DEFAULT_TIMEOUT = 60

_running = []  # Umbra instances alive right now, for failure reports


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): wall-clock limit for one test (default 60)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for u in list(_running):
            rep.sections.append(("umbra log tail: %s (pid %s)" % (u.log_path, u.proc.pid if u.proc else "-"),
                                 u.tail(80)))


@pytest.fixture(autouse=True)
def _wall_clock_limit(request):
    """Fails a test that runs past its limit instead of hanging the suite."""
    marker = request.node.get_closest_marker("timeout")
    seconds = marker.args[0] if marker else DEFAULT_TIMEOUT

    def expired(signum, frame):
        raise TimeoutError("test exceeded its %ss wall-clock limit" % seconds)

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def umbra_bin(tmp_path_factory):
    """The binary under test (UMBRA_BIN), copied once so that a rebuild
    during the run cannot swap or half-write it under later tests."""
    path = os.path.abspath(os.environ.get("UMBRA_BIN", DEFAULT_BIN))
    if not os.access(path, os.X_OK):
        pytest.fail("umbra binary %s is missing or not executable (build it: make build/asan/umbra)" % path,
                    pytrace=False)
    copy = str(tmp_path_factory.mktemp("bin") / "umbra")
    shutil.copy2(path, copy)
    return copy


class _Processes:
    """Starts backends and umbras and tears all of them down."""

    def __init__(self, binary, tmpdir):
        self.binary = binary
        self.tmpdir = tmpdir
        self.backends = []
        self.umbras = []

    def backend(self, name=None, mode="echo", **kw):
        b = Backend(name or "b%d" % (len(self.backends) + 1), mode, **kw)
        self.backends.append(b)
        return b

    def umbra(self, config, name=None, **start_kw):
        u = Umbra(self.binary, self.tmpdir, config, name or "umbra%d" % (len(self.umbras) + 1))
        self.umbras.append(u)
        _running.append(u)
        u.start(**start_kw)
        return u

    def close(self):
        problems = []
        for u in self.umbras:
            was_alive = u.alive()
            code = u.stop()
            if u in _running:
                _running.remove(u)
            report = u.sanitizer_report()
            if report:
                problems.append("sanitizer report in %s:\n%s" % (u.log_path, report))
            elif was_alive and code is not None and code < 0 and code != -signal.SIGKILL:
                problems.append("umbra %s died of signal %d on SIGTERM:\n%s" % (u.name, -code, u.tail()))
            elif was_alive and code == -signal.SIGKILL:
                problems.append("umbra %s ignored SIGTERM for 15s and was killed:\n%s" % (u.name, u.tail()))
        for b in self.backends:
            b.stop()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def procs(umbra_bin, tmp_path):
    """Factory for backends and umbras that live for one test."""
    p = _Processes(umbra_bin, tmp_path)
    yield p
    p.close()


@pytest.fixture(scope="module")
def module_procs(umbra_bin, tmp_path_factory):
    """Same as procs, shared by a whole module (for tables of cheap cases)."""
    p = _Processes(umbra_bin, tmp_path_factory.mktemp("umbra"))
    yield p
    p.close()


@pytest.fixture
def proxy(procs):
    """One echo backend behind an umbra routing everything to it."""
    b = procs.backend("b1")
    u = procs.umbra(make_config({"primary": [b]}))
    return types.SimpleNamespace(umbra=u, backend=b, port=u.port, procs=procs)
