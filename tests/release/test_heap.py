"""The allocator's behaviour in the release build (glibc's malloc; the ASan
build has its own allocator, so this cannot run there).

A worker's heap swings between loop iterations: streams, copies and buffers
of one batch of requests freed together while the next batch allocates.
With glibc's defaults the top of a worker's arena went back to the system
with madvise each time it passed 128 KiB, and came back on the next swing:
hundreds of calls a second under mirrored load, each page-table work and a
TLB flush on the proxy's core (core/heap.c)."""

import re
import shutil
import subprocess

import pytest

from harness import make_config, strace, wait_until
from shadows import Collector

SECONDS = 4


@pytest.mark.timeout(60)
def test_mirrored_load_does_not_trim_the_heap(procs, umbra_bin, tmp_path):
    assert shutil.which("wrk"), "wrk is not installed"
    primary = procs.backend("primary")
    shadow = Collector(umbra_bin, tmp_path, out="/dev/null").start()
    try:
        u = procs.umbra(make_config(
            {"primary": [primary], "shadow": [shadow.addr]},
            routes=[{"name": "all", "match": {"prefix": "/"}, "cluster": "primary",
                     "mirrors": [{"cluster": "shadow", "fraction": "100%"}]}],
            workers=1))
        url = "http://127.0.0.1:%d/load" % u.port
        subprocess.run(["wrk", "-t1", "-c50", "-d1s", url], capture_output=True, timeout=30)  # warm-up
        log = tmp_path / "madvise.log"
        with strace(u.pid, log, "madvise"):
            out = subprocess.run(["wrk", "-t1", "-c50", "-d%ds" % SECONDS, url],
                                 capture_output=True, text=True, timeout=30).stdout
        done = int(re.search(r"(\d+) requests in", out).group(1))
        assert done > 1000, out
        completed = lambda: u.metrics().sum("umbra_mirror_requests_total", outcome="completed")
        wait_until(lambda: completed() > done // 2, timeout=10, what="the load to be mirrored")
        trims = [line for line in log.read_text().splitlines() if "MADV_DONTNEED" in line]
        assert not trims, "%d heap trims under %d mirrored requests, e.g. %s" % (len(trims), done, trims[:3])
    finally:
        shadow.stop()
