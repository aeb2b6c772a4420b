"""`umbra check -c FILE`: silent success on a valid file, FILE:LINE:COLUMN
errors (1-based, pointing at the offending key or value) and exit 1 on broken
ones; --version and --help; `umbra -c` refuses to start on a broken file."""

import re
import subprocess

import pytest

VALID = """\
workers: 1
admin:
  listen: 127.0.0.1:0
listeners:
  - name: ingress
    listen: 127.0.0.1:0
    limits:
      max_header_bytes: 32KiB
      header_timeout: 10s
clusters:
  - name: primary
    endpoints: [127.0.0.1:9, 127.0.0.1:10]
    connect_timeout: 1s
    timeout: 30s
routes:
  - name: api
    match: {prefix: /api/}
    cluster: primary
"""

# (id, {line number: replacement line}, [(line, text in that line where the error points)])
BROKEN = [
    ("unknown-top-level-key", {1: "wrokers: 1"}, [(1, "wrokers")]),
    ("workers-not-a-number", {1: "workers: many"}, [(1, "many")]),
    ("unknown-limit-key", {9: "      header_timeot: 10s"}, [(9, "header_timeot")]),
    ("bad-duration", {9: "      header_timeout: 10 parsecs"}, [(9, "10 parsecs")]),
    ("bad-size", {8: "      max_header_bytes: lots"}, [(8, "lots")]),
    ("request-buffer-over-connection-buffer", {9: "      request_buffer: 128KiB"}, [(9, "128KiB")]),
    ("bad-listen-port", {6: "    listen: 127.0.0.1:99999"}, [(6, "127.0.0.1:99999")]),
    ("bad-endpoint-in-flow-list", {12: "    endpoints: [127.0.0.1:9, nonsense]"}, [(12, "nonsense")]),
    ("mapping-for-duration", {14: "    timeout: {a: 1}"}, [(14, "{")]),
    ("unknown-cluster", {18: "    cluster: nowhere"}, [(18, "nowhere")]),
    ("bad-regex", {17: '    match: {regex: "([a-"}'}, [(17, '"([a-"')]),
    ("two-errors", {8: "      max_header_bytes: lots", 18: "    cluster: nowhere"}, [(8, "lots"), (18, "nowhere")]),
    ("yaml-syntax", {1: "workers: 1: 3"}, [(1, ": 3")]),
]


def run(umbra_bin, *args, timeout=20):
    p = subprocess.run([umbra_bin, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def write(tmp_path, text, name="umbra.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_valid_file_is_silent(umbra_bin, tmp_path):
    path = write(tmp_path, VALID)
    code, out = run(umbra_bin, "check", "-c", path)
    assert code == 0 and out == "", "exit %d, output %r" % (code, out)


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help(umbra_bin, flag):
    code, out = run(umbra_bin, flag)
    assert code == 0 and out.strip(), "exit %d, output %r" % (code, out)


@pytest.mark.parametrize("name,edits,where", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_points_at_the_error(umbra_bin, tmp_path, name, edits, where):
    lines = VALID.splitlines()
    for n, text in edits.items():
        lines[n - 1] = text
    path = write(tmp_path, "\n".join(lines) + "\n")
    code, out = run(umbra_bin, "check", "-c", path)
    assert code == 1, "exit %d, output %r" % (code, out)
    reported = [(int(m.group(1)), int(m.group(2))) for m in
                re.finditer(r"^" + re.escape(path) + r":(\d+):(\d+): \S", out, re.M)]
    want = [(n, lines[n - 1].index(text) + 1) for n, text in where]
    for w in want:
        assert w in reported, "%s: want %s:%d:%d, got %r" % (name, path, w[0], w[1], out)
    if name != "yaml-syntax":
        assert len(reported) == len(want), "%s: extra errors: %r" % (name, out)
    other = [l for l in out.splitlines() if l.strip() and not l.startswith(path + ":")]
    assert not other, "lines not in FILE:LINE:COLUMN form: %r" % other


def test_missing_required_field_names_its_mapping(umbra_bin, tmp_path):
    lines = VALID.splitlines()
    del lines[17]  # the route's `cluster:` line
    path = write(tmp_path, "\n".join(lines) + "\n")
    code, out = run(umbra_bin, "check", "-c", path)
    assert code == 1
    assert re.search(r"^" + re.escape(path) + r":1[67]:\d+: .*cluster", out, re.M), out


def test_missing_file(umbra_bin, tmp_path):
    code, out = run(umbra_bin, "check", "-c", str(tmp_path / "absent.yaml"))
    assert code == 1 and "absent.yaml" in out, (code, out)


def test_run_refuses_broken_file(umbra_bin, tmp_path):
    lines = VALID.splitlines()
    lines[17] = "    cluster: nowhere"
    path = write(tmp_path, "\n".join(lines) + "\n")
    p = subprocess.run([umbra_bin, "-c", path], capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert (path + ":18:14:").encode() in p.stdout + p.stderr, p.stderr
