"""The conformance case table (cases.txt) as Python objects.

Shared by test_smuggling.py (umbra, pass/fail) and reference.py (the same
cases through nginx and HAProxy, for comparison only). See cases.txt for the
format and the rules each case is held to.
"""

import codecs
import os
import re

HOST_LINE = "Host: t.example\\r\\n"
SMUGGLED = "GET /smuggled HTTP/1.1\\r\\nHost: t.example\\r\\n\\r\\n"
SMUGGLED_MARK = "smuggled"
CASES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.txt")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TOKEN = re.compile(r"^(close|[1-5][0-9][0-9](/body)?)$")


class Expect:
    """One expected outcome: a response status (int) or "close"; `in_body`
    when the error is found in the body, after the head may have gone
    upstream."""

    def __init__(self, token):
        status, _, where = token.partition("/")
        self.status = "close" if status == "close" else int(status)
        self.in_body = where == "body"

    @property
    def ok(self):
        return self.status != "close" and self.status < 400

    def __repr__(self):
        return "%s%s" % (self.status, "/body" if self.in_body else "")


class Case:
    def __init__(self, name, expect, raw, line):
        self.name = name
        self.expect = expect
        self.raw = raw
        self.line = line

    @property
    def n_ok(self):
        return sum(1 for e in self.expect if e.ok)

    @property
    def rejected(self):
        return any(not e.ok for e in self.expect)

    def expect_text(self):
        return ",".join(repr(e) for e in self.expect)

    def __repr__(self):
        return "<Case %s %s>" % (self.name, self.expect_text())


def decode_raw(text):
    """cases.txt RAW text -> bytes (macros, then Python escapes)."""
    text = text.replace("{H}", HOST_LINE).replace("{S}", SMUGGLED)
    return codecs.escape_decode(text.encode("latin-1"))[0]


def load(path=CASES_PATH):
    """Every case in the file; ValueError on a malformed line or a repeated name."""
    cases, seen = [], set()
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) != 3:
                raise ValueError("%s:%d: want NAME EXPECT RAW" % (path, lineno))
            name, expect, raw = parts
            if not _NAME.match(name) or name in seen:
                raise ValueError("%s:%d: bad or repeated name %r" % (path, lineno, name))
            tokens = expect.split(",")
            if not all(_TOKEN.match(t) for t in tokens):
                raise ValueError("%s:%d: bad EXPECT %r" % (path, lineno, expect))
            seen.add(name)
            cases.append(Case(name, [Expect(t) for t in tokens], decode_raw(raw), lineno))
    return cases
